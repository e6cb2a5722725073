"""Trusting host keys: a changed key is told from an unknown one, with both
fingerprints, and `herd host trust` replaces a known key only when asked to, in a file
it rewrites atomically, keeping every other line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from orchestrator.errors import HostKeyNotTrusted
from orchestrator.rpc.ssh import HostTarget, connect, fingerprint
from tests.unit.orchestrator.sshlib import FakeHost, write_key


def hashed(entry: str) -> str:
    """An entry as `ssh-keygen -H` (HashKnownHosts) writes it."""
    salt = os.urandom(20)
    digest = hmac.new(salt, entry.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def line_of(entry: str, key: asyncssh.SSHKey, marker: str = "") -> str:
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{marker}{entry} {algorithm} {blob}\n"


@pytest.fixture
def key_file(tmp_path: Path, client_key: asyncssh.SSHKey) -> Path:
    return write_key(tmp_path / "id", client_key)


async def test_an_unknown_host_key_says_how_to_trust_it(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    (tmp_path / "known_hosts").write_text("")
    with pytest.raises(HostKeyNotTrusted) as caught:
        await connect(fake_host.target(tmp_path, key_file))
    assert "is not trusted" in str(caught.value)
    assert "CHANGED" not in str(caught.value)
    assert "herd host trust hv1" in str(caught.value)


async def test_a_changed_host_key_is_named_changed_with_both_fingerprints(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    old = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "known_hosts"
    known.write_text("# herd's hosts\n" + fake_host.known_hosts_line(old))
    with pytest.raises(HostKeyNotTrusted) as caught:
        await connect(fake_host.target(tmp_path, key_file))
    message = str(caught.value)
    assert "host key CHANGED" in message
    assert fingerprint(old) in message and f"{known}:2" in message
    assert fingerprint(fake_host.host_key) in message
    assert "herd host trust hv1 --replace" in message


async def test_a_host_that_no_longer_offers_the_known_key_type_has_changed(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    old = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    (tmp_path / "known_hosts").write_text(fake_host.known_hosts_line(old))
    with pytest.raises(HostKeyNotTrusted, match="host key CHANGED") as caught:
        await connect(fake_host.target(tmp_path, key_file))
    assert fingerprint(old) in str(caught.value)
    assert "offers no key of those types" in str(caught.value)


async def test_a_revoked_host_key_is_named_revoked(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        fake_host.known_hosts_line() + "@revoked " + fake_host.known_hosts_line().lstrip()
    )
    with pytest.raises(HostKeyNotTrusted, match="revoked") as caught:
        await connect(fake_host.target(tmp_path, key_file))
    assert fingerprint(fake_host.host_key) in str(caught.value)


async def test_a_hashed_entry_is_trusted(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    entry = f"[127.0.0.1]:{fake_host.port}"
    (tmp_path / "known_hosts").write_text(line_of(hashed(entry), fake_host.host_key))
    (await connect(fake_host.target(tmp_path, key_file))).close()


async def test_one_unreadable_line_does_not_untrust_the_rest_of_the_file(
    fake_host: FakeHost, tmp_path: Path, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("garbage\n@bogus x ssh-ed25519 AAAA\n|1|nope|nope ssh-ed25519 AAAA\n")
    with known.open("a") as handle:
        handle.write(fake_host.known_hosts_line())
    with caplog.at_level(logging.WARNING):
        (await connect(fake_host.target(tmp_path, key_file))).close()
    assert any(f"{known}:1" in r.getMessage() for r in caplog.records)


async def test_an_unreadable_known_hosts_file_fails_only_as_untrusted(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    (tmp_path / "known_hosts").mkdir()
    with pytest.raises(HostKeyNotTrusted, match=r"known_hosts .*: is a directory"):
        await connect(fake_host.target(tmp_path, key_file))


# -- recording a key ----------------------------------------------------------------


def target(tmp_path: Path, port: int = 2222, address: str = "127.0.0.5") -> HostTarget:
    return HostTarget(
        name="hv1", address=address, port=port, known_hosts=str(tmp_path / "ssh" / "known")
    )


def test_recording_a_key_keeps_other_lines_and_is_atomic_and_sane(tmp_path: Path) -> None:
    from orchestrator.rpc.known_hosts import record_host_key

    other, mine = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    path = tmp_path / "ssh" / "known"
    kept = [
        "# a comment the operator wrote",
        "",
        line_of("[127.0.0.6]:2222", other).rstrip("\n"),
        line_of("127.0.0.5", other).rstrip("\n"),  # port 22 on the same address: another host
        line_of("@cert-authority *.example", other).rstrip("\n"),
    ]
    path.parent.mkdir(mode=0o700)
    path.write_text("\n".join(kept))  # no final newline
    path.chmod(0o666)
    record_host_key(target(tmp_path), mine)
    lines = path.read_text().splitlines()
    assert lines[:-1] == kept
    assert lines[-1] == line_of("[127.0.0.5]:2222", mine).rstrip("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # never group/world-writable
    assert [p.name for p in path.parent.iterdir()] == ["known"]  # no temporary left


def test_a_new_trust_file_is_0644_in_a_0700_directory(tmp_path: Path) -> None:
    from orchestrator.rpc.known_hosts import record_host_key

    record_host_key(target(tmp_path), asyncssh.generate_private_key("ssh-ed25519"))
    path = tmp_path / "ssh" / "known"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_trust_file_that_cannot_be_written_is_one_line_and_left_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from orchestrator.errors import HerdError
    from orchestrator.rpc.known_hosts import record_host_key

    path = tmp_path / "ssh" / "known"
    path.parent.mkdir()
    path.write_text("# kept\n")

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(HerdError, match="cannot write it: read-only file system"):
        record_host_key(target(tmp_path), asyncssh.generate_private_key("ssh-ed25519"))
    assert path.read_text() == "# kept\n"


def test_replacing_removes_this_hosts_lines_only(tmp_path: Path) -> None:
    from orchestrator.rpc.known_hosts import host_keys, record_host_key

    old_ed, old_ecdsa, new, other = (
        asyncssh.generate_private_key(alg)
        for alg in ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-ed25519")
    )
    path = tmp_path / "ssh" / "known"
    path.parent.mkdir()
    revoked = line_of("@revoked [127.0.0.5]:2222", other)
    path.write_text(
        line_of(hashed("[127.0.0.5]:2222"), old_ed)
        + line_of("[127.0.0.5]:2222", old_ecdsa)
        + line_of("127.0.0.5", other)
        + revoked
    )
    record_host_key(target(tmp_path), new, replace=True)
    assert path.read_text() == (
        line_of("127.0.0.5", other) + revoked + line_of("[127.0.0.5]:2222", new)
    )
    trusted = host_keys(target(tmp_path)).trusted
    assert [k.key.public_data for k in trusted] == [new.public_data]


# -- `herd host trust` through the real CLI ------------------------------------------


async def herd(home: Path, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "HERD_DATABASE_URL": f"sqlite:///{home / 'herd.db'}",
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    return process.returncode or 0, stderr.decode()


async def test_host_trust_refuses_a_changed_key_without_replace(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    old = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "known_hosts"
    known.write_text("# mine\n" + fake_host.known_hosts_line(old))
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "hosts:\n  - name: hv1\n    address: 127.0.0.1\n"
        f"    ssh: {{port: {fake_host.port}, key: {key_file}, known_hosts: {known}}}\n"
    )
    assert (await herd(tmp_path, "inventory", "apply", str(inventory)))[0] == 0

    code, stderr = await herd(tmp_path, "host", "trust", "hv1", "--yes")
    assert code == 6, stderr
    assert len(stderr.splitlines()) == 1 and "host key CHANGED" in stderr
    assert fingerprint(old) in stderr and fingerprint(fake_host.host_key) in stderr
    assert known.read_text() == "# mine\n" + fake_host.known_hosts_line(old)

    seen = fingerprint(fake_host.host_key)
    code, stderr = await herd(tmp_path, "host", "trust", "hv1", "--replace", "--fingerprint", seen)
    assert code == 0, stderr
    assert known.read_text() == "# mine\n" + fake_host.known_hosts_line()

    code, stderr = await herd(tmp_path, "host", "trust", "hv1", "--yes")
    assert code == 0 and "already trusted" in stderr, stderr


async def herd_json(home: Path, *args: str) -> tuple[int, Any, str]:
    """`herd ... --json`: exit code, the JSON document on stdout, and stderr."""
    env = {
        **os.environ,
        "HERD_DATABASE_URL": f"sqlite:///{home / 'herd.db'}",
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", *args, "--json",
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    return process.returncode or 0, json.loads(stdout or b"null"), stderr.decode()


async def test_host_trust_as_json_says_which_key_it_recorded_and_where(
    fake_host: FakeHost, tmp_path: Path, key_file: Path
) -> None:
    known = tmp_path / "known_hosts"
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "hosts:\n  - name: hv1\n    address: 127.0.0.1\n"
        f"    ssh: {{port: {fake_host.port}, key: {key_file}, known_hosts: {known}}}\n"
    )
    assert (await herd(tmp_path, "inventory", "apply", str(inventory)))[0] == 0
    seen = fingerprint(fake_host.host_key)

    code, done, stderr = await herd_json(tmp_path, "host", "trust", "hv1", "--yes")
    assert code == 0, stderr
    assert done == {
        "host": "hv1",
        "keys": [
            {
                "hop": f"127.0.0.1:{fake_host.port}", "jump": False, "algorithm": "ssh-ed25519",
                "fingerprint": seen, "recorded": True, "replaced": False,
                "known_hosts": str(known),
            }
        ],
    }  # fmt: skip
    code, again, stderr = await herd_json(tmp_path, "host", "trust", "hv1", "--yes")
    assert code == 0 and "already trusted" in stderr, stderr
    assert [(k["fingerprint"], k["recorded"]) for k in again["keys"]] == [(seen, False)]
