"""Ansible inventories as herd's host source: what they build, and what operators read
when one is wrong (``file:line: where: message``, as for herd's own files)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import InvalidInput
from orchestrator.inventory import HostSpec, InventoryError, load_inventory
from orchestrator.inventory.ansible.groups import MAX_HOSTS_PER_PATTERN, expand_hosts

FLAVORS = """
flavors:
  - {name: m1.nano, vcpus: 1, ram_mb: 64, disk_gb: 1}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path.relative_to(directory)


def problems_of(*paths: Path, group: str | None = None) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load_inventory(*paths, group=group)
    return str(caught.value).splitlines()


def hosts_of(*paths: Path, group: str | None = None) -> dict[str, HostSpec]:
    return {host.name: host for host in load_inventory(*paths, group=group).hosts}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_ansible_connection_variables_become_the_hosts_address_and_ssh_settings(
    in_tmp: Path,
) -> None:
    path = write(
        in_tmp,
        "hosts.ini",
        """
        [hypervisors]
        hv1 ansible_host=192.0.2.10 ansible_port=2222 ansible_user=herd
        hv2.example.net

        [hypervisors:vars]
        ansible_ssh_private_key_file=keys/herd_ed25519
        """,
    )
    hosts = hosts_of(path)
    assert hosts["hv1"].address == "192.0.2.10"
    assert (hosts["hv1"].ssh.port, hosts["hv1"].ssh.user) == (2222, "herd")
    # A relative key is relative to the inventory file, as in herd's own files.
    assert hosts["hv1"].ssh.key == in_tmp / "keys" / "herd_ed25519"
    # No ansible_host: Ansible connects to the inventory name, and so does herd.
    assert hosts["hv2.example.net"].address == "hv2.example.net"
    assert hosts["hv2.example.net"].ssh.port == HostSpec(name="x", address="x").ssh.port
    assert hosts["hv1"].origin == "hosts.ini:2"


def test_herd_variables_set_every_host_field_from_group_or_host(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.ini",
        """
        [rack1]
        hv1 herd_availability_zone=zone-b herd_enabled=no
        hv2

        [rack1:vars]
        herd_availability_zone=zone-a
        herd_labels={'rack': 'r1'}
        herd_agent_dir=/srv/herd
        herd_libvirt_uri=qemu+ssh://localhost/system
        herd_capacity_vcpus=8
        herd_reserved_ram_mb=1024
        herd_allocation_ratios_cpu=4
        herd_ssh_known_hosts=/etc/herd/known_hosts
        herd_image_source_dirs=['/srv/images']
        herd_max_image_gb=10
        herd_domain_type=qemu
        """,
    )
    hosts = hosts_of(path)
    hv1, hv2 = hosts["hv1"], hosts["hv2"]
    assert (hv1.availability_zone, hv1.enabled) == ("zone-b", False)
    assert (hv2.availability_zone, hv2.enabled) == ("zone-a", True)
    assert hv2.labels == {"rack": "r1"}
    assert hv2.agent_dir == "/srv/herd"
    assert hv2.libvirt_uri == "qemu+ssh://localhost/system"
    assert (hv2.capacity.vcpus, hv2.reserved.ram_mb, hv2.allocation_ratios.cpu) == (8, 1024, 4)
    assert hv2.ssh.known_hosts == Path("/etc/herd/known_hosts")
    assert hv2.image_source_dirs == ["/srv/images"]
    assert (hv2.max_image_gb, hv2.domain_type) == (10, "qemu")


def test_child_groups_override_parents_and_host_variables_override_groups(
    in_tmp: Path,
) -> None:
    path = write(
        in_tmp,
        "hosts.yaml",
        """
        all:
          vars: {herd_availability_zone: everywhere, herd_agent_dir: /srv/all}
          children:
            hypervisors:
              vars: {herd_availability_zone: fleet}
              children:
                rack1:
                  vars: {herd_availability_zone: rack1}
                  hosts:
                    hv1:
                    hv2: {herd_availability_zone: own}
              hosts:
                hv3:
        """,
    )
    hosts = hosts_of(path)
    assert {name: h.availability_zone for name, h in hosts.items()} == {
        "hv1": "rack1",
        "hv2": "own",
        "hv3": "fleet",
    }
    assert {h.agent_dir for h in hosts.values()} == {"/srv/all"}


