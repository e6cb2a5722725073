"""Logging in to a host: whatever is wrong with the inventory's `ssh.key` fails that
host alone, with a one-line reason naming the file; a key with a passphrase is used
through ssh-agent."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncssh
import pytest

from orchestrator.conductor.manager import Conductor
from orchestrator.db.engine import Database
from orchestrator.errors import HostUnreachable
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import connect
from tests.unit.conftest import AddHost
from tests.unit.orchestrator.sshlib import FakeHost, agent_add, write_key


def credentials_error(exc: BaseException) -> bool:
    # A HostUnreachable, so every path that fails one host's work on it does so here.
    return isinstance(exc, HostUnreachable) and type(exc).__name__ == "HostCredentialsError"


async def test_a_good_key_logs_in(
    fake_host: FakeHost, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    key = write_key(tmp_path / "id", client_key)
    conn = await connect(fake_host.target(tmp_path, key))
    conn.close()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(None, "no such file", id="missing"),
        pytest.param(b"garbage\n", "not a private key", id="malformed"),
        pytest.param(b"", "not a private key", id="empty"),
        pytest.param("dir", "is a directory", id="directory"),
        pytest.param("pub", "is a public key", id="public-half"),
    ],
)
async def test_a_bad_key_file_is_named_with_its_cause(
    fake_host: FakeHost,
    client_key: asyncssh.SSHKey,
    tmp_path: Path,
    content: bytes | str | None,
    reason: str,
) -> None:
    key = tmp_path / "id"
    if content == "dir":
        key.mkdir()
    elif content == "pub":
        key.write_bytes(client_key.export_public_key("openssh"))
    elif content is not None:
        key.write_bytes(content)
    with pytest.raises(HostUnreachable) as caught:
        await connect(fake_host.target(tmp_path, key))
    assert credentials_error(caught.value)
    assert str(caught.value).startswith(f"host hv1: ssh key {key}"), caught.value
    assert reason in str(caught.value)
    assert "cannot reach" not in str(caught.value)


async def test_a_key_file_that_is_a_fifo_is_refused_without_blocking(
    fake_host: FakeHost, tmp_path: Path
) -> None:
    import os

    key = tmp_path / "id"
    os.mkfifo(key)
    with pytest.raises(HostUnreachable, match="not a regular file") as caught:
        await connect(fake_host.target(tmp_path, key))
    assert credentials_error(caught.value)


async def test_a_key_with_a_passphrase_and_no_agent_says_to_use_ssh_agent(
    fake_host: FakeHost, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    key = write_key(tmp_path / "id", client_key, passphrase="secret")
    with pytest.raises(HostUnreachable) as caught:
        await connect(fake_host.target(tmp_path, key))
    assert credentials_error(caught.value)
    message = str(caught.value)
    assert f"ssh key {key} is protected by a passphrase" in message
    assert "load it into ssh-agent (ssh-add" in message and "herd will use the agent" in message


async def test_a_key_with_a_passphrase_logs_in_through_the_agent_that_holds_it(
    fake_host: FakeHost, client_key: asyncssh.SSHKey, tmp_path: Path, ssh_agent: Path
) -> None:
    key = write_key(tmp_path / "id", client_key, passphrase="secret")
    await agent_add(ssh_agent, client_key)
    conn = await connect(fake_host.target(tmp_path, key))
    conn.close()


async def test_an_agent_without_the_passphrase_key_names_the_key_to_add(
    fake_host: FakeHost, client_key: asyncssh.SSHKey, tmp_path: Path, ssh_agent: Path
) -> None:
    key = write_key(tmp_path / "id", client_key, passphrase="secret")
    await agent_add(ssh_agent, asyncssh.generate_private_key("ssh-ed25519"))  # another key
    with pytest.raises(HostUnreachable) as caught:
        await connect(fake_host.target(tmp_path, key))
    assert credentials_error(caught.value)
    assert "was refused" in str(caught.value)
    assert f"ssh-add {key}" in str(caught.value)


async def test_an_unencrypted_key_still_works_beside_an_agent_without_it(
    fake_host: FakeHost, client_key: asyncssh.SSHKey, tmp_path: Path, ssh_agent: Path
) -> None:
    key = write_key(tmp_path / "id", client_key)
    await agent_add(ssh_agent, asyncssh.generate_private_key("ssh-ed25519"))
    conn = await connect(fake_host.target(tmp_path, key))
    conn.close()


async def test_a_key_others_can_read_is_used_with_one_warning(
    fake_host: FakeHost,
    client_key: asyncssh.SSHKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = write_key(tmp_path / "id", client_key)
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            (await connect(fake_host.target(tmp_path, key))).close()
    warnings = [r.getMessage() for r in caplog.records if str(key) in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "0644" in warnings[0] and f"chmod 600 {key}" in warnings[0]


async def test_a_fixed_key_file_is_used_without_a_restart(
    fake_host: FakeHost, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    key = tmp_path / "id"
    key.write_text("not yet\n")
    target = fake_host.target(tmp_path, key)
    with pytest.raises(HostUnreachable, match="not a private key"):
        await connect(target)
    write_key(key, client_key)
    (await connect(target)).close()


async def test_the_pool_remembers_a_bad_key_as_that_hosts_failure(
    fake_host: FakeHost, tmp_path: Path
) -> None:
    key = tmp_path / "id"
    key.write_text("garbage\n")
    async with AgentPool() as pool:
        for _ in range(2):
            with pytest.raises(HostUnreachable, match="not a private key") as caught:
                await pool.session(fake_host.target(tmp_path, key))
            assert credentials_error(caught.value)


async def test_refreshing_hosts_fails_only_the_one_with_the_bad_key(
    db: Database, add_host: AddHost, tmp_path: Path
) -> None:
    encrypted = write_key(
        tmp_path / "locked", asyncssh.generate_private_key("ssh-ed25519"), passphrase="s"
    )
    malformed = tmp_path / "broken"
    malformed.write_text("garbage\n")
    hosts = [
        await add_host("hv1", ssh_key=str(encrypted), ssh_port=1),
        await add_host("hv2", ssh_key=str(malformed), ssh_port=1),
        await add_host("hv3", ssh_key=None, ssh_port=1),  # nothing listens on port 1
    ]
    async with AgentPool() as pool:
        contacts = await Conductor(db, pool).contact_hosts(hosts)
    by_name = {c.name: c for c in contacts}
    assert not any(c.ok for c in contacts)
    assert "passphrase" in (by_name["hv1"].error or "")
    assert f"ssh key {malformed}: not a private key" in (by_name["hv2"].error or "")
    assert "cannot reach" in (by_name["hv3"].error or "")
