"""A libvirt connection from one host to another, carried over herd's own SSH sessions.

A live migration needs the source's libvirtd to talk to the destination's. Nova has
each compute log into the others over SSH (or TLS); herd already holds an SSH
connection to every host, so it lends them: a UNIX socket is opened on the source
(sshd's streamlocal forwarding, root-only like the socket it stands for), and each
connection made to it is piped, through this process, to the destination's libvirt
socket. Hosts need no keys or trust for each other. QEMU's own migration stream is
not tunnelled: it goes straight between the hosts' addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncssh

from orchestrator.errors import HostUnreachable

log = logging.getLogger(__name__)

LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
CHUNK = 1 << 16

Handler = Callable[[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]], Awaitable[None]]


async def _pipe(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error) as exc:
        log.debug("tunnel pipe ended: %s", exc)
    finally:
        with contextlib.suppress(OSError, asyncssh.Error):
            writer.write_eof()


@contextlib.asynccontextmanager
async def libvirt_tunnel(
    source: asyncssh.SSHClientConnection,
    destination: asyncssh.SSHClientConnection,
    listen_path: str,
    *,
    destination_socket: str = LIBVIRT_SOCKET,
) -> AsyncIterator[str]:
    """Serve ``listen_path`` on the source host for as long as the block runs; yields
    the libvirt URI that reaches the destination's libvirtd through it."""
    pipes: set[asyncio.Task[None]] = set()

    async def carry(
        src_reader: asyncssh.SSHReader[bytes], src_writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        try:
            dst_reader, dst_writer = await destination.open_unix_connection(destination_socket)
        except (OSError, asyncssh.Error) as exc:
            log.warning("tunnel: cannot reach %s on the destination: %s", destination_socket, exc)
            src_writer.close()
            return
        both = asyncio.gather(_pipe(src_reader, dst_writer), _pipe(dst_reader, src_writer))
        task = asyncio.ensure_future(both)
        pipes.add(task)
        try:
            await task
        finally:
            pipes.discard(task)
            dst_writer.close()
            src_writer.close()

    def handler() -> Handler:
        return carry

    try:
        listener = await source.start_unix_server(handler, listen_path)
    except (OSError, asyncssh.Error) as exc:
        raise HostUnreachable(f"cannot open a tunnel socket at {listen_path}: {exc}") from exc
    try:
        yield f"qemu+unix:///system?socket={listen_path}"
    finally:
        listener.close()
        for task in list(pipes):
            task.cancel()
        with contextlib.suppress(Exception):
            await listener.wait_closed()