def test_a_herd_variable_wins_over_the_ansible_one_for_the_same_field(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.ini",
        "hv1 ansible_host=192.0.2.1 herd_address=198.51.100.1 ansible_port=22 herd_ssh_port=2200\n"
        "hv2 ansible_host=192.0.2.2 ansible_ssh_host=192.0.2.22\n",
    )
    hosts = hosts_of(path)
    assert (hosts["hv1"].address, hosts["hv1"].ssh.port) == ("198.51.100.1", 2200)
    # Ansible's ssh connection takes ansible_ssh_host over ansible_host; so does herd.
    assert hosts["hv2"].address == "192.0.2.22"


def test_ansible_variables_herd_does_not_use_are_ignored(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.ini",
        """
        [web]
        www1 http_port=80 ansible_python_interpreter=/usr/bin/python3 ansible_become=true
        [web:vars]
        nginx_conf={'workers': 4}
        """,
    )
    assert list(hosts_of(path)) == ["www1"]


def test_an_unknown_herd_variable_is_a_typo_named_with_its_line(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.ini",
        """
        [hv]
        hv1
        hv2
        [hv:vars]
        herd_availabilty_zone=zone-a
        """,
    )
    assert problems_of(path) == [
        "hosts.ini:5: group hv: unknown herd variable 'herd_availabilty_zone' "
        "(did you mean 'herd_availability_zone'?)"
    ]


def test_a_bad_group_variable_is_told_once_at_its_line_for_all_its_hosts(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.ini",
        """
        [hv]
        hv1
        hv2 ansible_port=70000
        [hv:vars]
        herd_agent_dir=relative/dir
        """,
    )
    problems = problems_of(path)
    assert problems[0] == "hosts.ini:3: host hv2: ansible_port: must be at most 65535"
    assert len(problems) == 2
    assert problems[1].startswith("hosts.ini:5: group hv: herd_agent_dir: must be an absolute")


def test_a_yaml_problem_names_the_line_of_the_variable_in_the_host(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.yml",
        """
        all:
          hosts:
            hv1:
              ansible_host: 192.0.2.1
              herd_capacity_ram_mb: -5
        """,
    )
    assert problems_of(path) == [
        "hosts.yml:5: host hv1: herd_capacity_ram_mb: must be greater than 0"
    ]


def test_an_inventory_name_herd_cannot_use_says_how_to_rename_it(in_tmp: Path) -> None:
    path = write(in_tmp, "hosts.ini", "[hv]\nHV_1 ansible_host=192.0.2.1\nHV_2 herd_name=hv2\n")
    name, address = problems_of(path)
    assert name.startswith("hosts.ini:2: host HV_1: must be 1 to 63 characters")
    assert name.endswith("(set herd_name to give herd another name for it)")
    assert address == (
        "hosts.ini:3: host HV_2: must be an IP address or a DNS name "
        "(set ansible_host to the address herd should connect to)"
    )


def test_group_takes_only_that_groups_hosts_and_its_childrens(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.ini",
        """
        [web]
        www1
        [rack1]
        hv1
        [rack2]
        hv2
        [hypervisors:children]
        rack1
        rack2
        """,
    )
    assert sorted(hosts_of(path, group="hypervisors")) == ["hv1", "hv2"]
    assert sorted(hosts_of(path)) == ["hv1", "hv2", "www1"]


def test_group_is_checked_only_against_the_hosts_it_takes(in_tmp: Path) -> None:
    path = write(in_tmp, "hosts.ini", "[web]\nwww_1 herd_typo=1\n[hv]\nhv1\n")
    assert list(hosts_of(path, group="hv")) == ["hv1"]


