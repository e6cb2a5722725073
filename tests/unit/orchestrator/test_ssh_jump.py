"""Reaching a host through a jump host, with in-process sshds on 127.0.0.1: ProxyJump
from ~/.ssh/config or the inventory, keys from the config or ssh-agent, the jump
host's key verified as strictly as the host's, and every failure one line naming the
jump host and failing only the hosts behind it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from orchestrator.conductor.manager import Conductor
from orchestrator.db.engine import Database
from orchestrator.errors import HostCredentialsError, HostKeyNotTrusted, HostUnreachable
from orchestrator.rpc.known_hosts import record_host_key
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import HostTarget, Offer, connect, fingerprint, walk_route
from tests.unit.conftest import AddHost
from tests.unit.orchestrator.sshlib import FakeHost, agent_add, write_key


@pytest.fixture
async def bastion(client_key: asyncssh.SSHKey) -> AsyncIterator[FakeHost]:
    host = FakeHost(asyncssh.generate_private_key("ssh-ed25519"), [client_key], jump=True)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@pytest.fixture
def known(tmp_path: Path, fake_host: FakeHost, bastion: FakeHost) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(fake_host.known_hosts_line() + bastion.known_hosts_line())
    return path


def write_config(home: Path, fake_host: FakeHost, bastion: FakeHost, extra: str = "") -> Path:
    """hv1.internal is a name only the config knows: the host is reached through the
    bastion, at the address and port the config gives."""
    path = home / ".ssh" / "config"
    path.write_text(
        f"Host hv1.internal\n  HostName 127.0.0.1\n  Port {fake_host.port}\n"
        "  ProxyJump bastion\n"
        f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion.port}\n  User jumper\n{extra}"
    )
    return path


def target(known: Path, **fields: object) -> HostTarget:
    values: dict[str, object] = {"name": "hv1", "address": "hv1.internal"}
    values.update(known_hosts=str(known), **fields)
    return HostTarget(**values)  # type: ignore[arg-type]


async def test_a_host_behind_a_proxy_jump_in_the_ssh_config_is_reached_through_it(
    fake_host: FakeHost,
    bastion: FakeHost,
    known: Path,
    home: Path,
    client_key: asyncssh.SSHKey,
    tmp_path: Path,
) -> None:
    write_config(home, fake_host, bastion)
    key = write_key(tmp_path / "id", client_key)
    conn = await connect(target(known, key=str(key)))
    try:
        assert bastion.forwards == [("127.0.0.1", fake_host.port)]
        assert conn.get_extra_info("username") == "root"
    finally:
        conn.close()
        await conn.wait_closed()
    assert bastion.logins == 1 and fake_host.logins == 1


async def test_hosts_behind_one_bastion_share_one_login_on_it_until_the_last_closes(
    fake_host: FakeHost,
    bastion: FakeHost,
    known: Path,
    home: Path,
    client_key: asyncssh.SSHKey,
    tmp_path: Path,
) -> None:
    write_config(home, fake_host, bastion)
    key = str(write_key(tmp_path / "id", client_key))
    first, second = await asyncio.gather(
        connect(target(known, key=key)), connect(target(known, name="hv2", key=key))
    )
    assert bastion.logins == 1 and fake_host.logins == 2
    assert len(bastion.forwards) == 2
    first.close()
    await first.wait_closed()
    await asyncio.sleep(0.1)
    assert bastion.connected == 1  # hv2 still rides it
    second.close()
    await second.wait_closed()
    for _ in range(100):
        if bastion.connected == 0:
            break
        await asyncio.sleep(0.02)
    assert bastion.connected == 0
    (await connect(target(known, key=key))).close()  # a fresh one when needed again
    assert bastion.logins == 2


async def test_hosts_waiting_on_one_failed_jump_each_get_the_failure_in_their_own_name(
    fake_host: FakeHost, bastion: FakeHost, home: Path, tmp_path: Path
) -> None:
    known = tmp_path / "only_the_host"
    known.write_text(fake_host.known_hosts_line())
    write_config(home, fake_host, bastion)
    results = await asyncio.gather(
        *(connect(target(known, name=name)) for name in ("hv1", "hv2", "hv3")),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["HostKeyNotTrusted"] * 3
    for name, result in zip(("hv1", "hv2", "hv3"), results, strict=True):
        assert str(result).startswith(f"host {name}: SSH host key of jump host bastion ")
    assert bastion.logins == 1  # one attempt, shared


async def test_keys_from_ssh_agent_open_both_the_jump_host_and_the_host(
    fake_host: FakeHost,
    bastion: FakeHost,
    known: Path,
    home: Path,
    client_key: asyncssh.SSHKey,
    ssh_agent: Path,
) -> None:
    write_config(home, fake_host, bastion)
    await agent_add(ssh_agent, client_key)
    conn = await connect(target(known))  # no key in the inventory or the config
    conn.close()
    assert bastion.forwards == [("127.0.0.1", fake_host.port)]


async def test_the_configs_identity_file_is_the_jump_hosts_key(
    fake_host: FakeHost, known: Path, home: Path, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    jump_key = asyncssh.generate_private_key("ssh-ed25519")
    only_jump = FakeHost(asyncssh.generate_private_key("ssh-ed25519"), [jump_key], jump=True)
    await only_jump.start()
    try:
        with known.open("a") as handle:
            handle.write(only_jump.known_hosts_line())
        write_key(home / ".ssh" / "bastion", jump_key)
        write_config(home, fake_host, only_jump, "  IdentityFile ~/.ssh/bastion\n")
        host_key = write_key(tmp_path / "id", client_key)
        (await connect(target(known, key=str(host_key)))).close()
        assert only_jump.forwards == [("127.0.0.1", fake_host.port)]
    finally:
        await only_jump.stop()


async def test_an_untrusted_jump_host_key_fails_naming_the_jump_host_before_the_host_is_contacted(
    fake_host: FakeHost, bastion: FakeHost, home: Path, tmp_path: Path
) -> None:
    known = tmp_path / "only_the_host"
    known.write_text(fake_host.known_hosts_line())
    write_config(home, fake_host, bastion)
    with pytest.raises(HostKeyNotTrusted) as caught:
        await connect(target(known))
    message = str(caught.value)
    assert message.startswith(
        f"host hv1: SSH host key of jump host bastion (127.0.0.1:{bastion.port}) is not trusted"
    )
    assert "run `herd host trust hv1`" in message and "\n" not in message
    assert bastion.forwards == [] and fake_host.logins == 0


async def test_a_changed_jump_host_key_is_refused_as_changed(
    fake_host: FakeHost, bastion: FakeHost, home: Path, tmp_path: Path
) -> None:
    old = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "known"
    known.write_text(fake_host.known_hosts_line() + bastion.known_hosts_line(old))
    write_config(home, fake_host, bastion)
    with pytest.raises(HostKeyNotTrusted) as caught:
        await connect(target(known))
    message = str(caught.value)
    assert message.startswith(
        f"host hv1: host key CHANGED for jump host bastion (127.0.0.1:{bastion.port}): known "
    )
    assert fingerprint(old) in message and fingerprint(bastion.host_key) in message
    assert fake_host.logins == 0


async def test_the_host_behind_the_jump_is_verified_too(
    fake_host: FakeHost,
    bastion: FakeHost,
    home: Path,
    tmp_path: Path,
    client_key: asyncssh.SSHKey,
) -> None:
    known = tmp_path / "only_the_bastion"
    known.write_text(bastion.known_hosts_line())
    write_config(home, fake_host, bastion)
    key = write_key(tmp_path / "id", client_key)
    with pytest.raises(HostKeyNotTrusted) as caught:
        await connect(target(known, key=str(key)))
    assert str(caught.value).startswith(
        f"host hv1: SSH host key of 127.0.0.1:{fake_host.port} is not trusted"
    )
    assert bastion.forwards == [("127.0.0.1", fake_host.port)]


async def test_a_jump_host_that_refuses_the_login_is_named(
    fake_host: FakeHost, bastion: FakeHost, known: Path, home: Path, tmp_path: Path
) -> None:
    write_config(home, fake_host, bastion)
    stranger = write_key(tmp_path / "other", asyncssh.generate_private_key("ssh-ed25519"))
    with pytest.raises(HostCredentialsError) as caught:
        await connect(target(known, key=str(stranger)))
    assert str(caught.value).startswith(
        f"host hv1: SSH login to jump host bastion (127.0.0.1:{bastion.port}) as jumper was refused"
    )


async def test_a_bad_ssh_config_line_is_one_line_and_no_connection_is_tried(
    fake_host: FakeHost, known: Path, home: Path
) -> None:
    config = home / ".ssh" / "config"
    config.write_text("Host *\n  Port\n")
    with pytest.raises(HostUnreachable) as caught:
        await connect(target(known))
    assert str(caught.value) == f"host hv1: ssh config {config} line 2: Missing Port value"
    assert fake_host.logins == 0


async def test_a_missing_jump_host_fails_only_the_hosts_behind_it(
    db: Database,
    add_host: AddHost,
    fake_host: FakeHost,
    bastion: FakeHost,
    known: Path,
    home: Path,
    client_key: asyncssh.SSHKey,
    tmp_path: Path,
) -> None:
    key = write_key(tmp_path / "id", client_key)
    gone = bastion.port
    await bastion.stop()  # the bastion is gone; its port is closed
    hosts = [
        await add_host(
            "behind",
            address="127.0.0.1",
            ssh_port=fake_host.port,
            ssh_key=str(key),
            known_hosts=str(known),
            ssh_proxy_jump=f"127.0.0.1:{gone}",
        ),
        await add_host(
            "direct",
            address="127.0.0.1",
            ssh_port=fake_host.port,
            ssh_key=str(key),
            known_hosts=str(known),
        ),
    ]
    async with AgentPool() as pool:
        contacts = await Conductor(db, pool).contact_hosts(hosts)
    by_name = {c.name: c for c in contacts}
    error = by_name["behind"].error or ""
    assert error.startswith(f"host behind: cannot reach jump host 127.0.0.1:{gone}: "), error
    assert "\n" not in error, error
    # The direct host got past SSH (the fake sshd runs no agent): not a jump host error.
    assert "jump host" not in (by_name["direct"].error or "")
    assert "cannot start the agent" in (by_name["direct"].error or "")


async def test_walking_the_route_shows_the_jump_hosts_key_first_and_records_both(
    fake_host: FakeHost,
    bastion: FakeHost,
    home: Path,
    tmp_path: Path,
    client_key: asyncssh.SSHKey,
) -> None:
    known = tmp_path / "empty_known_hosts"
    write_config(home, fake_host, bastion)
    key = write_key(tmp_path / "id", client_key)
    seen: list[tuple[str | None, str]] = []

    async def trust_all(offer: Offer) -> None:
        seen.append((offer.hop.jump, fingerprint(offer.key)))
        record_host_key(offer.hop, offer.key)

    await walk_route(target(known, key=str(key)), trust_all)
    assert seen == [
        ("bastion", fingerprint(bastion.host_key)),
        (None, fingerprint(fake_host.host_key)),
    ]
    assert known.read_text() == bastion.known_hosts_line() + fake_host.known_hosts_line()
    (await connect(target(known, key=str(key)))).close()


async def herd(home: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "HOME": str(home),
        "HERD_DATABASE_URL": f"sqlite:///{tmp_path / 'herd.db'}",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
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


async def test_host_trust_records_the_jump_hosts_key_and_the_hosts_with_fingerprints(
    fake_host: FakeHost,
    bastion: FakeHost,
    home: Path,
    tmp_path: Path,
    client_key: asyncssh.SSHKey,
) -> None:
    write_config(home, fake_host, bastion)
    key = write_key(tmp_path / "id", client_key)
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"hosts:\n  - {{name: hv1, address: hv1.internal, ssh: {{key: {key}}}}}\n")
    assert (await herd(home, tmp_path, "inventory", "apply", str(inventory)))[0] == 0
    host_fp, jump_fp = fingerprint(fake_host.host_key), fingerprint(bastion.host_key)

    code, stderr = await herd(home, tmp_path, "host", "trust", "hv1", "--fingerprint", host_fp)
    assert code == 1, stderr
    assert stderr.strip().endswith(
        f"host hv1: jump host bastion (127.0.0.1:{bastion.port}): offered key {jump_fp} "
        f"does not match {host_fp}; not trusted"
    )
    trusted = tmp_path / "config" / "herd" / "known_hosts"
    assert not trusted.exists()

    code, stderr = await herd(
        home, tmp_path, "host", "trust", "hv1", "--fingerprint", host_fp, "--fingerprint", jump_fp
    )
    assert code == 0, stderr
    assert trusted.read_text() == bastion.known_hosts_line() + fake_host.known_hosts_line()
    code, stderr = await herd(home, tmp_path, "host", "trust", "hv1", "--yes")
    assert code == 0 and stderr.count("already trusted") == 2, stderr


@pytest.mark.parametrize("identities_only", [False, True], ids=["agent-too", "identities-only"])
async def test_identities_only_in_the_config_keeps_the_agents_keys_out(
    fake_host: FakeHost,
    home: Path,
    client_key: asyncssh.SSHKey,
    ssh_agent: Path,
    tmp_path: Path,
    identities_only: bool,
) -> None:
    await agent_add(ssh_agent, client_key)  # the right key, in the agent only
    wrong = write_key(home / ".ssh" / "wrong", asyncssh.generate_private_key("ssh-ed25519"))
    (home / ".ssh" / "config").write_text(
        f"Host 127.0.0.1\n  Port {fake_host.port}\n  IdentityFile {wrong}\n"
        + ("  IdentitiesOnly yes\n" if identities_only else "")
    )
    known = tmp_path / "known"
    known.write_text(fake_host.known_hosts_line())
    login = connect(HostTarget(name="hv1", address="127.0.0.1", known_hosts=str(known)))
    if identities_only:
        with pytest.raises(HostCredentialsError, match="was refused"):
            await login
    else:
        (await login).close()
