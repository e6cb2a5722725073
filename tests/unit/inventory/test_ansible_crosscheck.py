"""herd reads Ansible inventories as Ansible does: compared with ansible-inventory itself.

herd's INI and YAML readers are its own (ansible-core is no dependency of herd's); these
tests hold them to Ansible's answer on the same files: which hosts, which groups, and
every variable of every host after inheritance. ansible-core is in the test extras;
without it the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.inventory.ansible import AnsibleInventory, read_groups, read_ini
from orchestrator.inventory.ansible.varsdirs import add_vars_dirs
from orchestrator.inventory.source import read_yaml

SAMPLES = Path(__file__).parent / "ansible_samples"
ANSIBLE_INVENTORY = shutil.which("ansible-inventory") or str(
    Path(sys.executable).with_name("ansible-inventory")
)
needs_ansible = pytest.mark.skipif(
    not Path(ANSIBLE_INVENTORY).exists(), reason="ansible-core is not installed"
)


def herd_reads(path: Path) -> AnsibleInventory:
    if path.suffix == ".ini":
        inventory, problems = read_ini(path.read_text())
    else:
        # Without herd's one liberty: herd_labels values kept as written (`ssd: yes`).
        inventory, problems = read_groups(read_yaml(path))
    problems += add_vars_dirs(inventory, path)
    assert problems == []
    return inventory


def ansible_lists(path: Path, home: Path) -> dict[str, Any]:
    config = home / "ansible.cfg"  # none of this machine's settings
    config.write_text("")
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        "ANSIBLE_CONFIG": str(config),
    }
    done = subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(path), "--list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


@needs_ansible
@pytest.mark.parametrize(
    "sample", [*sorted(p.name for p in SAMPLES.iterdir() if p.is_file()), "vars_dirs/hosts.ini"]
)
def test_herd_finds_the_hosts_groups_and_variables_ansible_inventory_lists(
    sample: str, tmp_path: Path
) -> None:
    path = SAMPLES / sample
    ours = herd_reads(path)
    theirs = ansible_lists(path, tmp_path)

    hostvars = theirs.pop("_meta")["hostvars"]
    assert sorted(ours.host_vars) == sorted(hostvars)
    for host, expected in hostvars.items():
        resolved = {name: var.value for name, var in ours.vars_of(host).items()}
        assert as_json(resolved) == expected, host
    for name, group in ours.groups.items():
        listed = theirs.get(name, {})
        if name != "all":  # its own hosts are listed under ungrouped
            assert sorted(group.hosts) == sorted(listed.get("hosts", [])), name
        assert sorted(group.children) == sorted(listed.get("children", [])), name
    assert set(theirs) <= set(ours.groups)


# Random INI inventories: groups whose children come later in the list (no loops),
# hosts in several groups, variables set at every level, values of every INI kind.
NAMES = ["g0", "g1", "g2", "g3", "g4"]
VALUES = st.sampled_from(
    ["1", "2222", "false", "False", "'quoted'", '"a b"', "[1,'x']", "{'k':'v'}", "word", "0x1f"]
)
VARIABLES = st.dictionaries(st.sampled_from(["v", "w", "x", "ansible_port"]), VALUES, max_size=3)


@st.composite
def ini_inventories(draw: st.DrawFn) -> str:
    lines = [f"ungrouped{n}" for n in range(draw(st.integers(0, 2)))]
    for index, group in enumerate(NAMES):
        lines.append(f"[{group}]")
        for host in draw(st.lists(st.sampled_from(["h0", "h1", "h2", "hv[1:2]"]), max_size=3)):
            inline = draw(VARIABLES)
            lines.append(" ".join([host, *(f"{k}={v}" for k, v in inline.items())]))
        group_vars = draw(VARIABLES)
        if group_vars:
            lines.append(f"[{group}:vars]")
            lines += [f"{k} = {v}" for k, v in group_vars.items()]
        children = draw(st.lists(st.sampled_from(NAMES[index + 1 :] or ["g4"]), max_size=2))
        children = [child for child in children if child != group]
        if children:
            lines.append(f"[{group}:children]")
            lines += children
    lines.append("[all:vars]")
    lines += [f"{k}={v}" for k, v in draw(VARIABLES).items()]
    return "\n".join(lines) + "\n"


PLACE_VARS = ("inventory_file", "inventory_dir")
"""Set by Ansible on every host (where its file is), not written in the file."""


@pytest.fixture(scope="module")
def ansible_in_process(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Ansible's own inventory classes, in this process (a subprocess per example would
    take seconds): a function from an inventory file to each host's variables."""
    config = tmp_path_factory.mktemp("ansible") / "ansible.cfg"
    config.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANSIBLE_CONFIG", str(config))
        patch.setenv("ANSIBLE_HOME", str(config.parent))
        patch.setenv("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        from ansible.inventory.helpers import get_group_vars
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.utils.vars import combine_vars

        def hostvars(path: Path) -> dict[str, dict[str, Any]]:
            manager = InventoryManager(loader=DataLoader(), sources=[str(path)])
            found = {}
            for host in manager.get_hosts():
                own = {k: v for k, v in host.vars.items() if k not in PLACE_VARS}
                found[host.name] = as_json(combine_vars(get_group_vars(host.get_groups()), own))
            return found

        yield hostvars


@needs_ansible
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=ini_inventories())
def test_random_ini_inventories_resolve_as_ansible_resolves_them(
    text: str, tmp_path: Path, ansible_in_process: Any
) -> None:
    path = tmp_path / "random.ini"
    path.write_text(text)
    ours = herd_reads(path)
    expected = ansible_in_process(path)
    assert sorted(ours.host_vars) == sorted(expected)
    for host, theirs in expected.items():
        resolved = {name: var.value for name, var in ours.vars_of(host).items()}
        assert as_json(resolved) == theirs, (host, text)