def test_a_group_no_file_has_is_refused_with_the_groups_there_are(in_tmp: Path) -> None:
    path = write(in_tmp, "hosts.ini", "[hypervisors]\nhv1\n")
    with pytest.raises(InvalidInput, match="did you mean 'hypervisors'"):
        load_inventory(path, group="hypervisor")
    herd = write(in_tmp, "herd.yaml", FLAVORS)
    with pytest.raises(InvalidInput, match="none of the files is an Ansible inventory"):
        load_inventory(herd, group="hypervisors")


def test_hosts_from_an_ansible_file_and_flavors_from_a_herd_file_apply_together(
    in_tmp: Path,
) -> None:
    hosts = write(in_tmp, "hosts.ini", "[hv]\nhv1 ansible_host=192.0.2.1\n")
    herd = write(in_tmp, "herd.yaml", FLAVORS)
    inventory = load_inventory(hosts, herd)
    assert [h.name for h in inventory.hosts] == ["hv1"]
    assert [f.name for f in inventory.flavors] == ["m1.nano"]


def test_a_host_in_two_files_is_one_line_naming_both_places(in_tmp: Path) -> None:
    hosts = write(in_tmp, "hosts.ini", "[hv]\nhv0\nhv1 ansible_host=192.0.2.1\n")
    herd = write(in_tmp, "herd.yaml", "hosts:\n  - name: hv1\n    address: 192.0.2.1\n")
    assert problems_of(hosts, herd) == [
        "herd.yaml:2: hosts[0] (hv1).name: duplicate host name 'hv1' (first on hosts.ini:3)"
    ]
    other = write(in_tmp, "more.yaml", "all:\n  hosts:\n    hv1:\n")
    assert problems_of(hosts, other) == [
        "more.yaml:3: host hv1: duplicate host name 'hv1' (first on hosts.ini:3)"
    ]


def test_a_flavor_in_two_files_is_one_line_naming_both_places(in_tmp: Path) -> None:
    one = write(in_tmp, "one.yaml", FLAVORS)
    two = write(in_tmp, "two.yaml", FLAVORS)
    (problem,) = problems_of(one, two)
    assert problem.startswith("two.yaml:2: flavors[0] (m1.nano).name: duplicate flavor")
    assert problem.endswith("(first on one.yaml:2)")


@pytest.mark.parametrize(
    ("name", "text", "hosts"),
    [
        pytest.param("hosts", "[hv]\nhv1\n", ["hv1"], id="ini-without-suffix"),
        pytest.param("hosts", "hv1 ansible_port=22\n", ["hv1"], id="ini-one-host-line"),
        pytest.param("hosts.yaml", "all:\n", [], id="yaml-all-only"),
        pytest.param("hosts.yaml", "web:\n  hosts:\n    www1:\n", ["www1"], id="yaml-groups"),
        pytest.param("hosts", "all:\n  hosts:\n    hv1:\n", ["hv1"], id="yaml-without-suffix"),
        pytest.param("empty.ini", "# nothing yet\n", [], id="empty-ini"),
    ],
)
def test_the_format_is_told_by_suffix_then_content(
    in_tmp: Path, name: str, text: str, hosts: list[str]
) -> None:
    assert list(hosts_of(write(in_tmp, name, text))) == hosts


def test_a_yaml_file_with_both_herds_sections_and_ansible_groups_is_refused(
    in_tmp: Path,
) -> None:
    path = write(in_tmp, "mixed.yaml", "all:\n  hosts:\n    hv1:\n" + FLAVORS)
    assert problems_of(path) == [
        "mixed.yaml:1: holds herd's sections (flavors) and Ansible groups (all): "
        "put the Ansible inventory in a file of its own"
    ]


