"""Run a command next to a private libvirtd + virtlogd, then tear everything down.

Started by the e2e test under ``unshare --mount --propagation private``: tmpfs over
libvirt's config, state, cache, log and socket directories gives this libvirtd its
own world, so it neither sees nor disturbs any other libvirtd on the machine. The
command (the agent) inherits our stdin/stdout; this script writes only to stderr.

usage: libvirt_sandbox.py WORKDIR -- COMMAND...
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PRIVATE_DIRS = [
    "/etc/libvirt",
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
    "/run/libvirt",
]
URI = "qemu:///system"


def log(message: str) -> None:
    print(f"libvirt_sandbox: {message}", file=sys.stderr, flush=True)


def virsh(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", URI, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_daemons(work: Path) -> list[subprocess.Popen[bytes]]:
    for path in PRIVATE_DIRS:
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "herd-test", path], check=True)
    daemons = []
    for name in ("virtlogd", "libvirtd"):
        with open(work / f"{name}.log", "wb") as out:
            daemons.append(
                subprocess.Popen(
                    [name, "--pid-file", str(work / f"{name}.pid")],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            )
    deadline = time.monotonic() + 60
    while virsh("version", "--daemon").returncode != 0:
        if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
            raise RuntimeError(f"libvirtd did not come up; see {work}/libvirtd.log")
        time.sleep(0.2)
    return daemons


def tear_down(daemons: list[subprocess.Popen[bytes]]) -> None:
    """Remove any domain the run left behind (and say so), then stop the daemons."""
    listed = virsh("list", "--all", "--uuid")
    for uuid in listed.stdout.split():
        log(f"removing leftover domain {uuid}")
        virsh("destroy", uuid)
        virsh("undefine", uuid)
    for daemon in reversed(daemons):
        daemon.terminate()
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def main(argv: list[str]) -> int:
    work, sep, command = Path(argv[0]), argv[1], argv[2:]
    assert sep == "--" and command, __doc__
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        daemons = start_daemons(work)
        log("libvirtd is up")
        return subprocess.run(command, check=False).returncode
    finally:
        tear_down(daemons)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
