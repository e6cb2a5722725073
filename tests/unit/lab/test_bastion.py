"""The bastion's sshd config: one user in, forwards to the lab hosts' sshds only."""

from __future__ import annotations

from pathlib import Path

from orchestrator.lab.bastion import sshd_config


def lines(text: str) -> dict[str, str]:
    return {
        line.split(" ", 1)[0]: line.split(" ", 1)[1]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_the_bastion_forwards_only_to_the_hosts_it_is_given() -> None:
    config = lines(
        sshd_config("127.0.109.1", 2209, Path("/b"), "nobody", [("198.18.0.11", 22), ("h2", 2222)])
    )
    assert config["PermitOpen"] == "198.18.0.11:22 h2:2222"
    assert config["AllowTcpForwarding"] == "local"
    assert (config["ListenAddress"], config["Port"]) == ("127.0.109.1", "2209")


def test_the_bastion_lets_one_user_in_with_a_key_and_runs_nothing_for_it() -> None:
    config = lines(sshd_config("127.0.109.1", 2209, Path("/b"), "nobody", []))
    assert config["AllowUsers"] == "nobody" and config["PermitRootLogin"] == "no"
    assert config["PasswordAuthentication"] == "no"
    assert config["ForceCommand"] == "/bin/false" and config["PermitTTY"] == "no"
    assert config["PermitOpen"] == "none"  # no hosts: no forwards at all
    assert config["AuthorizedKeysCommand"] == "/bin/cat /b/authorized_keys"
    assert config["LogLevel"] == "DEBUG1"  # the level that logs each forward
