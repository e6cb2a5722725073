"""Hostile images never reach a host's cache (finding 1 of issue 12, OSSA-2024-001's
class): a qcow2 whose header names a host file as its backing file is refused by the
CLI before anything is stored, and by every host's agent when it comes as a
host:///path, which only the host can read. No guest boots: refusals are cheap."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error

pytestmark = pytest.mark.e2e

AGENT_DIR = "/var/lib/herd"


def backed_by(path: Path, target: str) -> str:
    """`qemu-img create -f qcow2 -F raw -b TARGET PATH`; returns the file's sha256."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", target, str(path), "1M"],
        check=True,
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_in_no_cache(lab, digest: str) -> None:
    for host in lab.hosts:
        cached = lab.exec_in(host.name, ["test", "-e", f"{AGENT_DIR}/images/{digest}"])
        assert cached.returncode != 0, f"{host.name} cached {digest}"
        incoming = lab.exec_in(host.name, ["ls", "-A", f"{AGENT_DIR}/images/incoming"])
        assert incoming.stdout.strip() == "", f"{host.name} kept {incoming.stdout!r}"


def test_a_local_image_with_a_backing_file_is_refused_at_image_create(
    herd: HerdCli, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.qcow2"
    backed_by(evil, "/etc/shadow")
    before = {i["name"] for i in herd.ok("image", "list", "--json").json()}
    assert_one_line_error(
        herd.run("image", "create", "evil", "--file", str(evil)),
        code=2,
        contains="its qcow2 header names a backing file",
    )
    assert {i["name"] for i in herd.ok("image", "list", "--json").json()} == before


def test_a_host_image_with_a_backing_file_is_refused_by_every_host_and_cached_nowhere(
    herd: HerdCli, lab
) -> None:
    evil = lab.info().host_images / "evil-backing.qcow2"
    digest = backed_by(evil, "/etc/shadow")
    try:
        # The CLI cannot read a host path: the image is registered, the hosts refuse it.
        herd.ok("image", "create", "evil-host", "--host-path", str(evil))
        result = herd.run(
            "server", "create", "evil-vm", "--flavor", "m1.tiny", "--image", "evil-host"
        )
        assert result.code != 0
        server = herd.server("evil-vm")
        assert server["vm_state"] == "error"
        faults = " | ".join(f["message"] for f in server["faults"])
        assert "its qcow2 header names a backing file" in faults, faults
    finally:
        evil.unlink()
    assert_in_no_cache(lab, digest)


def test_a_host_path_outside_the_hosts_image_source_dirs_is_never_read(herd: HerdCli, lab) -> None:
    herd.ok("image", "create", "shadow", "--host-path", "/etc/shadow", "--format", "raw")
    result = herd.run("server", "create", "shadow-vm", "--flavor", "m1.tiny", "--image", "shadow")
    assert result.code != 0
    faults = " | ".join(f["message"] for f in herd.server("shadow-vm")["faults"])
    assert "/etc/shadow is not under this host's image_source_dirs" in faults, faults
    digest = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()
    assert_in_no_cache(lab, digest)
