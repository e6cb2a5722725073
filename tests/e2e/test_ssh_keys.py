"""One host whose SSH key cannot be used fails alone: the others refresh, reconcile and
boot; the bad host is named with its key file; a passphrase key works through ssh-agent."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.herdcli import HerdCli, assert_one_line_error

pytestmark = pytest.mark.e2e


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[Path]:
    """An ssh-agent of this test only, stopped by pid when it ends."""
    socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        yield socket
    finally:
        agent.terminate()
        agent.wait(10)


def test_a_host_with_a_passphrase_key_fails_alone_and_works_through_ssh_agent(
    herd: HerdCli, lab, lab_inventory: Path, tmp_path: Path, ssh_agent: Path
) -> None:
    herd.env.pop("SSH_AUTH_SOCK", None)
    herd.ok("host", "refresh")  # every host up, its facts fresh
    # The lab's own key, with a passphrase: the host would let it in, were it readable.
    locked = tmp_path / "locked_ed25519"
    shutil.copy(lab.info().key, locked)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", "secret", "-f", str(locked)],
        check=True,
        capture_output=True,
    )
    document = yaml.safe_load(lab_inventory.read_text())
    bad = document["hosts"][0]["name"]
    document["hosts"][0]["ssh"]["key"] = str(locked)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(document))
    herd.ok("inventory", "apply", str(inventory))

    # A build placed there before anyone noticed fails that server, and only it.
    failed = herd.run(
        "server", "create", "pinned", "--flavor", "m1.nano", "--image", "blank", "--host", bad
    )
    assert failed.code != 0 and "Traceback" not in failed.stderr, failed.stderr
    pinned = herd.server("pinned")
    assert pinned["vm_state"] == "error" and pinned["task_state"] is None, pinned
    assert str(locked) in str(pinned), pinned

    line = assert_one_line_error(herd.run("host", "refresh"), code=6, contains=bad)
    assert f"ssh key {locked} is protected by a passphrase" in line and "ssh-add" in line
    status = {h["name"]: h["status"] for h in herd.ok("host", "list", "--json").json()}
    assert status.pop(bad) == "down" and set(status.values()) == {"up"}, status

    reconciled = herd.run("reconcile", "--json")
    assert reconciled.code == 2, reconciled.stderr  # a host unreachable: drift left
    report = reconciled.json()
    assert str(locked) in str(report) and "Traceback" not in reconciled.stderr

    created = herd.ok(
        "server", "create", "others", "--flavor", "m1.nano", "--image", "blank",
        "--count", "2", "--json",
    ).json()  # fmt: skip
    assert {s["vm_state"] for s in created} == {"active"}
    assert bad not in {s["host"] for s in created}
    assert all(s["vm_state"] != "building" for s in herd.servers())

    # The operator loads the key into ssh-agent: herd uses it, the host is up again.
    subprocess.run(
        ["ssh-add", str(lab.info().key)],  # the same key, added without its passphrase
        env={"SSH_AUTH_SOCK": str(ssh_agent), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    herd.env["SSH_AUTH_SOCK"] = str(ssh_agent)
    herd.ok("host", "refresh", bad)
    herd.ok("server", "delete", "pinned")  # its host answers again: cleaned up there
