"""Jump-host connections shared by every host behind them.

Fifty hypervisors behind one bastion would otherwise be fifty logins on the bastion,
all at once when herd contacts the fleet: slow, noisy in its logs, and past OpenSSH's
``MaxStartups`` (10 unauthenticated connections by default, then random drops) a
cause of failures that look like flaky hosts. So the hosts behind the same chain of
jump hosts ride one connection to it, as ``ControlMaster`` would share it: opened by
the first host that needs it (the others wait for that one attempt and share its
outcome), closed when the last host connection on it closes, opened afresh when it
has broken.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import asyncssh

Release = Callable[[], None]


@dataclass
class _Shared:
    opening: asyncio.Future[asyncssh.SSHClientConnection]
    users: int = 0

    def broken(self) -> bool:
        if not self.opening.done():
            return False
        if self.opening.cancelled() or self.opening.exception() is not None:
            return True
        return self.opening.result().is_closed()


_tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, _Shared]] = (
    weakref.WeakKeyDictionary()
)


async def lease(
    key: Hashable, open_chain: Callable[[], Awaitable[asyncssh.SSHClientConnection]]
) -> tuple[asyncssh.SSHClientConnection, Release]:
    """The shared connection for ``key`` (opening it with ``open_chain`` if there is
    none that works) and the function that gives it back: call that when the
    connection riding it has closed (later calls are ignored). A failed opening is
    raised to every host that waited for it, as the opener's host worded it."""
    table = _tables.setdefault(asyncio.get_running_loop(), {})
    shared = table.get(key)
    if shared is None or shared.broken():
        shared = _Shared(asyncio.ensure_future(open_chain()))
        table[key] = shared
    shared.users += 1
    given_back = False

    def release() -> None:
        nonlocal given_back
        if not given_back:
            given_back = True
            shared.users -= 1
            _close_if_unused(table, key, shared)

    try:
        conn = await asyncio.shield(shared.opening)
    except BaseException:
        release()
        raise
    return conn, release


def _close_if_unused(table: dict[Hashable, _Shared], key: Hashable, shared: _Shared) -> None:
    if shared.users > 0:
        return
    if table.get(key) is shared:
        del table[key]
    if not shared.opening.done():
        shared.opening.cancel()  # everyone waiting on it gave up
    elif not shared.opening.cancelled() and shared.opening.exception() is None:
        shared.opening.result().close()
