"""Fixtures for orchestrator unit tests that speak SSH: a host, a client key, an agent."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.unit.orchestrator.sshlib import FakeHost


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def fake_host(client_key: asyncssh.SSHKey) -> AsyncIterator[FakeHost]:
    host = FakeHost(asyncssh.generate_private_key("ssh-ed25519"), [client_key])
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose whether an agent runs; the developer's own must not leak in."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own (beside its tmp_path, which some tests list): the
    developer's ~/.ssh (config, keys, known_hosts) must not decide how a test logs in."""
    path = tmp_path_factory.mktemp("home")
    (path / ".ssh").mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture
def ssh_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ssh-agent of this test only, its socket in SSH_AUTH_SOCK."""
    if shutil.which("ssh-agent") is None:
        pytest.skip("ssh-agent is not installed")
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
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket))
        yield socket
    finally:
        agent.terminate()
        agent.wait(10)
