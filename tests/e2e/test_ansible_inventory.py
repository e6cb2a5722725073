"""An operator's Ansible inventories, INI and YAML, applied and booted on: the hosts
come from them, the flavors, images and networks from a herd file beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.herdcli import HerdCli, assert_one_line_error, domain_state

pytestmark = pytest.mark.e2e


def ini_value(value: Any) -> str:
    """A host-line value Ansible reads back as ``value`` (a Python literal, no spaces)."""
    return repr(value).replace(" ", "")


def ansible_inventories(lab_inventory: Path, directory: Path) -> tuple[Path, Path, Path]:
    """The lab's hosts written as an operator's Ansible inventories would hold them:
    the first in an INI file beside a web server herd must leave alone, the second in a
    YAML one; the lab's flavors, images and networks in a herd file."""
    lab = yaml.safe_load(lab_inventory.read_text())
    first, second = lab["hosts"][:2]

    def herd_vars(host: dict[str, Any], zone: str) -> dict[str, Any]:
        return {
            "ansible_host": host["address"],
            "ansible_port": host["ssh"]["port"],
            "ansible_user": host["ssh"]["user"],
            "ansible_ssh_private_key_file": host["ssh"]["key"],
            "herd_ssh_known_hosts": host["ssh"]["known_hosts"],
            "herd_libvirt_uri": host["libvirt_uri"],
            "herd_agent_dir": host["agent_dir"],
            "herd_image_source_dirs": host["image_source_dirs"],
            "herd_labels": {**host["labels"], "from": zone},
            "herd_availability_zone": zone,
        }

    ini = directory / "hosts.ini"
    group_vars = herd_vars(first, "ini")
    inline = {key: group_vars.pop(key) for key in ("ansible_host", "ansible_port")}
    ini.write_text(
        "# the fleet's Ansible inventory\n"
        "[web]\n"
        "www1 ansible_host=www1.invalid http_port=8080\n\n"
        "[hypervisors]\n"
        f"{first['name']} " + " ".join(f"{k}={ini_value(v)}" for k, v in inline.items()) + "\n\n"
        "[hypervisors:vars]\n"
        + "".join(f"{k}={ini_value(v)}\n" for k, v in group_vars.items())
        + "ansible_python_interpreter=/usr/bin/python3\n"
    )
    yaml_file = directory / "hosts.yml"
    yaml_file.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {"ansible_become": False},
                    "children": {
                        "hypervisors": {"hosts": {second["name"]: herd_vars(second, "yaml")}}
                    },
                }
            },
            sort_keys=False,
        )
    )
    catalog = directory / "herd.yaml"
    catalog.write_text(yaml.safe_dump({k: lab[k] for k in ("flavors", "images", "networks")}))
    return ini, yaml_file, catalog


def test_ini_and_yaml_ansible_inventories_are_applied_and_booted_on(
    tmp_path: Path, lab, lab_inventory: Path
) -> None:
    ini, yaml_file, catalog = ansible_inventories(lab_inventory, tmp_path)
    herd = HerdCli(tmp_path)
    files = (str(ini), str(yaml_file), str(catalog))
    typo = herd.run("inventory", "apply", *files, "--group", "hypervisor")
    assert_one_line_error(typo, contains="did you mean 'hypervisors'?")
    herd.ok("inventory", "validate", *files, "--group", "hypervisors")
    herd.ok("inventory", "apply", *files, "--group", "hypervisors")
    first, second = (host.name for host in lab.hosts[:2])
    hosts = {h["name"]: h for h in herd.ok("host", "list", "--json").json()}
    assert sorted(hosts) == sorted([first, second])  # no www1, no third lab host

    try:
        for zone, host in (("ini", first), ("yaml", second)):
            (created,) = herd.ok(
                "server",
                "create",
                f"from-{zone}",
                "--flavor",
                "m1.nano",
                "--image",
                "blank",
                "--availability-zone",
                zone,
                "--json",
            ).json()
            assert created["vm_state"] == "active", created
            assert created["host"] == host
            assert domain_state(lab, host, created["uuid"]) == "running"
    finally:
        names = [s["name"] for s in herd.servers()]
        if names:
            herd.ok("server", "delete", *names)
    assert herd.servers() == []
    for host in (first, second):
        done = lab.exec_in(host, ["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
        assert "herd-" not in done.stdout

    # The same files again change nothing: what was read is what is stored.
    again = herd.ok("inventory", "apply", *files, "--group", "hypervisors", "--json").json()
    assert {change["verb"] for change in again} == {"unchanged"}
