"""Many herd commands at the same moment, each its own OS process (see test_locking.py).

The CLI (and alembic, which a command imports only to upgrade) is imported once,
then forked: every child is a real process with its own SQLite connections running
herd's entry point, and the imports (seconds of CPU each on a small machine) are
paid once, so the children meet the database together — as 32 commands do on a
machine whose CPUs are so busy that the imports stop mattering and the database is
where they collide.
Usage: python -m tests.unit.db.concurrent_cli COUNT OUTDIR HERD-ARGS...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import alembic.command
import alembic.config  # noqa: F401

from orchestrator.cli.main import run


def child(args: list[str], out: Path, go_read: int) -> None:
    os.read(go_read, 1)  # every child starts at once
    with open(out.with_suffix(".out"), "w") as stdout, open(out.with_suffix(".err"), "w") as err:
        os.dup2(stdout.fileno(), 1)
        os.dup2(err.fileno(), 2)
    sys.argv = ["herd", *args]
    code = 0
    try:
        run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> int:
    count, outdir, args = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    go_read, go_write = os.pipe()
    pids = {}
    for n in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            child(args, outdir / f"{n}", go_read)
        pids[pid] = n
    os.write(go_write, b"x" * count)
    failed = 0
    for _ in range(count):
        pid, status = os.wait()
        code = os.waitstatus_to_exitcode(status)
        (outdir / f"{pids[pid]}.code").write_text(str(code))
        failed += code != 0
    return failed


if __name__ == "__main__":
    sys.exit(min(main(), 100))