def test_a_yaml_file_that_is_not_yaml_is_not_guessed_to_be_ini(in_tmp: Path) -> None:
    path = write(in_tmp, "broken.yaml", "[hv]\nhv1\n")
    (problem,) = problems_of(path)
    assert problem.startswith("broken.yaml:2: YAML syntax error")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "[hv:child]\nx\n",
            "hosts.ini:1: section [hv:child] has unknown type 'child' "
            "(use [NAME], [NAME:vars] or [NAME:children])",
            id="section-type",
        ),
        pytest.param(
            "[hv]\nhv1\n[web:vars]\nx=1\n",
            "hosts.ini:3: [web:vars] is for 'web', a group defined nowhere",
            id="vars-of-no-group",
        ),
        pytest.param(
            "[all:children]\nweb\n",
            "hosts.ini:2: [all:children] names 'web', a group defined nowhere",
            id="child-of-no-group",
        ),
        pytest.param(
            "[a:children]\nb\n[b:children]\na\n",
            "hosts.ini:4: groups in a loop: a -> b -> a",
            id="loop",
        ),
        pytest.param(
            "[hv]\nhv[3:1x]\n",
            "hosts.ini:2: host range [3:1x] must be numbers or single letters",
            id="bad-range",
        ),
        pytest.param(
            "[hv]\nhv1 ansible_port 22\n",
            "hosts.ini:2: expected key=value after the host name, got 'ansible_port'",
            id="no-equals",
        ),
        pytest.param(
            "[hv]\nansible_host=192.0.2.1\n",
            "hosts.ini:2: a host line starts with the host's name, not with "
            "'ansible_host=192.0.2.1'",
            id="no-host-name",
        ),
        pytest.param(
            "[hv]\nhv1 user='unclosed\n",
            "hosts.ini:2: cannot read host line: No closing quotation",
            id="quote",
        ),
    ],
)
def test_ini_mistakes_name_their_line(in_tmp: Path, text: str, problem: str) -> None:
    assert problems_of(write(in_tmp, "hosts.ini", text)) == [problem]


def test_yaml_mistakes_ansible_would_only_warn_about_are_refused(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.yaml",
        """
        all:
          children:
            hv:
              host:
                hv1:
            web: [www1]
        """,
    )
    assert problems_of(path) == [
        "hosts.yaml:4: group 'hv': unknown key 'host' (a group has hosts, children, vars)",
        "hosts.yaml:6: group 'web' must be a mapping, not a list",
    ]


def test_herd_labels_in_yaml_keep_unquoted_values_as_written(in_tmp: Path) -> None:
    path = write(
        in_tmp,
        "hosts.yaml",
        "all:\n  vars:\n    herd_labels: {ssd: yes, version: 1.10}\n  hosts:\n    hv1:\n",
    )
    assert hosts_of(path)["hv1"].labels == {"ssd": "yes", "version": "1.10"}


def test_host_patterns_expand_as_ansibles_do() -> None:
    assert expand_hosts("hv[01:03]") == (["hv01", "hv02", "hv03"], None)
    assert expand_hosts("db-[a:c]-[1:2]:2222") == (
        ["db-a-1", "db-a-2", "db-b-1", "db-b-2", "db-c-1", "db-c-2"],
        2222,
    )
    assert expand_hosts("www[1:9:4]") == (["www1", "www5", "www9"], None)
    assert expand_hosts("[2001:db8::1]:2222") == (["2001:db8::1"], 2222)
    assert expand_hosts("2001:db8::1") == (["2001:db8::1"], None)


def test_a_host_range_too_large_to_be_a_fleet_is_refused() -> None:
    with pytest.raises(ValueError, match=f"more than {MAX_HOSTS_PER_PATTERN:,} hosts"):
        expand_hosts("hv[0:99999999]")
    with pytest.raises(ValueError, match="more than"):
        expand_hosts("hv[0:999]-[0:999]")


def test_the_readme_examples_read_as_the_readme_says(in_tmp: Path) -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("### Ansible inventories", 1)[1]
    ini = write(in_tmp, "hosts.ini", section.split("```ini\n", 1)[1].split("```", 1)[0])
    yml = write(in_tmp, "hosts.yml", section.split("```yaml\n", 1)[1].split("```", 1)[0])
    hosts = hosts_of(ini, group="hypervisors")
    assert sorted(hosts) == ["hv01", "hv02", "hv03", "hv04"]
    assert (hosts["hv01"].address, hosts["hv01"].labels) == ("hv01", {"rack": "r1"})
    assert (hosts["hv04"].ssh.port, hosts["hv04"].enabled) == (2222, False)
    assert {(h.ssh.user, h.availability_zone, h.capacity.vcpus) for h in hosts.values()} == {
        ("herd", "zone-a", 32)
    }
    assert hosts_of(yml)["hv01"].labels == {"rack": "r1", "ssd": "yes"}


