"""What the agent would refuse, the inventory refuses first: with the file and line, before
anything is claimed (builds used to fail on the host after the claim)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.inventory import InventoryError, load_inventory

HOST = "hosts:\n  - name: hv1\n    address: 192.0.2.10\n"
FLAVOR = "flavors:\n  - name: m1\n    vcpus: 1\n    ram_mb: 512\n    disk_gb: 1\n"
IMAGE = "images:\n  - name: img\n    source: host:///srv/img.qcow2\n"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems_of(text: str) -> list[str]:
    path = Path("inventory.yaml")
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    return str(caught.value).splitlines()


def loads(text: str) -> None:
    path = Path("inventory.yaml")
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    load_inventory(path)


AGENT_DIRS = [
    pytest.param("/", "a system directory", id="root"),
    pytest.param("/tmp", "a system directory", id="tmp"),
    pytest.param("/var/lib", "a system directory", id="var-lib"),
    pytest.param("/etc/herd", "a system directory", id="under-etc"),
    pytest.param("/run/herd", "not kept across reboots", id="under-run"),
    pytest.param("/srv/herd/../../etc", "normal form", id="dot-dot"),
    pytest.param("/srv//herd", "normal form", id="double-slash"),
    pytest.param("/srv/herd/", "normal form", id="trailing-slash"),
    pytest.param('"/srv/herd\\n"', "only letters", id="trailing-newline"),
    pytest.param('"/srv/he\\trd"', "only letters", id="tab"),
    pytest.param("var/lib/herd", "absolute path", id="relative"),
]


@pytest.mark.parametrize(("agent_dir", "reason"), AGENT_DIRS)
def test_an_agent_dir_the_agent_would_refuse_is_refused_with_its_line(
    agent_dir: str, reason: str
) -> None:
    (problem,) = problems_of(HOST + f"    agent_dir: {agent_dir}\n")
    assert problem.startswith("inventory.yaml:4: hosts[0] (hv1).agent_dir: must ")
    assert reason in problem


def test_an_agent_dir_in_defaults_is_checked_too() -> None:
    (problem,) = problems_of("defaults:\n  agent_dir: /tmp\n" + HOST)
    assert problem.startswith("inventory.yaml:2: defaults.agent_dir: must be a directory")
