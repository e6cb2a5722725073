"""A throwaway PostgreSQL server for the tests, from Debian's `postgresql` package.

One server per test session: ``initdb`` into a new directory under /dev/shm (memory:
the tests never need it to survive a crash, so fsync and full-page writes are off too),
listening on 127.0.0.1 only, on a free port, trust authentication on loopback. herd
connects as ``herd``, an ordinary role that owns its databases and is no superuser, as
on a real shared server; the fixtures create and drop databases as ``postgres``.

PostgreSQL refuses to run as root, so under root the server runs as the package's
``postgres`` user. A session killed before it could stop its server leaves a note
naming its pytest process; the next session stops the servers of owners that are gone.

Also a command, for trying things by hand::

    python -m tests.pgserver            # starts one, prints its URL, stops on Ctrl-C
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROLE = "herd"
SUPERUSER = "postgres"
_ROOT = Path(os.environ.get("HERD_TEST_PG_ROOT", "/dev/shm"))
_PREFIX = "herd-pg-"
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "400",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
    "deadlock_timeout": "200ms",
}


class PostgresMissing(RuntimeError):
    """The server binaries are not installed."""


def bindir() -> Path:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresMissing(
        "PostgreSQL's server is not installed (apt-get install postgresql), "
        "or choose HERD_TEST_DB=sqlite"
    )


def available() -> bool:
    try:
        bindir()
    except PostgresMissing:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_identity(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


class PostgresServer:
    """A running throwaway server; ``url(db)`` names a database on it for herd."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=_ROOT))
        self.data = self.root / "data"
        self.port = 0
        self._user: pwd.struct_passwd | None = (
            pwd.getpwnam(SUPERUSER) if os.geteuid() == 0 else None
        )
        self._names = itertools.count(1)

    # -- running commands as the server's owner ------------------------------------

    def _as_owner(self) -> dict[str, object]:
        if self._user is None:
            return {}
        uid, gid = self._user.pw_uid, self._user.pw_gid
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            **self._as_owner(),  # type: ignore[arg-type]
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    # -- life ---------------------------------------------------------------------

    def start(self) -> PostgresServer:
        _stop_servers_of_dead_sessions()
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        (self.root / "owner").write_text(f"{_process_identity(os.getpid())}\n")
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            for key, value in _SETTINGS.items():
                conf.write(f"{key} = {value}\n")
            conf.write(f"unix_socket_directories = '{self.data}'\n")
        for attempt in range(5):
            self.port = _free_port()
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                    "-t", "60", "-o", f"-p {self.port}", "start",
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        self.admin(f"CREATE ROLE {ROLE} LOGIN CREATEDB")
        return self

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ----------------------------------------------------------------

    def url(self, database: str, user: str = ROLE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, database: str = "postgres") -> None:
        """One statement as the superuser, outside a transaction (CREATE DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(database, SUPERUSER), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, template: str | None = None, name: str | None = None) -> str:
        """A new database owned by ``herd`` (empty, or a copy of ``template``); its URL."""
        name = name or f"herd_{os.getpid()}_{next(self._names)}"
        source = f" TEMPLATE {template}" if template else ""
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE}{source}")
        return self.url(name)

    def drop_database(self, url_or_name: str) -> None:
        name = url_or_name.rsplit("/", 1)[-1]
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _stop_servers_of_dead_sessions() -> None:
    for owner in _ROOT.glob(f"{_PREFIX}*/owner"):
        recorded = owner.read_text().strip()
        if recorded and _process_identity(int(recorded.split()[0])) == recorded:
            continue
        pidfile = owner.parent / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)
            time.sleep(0.5)
        shutil.rmtree(owner.parent, ignore_errors=True)


@contextlib.contextmanager
def running() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    with running() as server:
        url = server.create_database(name="herd")
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