def test_vault_values_herd_does_not_need_are_no_obstacle(in_tmp: Path) -> None:
    vaulted = "!vault |\n        $ANSIBLE_VAULT;1.1;AES256\n        6162\n"
    path = write(
        in_tmp,
        "hosts.yml",
        "all:\n  hosts:\n    hv1:\n      ansible_become_password: "
        + vaulted
        + "      motd: !unsafe '{{ not templated }}'\n"
        + "    hv2:\n      ansible_user: "
        + vaulted,
    )
    assert problems_of(path) == [
        "hosts.yml:9: host hv2: ansible_user: herd cannot read a !vault or !unsafe value: "
        "give herd this one in plain text"
    ]


def test_group_vars_and_host_vars_beside_the_inventory_are_read(in_tmp: Path) -> None:
    path = write(in_tmp, "hosts.ini", "[hv]\nhv1\nhv2\n[hv:vars]\nherd_availability_zone=inv\n")
    (in_tmp / "group_vars" / "hv").mkdir(parents=True)
    (in_tmp / "host_vars").mkdir()
    write(in_tmp, "group_vars/hv/main.yml", "herd_availability_zone: zone-a\n")
    write(in_tmp, "group_vars/hv/vault.yml", "$ANSIBLE_VAULT;1.1;AES256\n6162\n")
    write(in_tmp, "host_vars/hv2.yaml", "ansible_host: 192.0.2.2\n")
    hosts = hosts_of(path)
    assert {h.availability_zone for h in hosts.values()} == {"zone-a"}
    assert (hosts["hv1"].address, hosts["hv2"].address) == ("hv1", "192.0.2.2")


def test_a_mistake_in_a_vars_file_names_that_file_and_line(in_tmp: Path) -> None:
    path = write(in_tmp, "hosts.ini", "[hv]\nhv1\n")
    (in_tmp / "group_vars").mkdir()
    write(in_tmp, "group_vars/hv.yml", "# rack settings\nherd_capacity_vcpus: many\n")
    assert problems_of(path) == [
        "group_vars/hv.yml:2: group hv: herd_capacity_vcpus: must be a whole number, not 'many'"
    ]
    write(in_tmp, "group_vars/hv.yml", "- not\n- a mapping\n")
    assert problems_of(path) == ["group_vars/hv.yml:1: must be a mapping of variables, not a list"]


def test_a_long_chain_of_groups_is_read_without_recursion(in_tmp: Path) -> None:
    chain = "".join(f"[g{n}:children]\ng{n + 1}\n" for n in range(3000))
    path = write(in_tmp, "hosts.ini", chain + "[g3000]\nhv1\n[g0:vars]\nherd_agent_dir=/srv/h\n")
    assert hosts_of(path)["hv1"].agent_dir == "/srv/h"


def test_every_host_of_the_example_inventory_can_be_written_with_herd_variables(
    in_tmp: Path,
) -> None:
    """Each host field, nested ones too, has its herd_* variable: the example's hosts
    written as an Ansible inventory read back as the same hosts."""
    example = Path(__file__).parents[3] / "inventory.example.yaml"
    originals = load_inventory(example).hosts
    hosts: dict[str, dict[str, object]] = {}
    for spec in originals:
        variables: dict[str, object] = {}
        for name, value in spec.model_dump(mode="json", exclude={"name"}).items():
            nested = isinstance(value, dict) and name not in ("labels",)
            for key, item in value.items() if nested else [(None, value)]:
                if item is not None:
                    variables[f"herd_{name}_{key}" if nested else f"herd_{name}"] = item
        hosts[spec.name] = variables
    path = in_tmp / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    assert load_inventory(path).hosts == originals
