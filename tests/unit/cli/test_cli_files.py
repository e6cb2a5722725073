"""Files an operator names on the command line, through the real `herd` process: read
with a size bound, never a device or a FIFO, and a private key never lost."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd


@pytest.fixture
def herd(tmp_path: Path) -> HerdCli:
    return ForkedHerd(tmp_path)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def create_with_user_data(path: Path) -> list[str]:
    return ["server", "create", "a", "--flavor", "f", "--image", "i", "--user-data", str(path)]


def test_user_data_from_a_device_a_fifo_or_too_big_is_refused_unread(
    herd: HerdCli, tmp_path: Path, fifo: Path
) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 70000)
    for path, reason in (
        (Path("/dev/zero"), "not a regular file"),
        (fifo, "not a regular file"),  # would block forever if opened for a plain read
        (big, "70000 bytes; the limit is 65535 bytes"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing.yaml", "no such file"),
    ):
        result = herd.run(*create_with_user_data(path), timeout=60)
        assert_one_line_error(result, code=2, contains=f"--user-data {path}: {reason}")


def test_a_public_key_from_a_device_or_a_fifo_is_refused_unread(herd: HerdCli, fifo: Path) -> None:
    for path in (Path("/dev/zero"), fifo):
        result = herd.run("keypair", "import", "me", "--public-key", str(path), timeout=60)
        assert_one_line_error(result, code=2, contains=f"--public-key {path}: not a regular file")
    assert herd.ok("keypair", "list", "--json").json() == []


def test_a_private_key_path_that_cannot_be_written_loses_nothing(
    herd: HerdCli, tmp_path: Path
) -> None:
    bad = tmp_path / "no-such-dir" / "me"
    assert_one_line_error(
        herd.run("keypair", "create", "me", "--private-key", str(bad)), code=2, contains=str(bad)
    )
    assert herd.ok("keypair", "list", "--json").json() == []
    good = tmp_path / "me"
    herd.ok("keypair", "create", "me", "--private-key", str(good))  # not "already exists"
    assert stat.S_IMODE(good.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in good.read_text()
    (listed,) = herd.ok("keypair", "list", "--json").json()
    assert listed["name"] == "me"


def test_a_key_pair_name_with_a_newline_is_refused(herd: HerdCli) -> None:
    result = herd.run("keypair", "create", "me\nssh-rsa AAAAB3NzaC1yc2E evil")
    assert_one_line_error(result, code=2, contains="is invalid")
    assert herd.ok("keypair", "list", "--json").json() == []


def test_a_private_key_that_cannot_be_printed_is_not_stored(herd: HerdCli) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            herd.command("keypair", "create", "me"),
            env=herd.env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert (
        done.stderr.strip() == "herd: error: cannot print the private key: no space left on device"
    )
    assert herd.ok("keypair", "list", "--json").json() == []
