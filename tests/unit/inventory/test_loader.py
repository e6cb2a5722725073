"""load_inventory: what operators read when an inventory is wrong, and what it builds when right."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.inventory import (
    AllocationRatios,
    InventoryError,
    InventoryProblem,
    SshSpec,
    load_inventory,
)

HOST = "hosts:\n  - name: hv1\n    address: 192.0.2.10\n"


def write(directory: Path, text: str, name: str = "inventory.yaml") -> Path:
    """Write dedented ``text`` and return the path relative to ``directory`` (the cwd)."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path.relative_to(directory)


def problems_of(*paths: Path) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load_inventory(*paths)
    return str(caught.value).splitlines()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a scratch directory so messages say ``inventory.yaml:N``, as operators see them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Each case: an inventory with one mistake, and the exact line the operator must see.
MISTAKES = [
    pytest.param(
        """
        hosts:
          - name: hv1
            address: 192.0.2.10
          - name: hv2
            address: 192.0.2.11
            allocation_ratios:
              cpu: 4.0
              ram: 0
        """,
        "inventory.yaml:8: hosts[1] (hv2).allocation_ratios.ram: must be greater than 0",
        id="ratio-zero",
    ),
    pytest.param(
        """
        flavors:
          - name: m1.tiny
            ramm: 512
            vcpus: 1
            disk_gb: 1
        """,
        "inventory.yaml:3: flavors[0] (m1.tiny): unknown key 'ramm' (did you mean 'ram_mb'?)",
        id="unknown-key-suggests",
    ),
    pytest.param(
        """
        flavors:
          - name: m1.tiny
            vcpus: 1
            disk_gb: 1
        """,
        "inventory.yaml:2: flavors[0] (m1.tiny).ram_mb: is required",
        id="missing-key-points-at-entry",
    ),
    pytest.param(
        HOST + "    ssh: {port: 70000}\n",
        "inventory.yaml:4: hosts[0] (hv1).ssh.port: must be at most 65535",
        id="port-too-high",
    ),
    pytest.param(
        HOST + "    ssh:\n      prot: 22\n",
        "inventory.yaml:5: hosts[0] (hv1).ssh: unknown key 'prot' (did you mean 'port'?)",
        id="unknown-nested-key",
    ),
    pytest.param(
        "flavors:\n  - {name: m1.tiny, vcpus: true, ram_mb: 512, disk_gb: 1}\n",
        "inventory.yaml:2: flavors[0] (m1.tiny).vcpus: must be a whole number, not true",
        id="bool-is-not-a-count",
    ),
    pytest.param(
        "flavors:\n  - {name: m1.tiny, vcpus: 1, ram_mb: 512.5, disk_gb: 1}\n",
        "inventory.yaml:2: flavors[0] (m1.tiny).ram_mb: must be a whole number, not 512.5",
        id="float-is-not-a-count",
    ),
    pytest.param(
        "images:\n  - {name: big, source: host:///big.qcow2, min_ram_mb: 4294967296}\n",
        "inventory.yaml:2: images[0] (big).min_ram_mb: must be at most 2147483647",
        id="count-beyond-a-database-integer",
    ),
    pytest.param(
        "flavors:\n  - name: m1.tiny\n    vcpus: 1\n    ram_mb: 512\n    disk_gb: 1\n    1: x\n",
        "inventory.yaml:6: flavors[0] (m1.tiny): unknown key 1",
        id="numeric-key",
    ),
    pytest.param(
        "flavors:\n  - {name: m1.tiny, vcpus: 1, ram_mb: 512, disk_gb: -1}\n",
        "inventory.yaml:2: flavors[0] (m1.tiny).disk_gb: must be at least 0",
        id="negative-disk",
    ),
    pytest.param(
        "hosts:\n  - name: HV_1\n    address: 192.0.2.10\n",
        "inventory.yaml:2: hosts[0] (HV_1).name: must be 1 to 63 characters of a-z, 0-9, '.' "
        "and '-', starting with a letter or digit",
        id="host-name-pattern",
    ),
    pytest.param(
        "hosts:\n  - name: hv1\n    address: 192.0.2.300\n",
        "inventory.yaml:3: hosts[0] (hv1).address: must be an IP address or a DNS name",
        id="mistyped-ip",
    ),
    pytest.param(
        HOST + "    domain_type: xen\n",
        "inventory.yaml:4: hosts[0] (hv1).domain_type: must be 'auto', 'kvm' or 'qemu', not 'xen'",
        id="domain-type",
    ),
    pytest.param(
        HOST + "    enabled: maybe\n",
        "inventory.yaml:4: hosts[0] (hv1).enabled: must be true or false, not 'maybe'",
        id="enabled-not-bool",
    ),
    pytest.param(
        HOST + "    agent_dir: var/lib/herd\n",
        "inventory.yaml:4: hosts[0] (hv1).agent_dir: must be an absolute path on the host "
        "(start with /)",
        id="agent-dir-relative",
    ),
    pytest.param(
        HOST + "    availability_zone: 'az:hv1'\n",
        "inventory.yaml:4: hosts[0] (hv1).availability_zone: must be a non-empty name without "
        "':' or surrounding spaces",
        id="zone-with-colon",
    ),
    pytest.param(
        HOST + "    allocation_ratios: {cpu: .nan}\n",
        "inventory.yaml:4: hosts[0] (hv1).allocation_ratios.cpu: must be a finite number",
        id="ratio-nan",
    ),
    pytest.param(
        HOST + "    labels:\n      rack: [r1, r2]\n",
        "inventory.yaml:5: hosts[0] (hv1).labels.rack: must be a string, not a list",
        id="label-not-a-string",
    ),
    pytest.param(
        HOST + "    capacity: {ram_mb: 256}\n",
        "inventory.yaml:4: hosts[0] (hv1).capacity.ram_mb: leaves nothing for instances "
        "(256 x ratio 1.5 - reserved 512 <= 0)",
        id="capacity-under-reserved",
    ),
    pytest.param(
        "images:\n  - name: debian\n    source: /srv/debian.qcow2\n    sha256: abc123\n",
        "inventory.yaml:4: images[0] (debian).sha256: must be 64 hexadecimal characters",
        id="sha256-short",
    ),
    pytest.param(
        "images:\n  - name: debian\n    source: ftp://mirror/debian.qcow2\n",
        "inventory.yaml:3: images[0] (debian).source: unknown scheme 'ftp': use a local path, "
        "host:///path, http:// or https://",
        id="source-scheme",
    ),
    pytest.param(
        "images:\n  - name: debian\n    source: host://hv1/srv/debian.qcow2\n",
        "inventory.yaml:3: images[0] (debian).source: must be host:///absolute/path "
        "(three slashes: the same path on every host)",
        id="source-host-with-name",
    ),
    pytest.param(
        "images:\n  - name: debian\n    source: /srv/debian.vmdk\n    format: vmdk\n",
        "inventory.yaml:4: images[0] (debian).format: must be 'qcow2', 'raw', 'aki' or 'ari', not 'vmdk'",
        id="image-format",
    ),
    pytest.param(
        "hostz: []\n",
        "inventory.yaml:1: unknown top-level key 'hostz' (did you mean 'hosts'?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "- name: hv1\n",
        "inventory.yaml:1: the top level must be a mapping with keys defaults, hosts, flavors, "
        "images, networks, not a list",
        id="top-level-list",
    ),
    pytest.param(
        "hosts:\n  name: hv1\n",
        "inventory.yaml:1: hosts: must be a list of hosts, not a mapping",
        id="section-not-a-list",
    ),
    pytest.param(
        "flavors:\n  - m1.tiny\n",
        "inventory.yaml:2: flavors[0]: must be a mapping, not 'm1.tiny'",
        id="entry-not-a-mapping",
    ),
    pytest.param(
        "defaults:\n  ssh:\n    port: 0\n" + HOST,
        "inventory.yaml:3: defaults.ssh.port: must be at least 1",
        id="error-in-defaults-told-at-defaults",
    ),
    pytest.param(
        "defaults:\n  address: 192.0.2.1\n",
        "inventory.yaml:2: defaults: unknown key 'address' (each host needs its own address)",
        id="defaults-cannot-give-identity",
    ),
    pytest.param(
        "defaults:\n  ssh: {user: herd}\n" + HOST + "    ssh: {port: 0}\n",
        "inventory.yaml:6: hosts[0] (hv1).ssh.port: must be at least 1",
        id="merged-error-told-where-written",
    ),
    pytest.param(
        """
        flavors:
          - name: m1.tiny
            vcpus: 1
            ram_mb: 512
            vcpus: 2
            disk_gb: 1
        """,
        "inventory.yaml:5: flavors[0] (m1.tiny): duplicate key 'vcpus' (first on line 3)",
        id="duplicate-key",
    ),
    pytest.param(
        "hosts: []\nhosts: []\n",
        "inventory.yaml:2: duplicate key 'hosts' (first on line 1)",
        id="duplicate-top-level-key",
    ),
    pytest.param(
        HOST + "  - name: hv1\n    address: 192.0.2.11\n",
        "inventory.yaml:4: hosts[1] (hv1).name: duplicate host name 'hv1' (first on line 2)",
        id="duplicate-name",
    ),
    pytest.param(
        "hosts:\n  - name: hv1\n    address: [192.0.2.10\n",
        "inventory.yaml:3: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(end of file, while parsing a flow sequence)",
        id="yaml-unclosed-bracket",
    ),
    pytest.param(
        "hosts:\n  - name: hv1\n     address: 192.0.2.10\n",
        "inventory.yaml:3: YAML syntax error: mapping values are not allowed here (column 13)",
        id="yaml-bad-indent",
    ),
    pytest.param(
        "hosts:\n\t- name: hv1\n",
        "inventory.yaml:2: YAML syntax error: found character '\\t' that cannot start any token "
        "(column 1, while scanning for the next token)",
        id="yaml-tab",
    ),
    pytest.param(
        "networks:\n  - name: br\n    type: bridge\n",
        "inventory.yaml:2: networks[0] (br).bridge: is required for a network of type bridge",
        id="network-bridge-missing",
    ),
    pytest.param(
        "networks:\n  - name: n\n    type: user\n    subnet: 10.0.0.0/24\n    gateway: 10.0.1.1\n",
        "inventory.yaml:5: networks[0] (n).gateway: 10.0.1.1 is not in 10.0.0.0/24",
        id="network-gateway-outside",
    ),
    pytest.param(
        "networks:\n  - name: n\n    type: user\n    allocation_pool: {start: 10.0.0.9, end: 10.0.0.1}\n",
        "inventory.yaml:4: networks[0] (n).allocation_pool: needs a subnet",
        id="network-pool-without-subnet",
    ),
    pytest.param(
        "networks:\n  - name: v\n    type: bridge\n    bridge: br0\n    vlan: 10\n",
        "inventory.yaml:5: networks[0] (v).vlan: libvirt tags VLANs only on Open vSwitch and "
        "SR-IOV NICs, not Linux bridges; make a bridge for VLAN 10 on every host "
        "(e.g. br-vlan10 over eth0.10) and name it in `bridge:`",
        id="network-vlan-on-a-linux-bridge",
    ),
    pytest.param(
        "networks:\n  - name: n\n    type: vlan\n",
        "inventory.yaml:3: networks[0] (n).type: must be 'user', 'bridge' or 'network', not 'vlan'",
        id="network-type",
    ),
    pytest.param(
        "hosts: []\n---\nflavors: []\n",
        "inventory.yaml:2: YAML syntax error: expected a single document in the stream, "
        "but found another document (column 1)",
        id="yaml-two-documents",
    ),
    pytest.param(
        "hosts: &loop\n  - *loop\n",
        "inventory.yaml:1: hosts[0]: an alias refers to its own anchor (recursive data)",
        id="yaml-recursive-alias",
    ),
    pytest.param(
        "hosts: !!python/object:os.system []\n",
        "inventory.yaml:1: hosts: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'",
        id="yaml-python-tag",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MISTAKES)
def test_each_mistake_is_told_with_file_line_and_field(in_tmp: Path, text: str, expected: str):
    assert expected in problems_of(write(in_tmp, text))


@pytest.mark.parametrize(("text", "expected"), MISTAKES)
def test_every_problem_is_one_line_starting_with_file_and_line(
    in_tmp: Path, text: str, expected: str
):
    for line in problems_of(write(in_tmp, text)):
        assert re.match(r"inventory\.yaml:\d+: \S", line), line


def test_all_problems_are_told_at_once_in_line_order(in_tmp: Path):
    path = write(
        in_tmp,
        """
        hosts:
          - name: hv1
            address: 192.0.2.10
            ssh: {port: 0}
          - name: hv2
            adress: 192.0.2.11
        flavors:
          - {name: m1.tiny, vcpus: 0, ram_mb: 512, disk_gb: 1}
        """,
    )
    assert problems_of(path) == [
        "inventory.yaml:4: hosts[0] (hv1).ssh.port: must be at least 1",
        "inventory.yaml:5: hosts[1] (hv2).address: is required",
        "inventory.yaml:6: hosts[1] (hv2): unknown key 'adress' (did you mean 'address'?)",
        "inventory.yaml:8: flavors[0] (m1.tiny).vcpus: must be at least 1",
    ]


def test_a_bad_default_is_told_once_however_many_hosts_it_reaches(in_tmp: Path):
    path = write(
        in_tmp,
        """
        defaults:
          capacity: {ram_mb: 300}
        hosts:
          - {name: hv1, address: 192.0.2.10}
          - {name: hv2, address: 192.0.2.11}
          - {name: hv3, address: 192.0.2.12}
        """,
    )
    assert problems_of(path) == [
        "inventory.yaml:2: defaults.capacity.ram_mb: leaves nothing for instances "
        "(300 x ratio 1.5 - reserved 512 <= 0)"
    ]


@pytest.mark.parametrize(
    ("cpu_ratio", "problems"),
    [
        pytest.param(
            4.0,
            [
                "inventory.yaml:4: hosts[0] (hv1).capacity.vcpus: leaves nothing for instances "
                "(2 x ratio 4.0 - reserved 8 <= 0)"
            ],
            id="default-ratio-leaves-nothing",
        ),
        pytest.param(8.5, [], id="more-overcommit-leaves-room"),
    ],
)
def test_capacity_times_ratio_must_exceed_the_reservation(
    in_tmp: Path, cpu_ratio: float, problems: list[str]
):
    path = write(
        in_tmp,
        HOST
        + "    capacity: {vcpus: 2}\n"
        + "    reserved: {vcpus: 8}\n"
        + f"    allocation_ratios: {{cpu: {cpu_ratio}}}\n",
    )
    try:
        load_inventory(path)
    except InventoryError as exc:
        assert str(exc).splitlines() == problems
    else:
        assert problems == []


def test_a_control_character_in_a_name_cannot_break_the_line(in_tmp: Path):
    path = write(in_tmp, 'hosts:\n  - {name: "hv\\x1e1", address: 192.0.2.10}\n')
    assert problems_of(path) == [
        "inventory.yaml:2: hosts[0] ('hv\\x1e1').name: must be 1 to 63 characters of a-z, 0-9, "
        "'.' and '-', starting with a letter or digit"
    ]


def test_the_error_is_invalid_input_with_structured_problems(in_tmp: Path):
    path = write(in_tmp, "flavors:\n  - {name: m1.tiny, vcpus: 0, ram_mb: 512, disk_gb: 1}\n")
    with pytest.raises(InvalidInput) as caught:
        load_inventory(path)
    assert isinstance(caught.value, InventoryError)
    assert caught.value.problems == [
        InventoryProblem("inventory.yaml", 2, "flavors[0] (m1.tiny).vcpus", "must be at least 1")
    ]
    assert caught.value.exit_code == 2


def test_a_missing_file_is_told_without_a_line(in_tmp: Path):
    assert problems_of(Path("nowhere.yaml")) == [
        "nowhere.yaml: cannot read: no such file or directory"
    ]


def test_a_file_that_is_not_utf8_is_told_with_its_line(in_tmp: Path):
    (in_tmp / "inventory.yaml").write_bytes(b"hosts: []\n# caf\xe9\n")
    assert problems_of(Path("inventory.yaml")) == [
        "inventory.yaml:2: not UTF-8 text (invalid continuation byte at byte 15)"
    ]


def test_duplicate_names_across_files_name_both_files(in_tmp: Path):
    first = write(
        in_tmp, "flavors:\n  - {name: m1.tiny, vcpus: 1, ram_mb: 512, disk_gb: 1}\n", "a.yaml"
    )
    second = write(
        in_tmp,
        "images: []\nflavors:\n  - {name: m1.tiny, vcpus: 2, ram_mb: 512, disk_gb: 1}\n",
        "b.yaml",
    )
    assert problems_of(first, second) == [
        "b.yaml:3: flavors[0] (m1.tiny).name: duplicate flavor name 'm1.tiny' (first on a.yaml:2)"
    ]


def test_an_invalid_entry_still_counts_for_duplicate_names(in_tmp: Path):
    path = write(in_tmp, HOST + "    ssh: {port: 0}\n  - name: hv1\n    address: 192.0.2.11\n")
    assert problems_of(path) == [
        "inventory.yaml:4: hosts[0] (hv1).ssh.port: must be at least 1",
        "inventory.yaml:5: hosts[1] (hv1).name: duplicate host name 'hv1' (first on line 2)",
    ]


def test_a_flavor_and_an_image_may_share_a_name(in_tmp: Path):
    path = write(
        in_tmp,
        """
        flavors: [{name: small, vcpus: 1, ram_mb: 512, disk_gb: 1}]
        images: [{name: small, source: /srv/small.qcow2}]
        """,
    )
    inventory = load_inventory(path)
    assert [inventory.flavors[0].name, inventory.images[0].name] == ["small", "small"]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("# hosts come later\n\n", id="only-comments"),
        pytest.param("hosts:\nflavors:\n# - name: m1.tiny\nimages:\n", id="empty-sections"),
        pytest.param("defaults:\n  ssh: {user: herd}\n", id="only-defaults"),
    ],
)
def test_an_inventory_with_nothing_in_it_is_valid_and_empty(in_tmp: Path, text: str):
    inventory = load_inventory(write(in_tmp, text))
    assert (inventory.hosts, inventory.flavors, inventory.images) == ([], [], [])


def test_no_files_make_an_empty_inventory():
    assert load_inventory().hosts == []


def test_several_files_merge_in_order(in_tmp: Path):
    racks = [
        write(in_tmp, f"hosts:\n  - {{name: hv{n}, address: 192.0.2.{n}}}\n", f"rack{n}.yaml")
        for n in (1, 2)
    ]
    flavors = write(in_tmp, "flavors:\n  - {name: m1.tiny, vcpus: 1, ram_mb: 512, disk_gb: 0}\n")
    inventory = load_inventory(*racks, flavors)
    assert [host.name for host in inventory.hosts] == ["hv1", "hv2"]
    assert [host.origin for host in inventory.hosts] == ["rack1.yaml:2", "rack2.yaml:2"]
    assert inventory.flavors[0].disk_gb == 0
    assert inventory.flavors[0].origin == "inventory.yaml:2"


def test_hosts_get_built_in_defaults(in_tmp: Path):
    (host,) = load_inventory(write(in_tmp, HOST)).hosts
    # Every SSH field is left to the OpenSSH client config (then root, 22, the agent).
    assert host.ssh == SshSpec()
    assert (host.ssh.user, host.ssh.port, host.ssh.key, host.ssh.proxy_jump) == (None,) * 4
    assert host.allocation_ratios == AllocationRatios(cpu=16.0, ram=1.5, disk=1.0)
    assert (host.reserved.vcpus, host.reserved.ram_mb, host.reserved.disk_gb) == (0, 512, 0)
    assert (host.capacity.vcpus, host.capacity.ram_mb, host.capacity.disk_gb) == (None,) * 3
    assert host.agent_dir == "/var/lib/herd"
    assert (host.libvirt_uri, host.availability_zone) == ("qemu:///system", "default")
    assert (host.domain_type, host.enabled, host.labels) == ("auto", True, {})


def test_file_defaults_merge_under_hosts_key_by_key(in_tmp: Path):
    path = write(
        in_tmp,
        """
        defaults:
          ssh: {user: herd, port: 2222, key: /keys/herd}
          allocation_ratios: {cpu: 8.0, ram: 1.5}
          labels: {site: par1, ssd: "false"}
          availability_zone: zone-a
          enabled: false
        hosts:
          - name: hv1
            address: 192.0.2.10
            ssh: {port: 22}
            allocation_ratios: {ram: 1.0}
            labels: {ssd: "true"}
            enabled: true
          - name: hv2
            address: 192.0.2.11
        """,
    )
    hv1, hv2 = load_inventory(path).hosts
    assert hv1.ssh == SshSpec(user="herd", port=22, key=Path("/keys/herd"))
    assert hv1.allocation_ratios == AllocationRatios(cpu=8.0, ram=1.0, disk=1.0)
    assert hv1.labels == {"site": "par1", "ssd": "true"}
    assert (hv1.availability_zone, hv1.enabled) == ("zone-a", True)
    assert hv2.ssh.port == 2222
    assert hv2.labels == {"site": "par1", "ssd": "false"}
    assert hv2.enabled is False


def test_defaults_apply_only_to_the_hosts_of_their_file(in_tmp: Path):
    with_defaults = write(in_tmp, "defaults:\n  ssh: {port: 2222}\n" + HOST, "a.yaml")
    without = write(in_tmp, "hosts:\n  - {name: hv2, address: 192.0.2.11}\n", "b.yaml")
    hv1, hv2 = load_inventory(with_defaults, without).hosts
    assert (hv1.ssh.port, hv2.ssh.port) == (2222, None)


def test_a_host_null_overrides_a_default(in_tmp: Path):
    path = write(
        in_tmp,
        "defaults:\n  ssh: {known_hosts: /etc/herd/known}\n"
        + HOST
        + "    ssh: {known_hosts: null}\n",
    )
    assert load_inventory(path).hosts[0].ssh.known_hosts is None


def test_string_maps_keep_unquoted_values_as_written(in_tmp: Path):
    path = write(
        in_tmp,
        HOST
        + """\
    labels: {ssd: yes, version: 1.10, slot: 010, on: off, built: 2024-01-31, quoted: "1.10"}
flavors:
  - {name: m1.tiny, vcpus: 1, ram_mb: 512, disk_gb: 1, extra_specs: {hw:numa_nodes: 2}}
images:
  - {name: debian, source: /srv/d.qcow2, properties: {os_version: 12, hw_qemu_guest_agent: true}}
""",
    )
    inventory = load_inventory(path)
    assert inventory.hosts[0].labels == {
        "ssd": "yes",
        "version": "1.10",
        "slot": "010",
        "on": "off",
        "built": "2024-01-31",
        "quoted": "1.10",
    }
    assert inventory.flavors[0].extra_specs == {"hw:numa_nodes": "2"}
    assert inventory.images[0].properties == {"os_version": "12", "hw_qemu_guest_agent": "true"}


def test_yaml_anchors_and_merge_keys_work_and_own_keys_win(in_tmp: Path):
    path = write(
        in_tmp,
        """
        hosts:
          - &rack1 {name: hv1, address: 192.0.2.10, labels: {rack: r1}, domain_type: kvm}
          - <<: *rack1
            name: hv2
            address: 192.0.2.11
        """,
    )
    hv1, hv2 = load_inventory(path).hosts
    assert (hv2.name, hv2.address, hv2.labels, hv2.domain_type) == (
        "hv2",
        "192.0.2.11",
        {"rack": "r1"},
        "kvm",
    )
    assert hv1.name == "hv1"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("images/debian.qcow2", "{dir}/images/debian.qcow2", id="relative"),
        pytest.param("../shared/debian.qcow2", "{root}/shared/debian.qcow2", id="parent"),
        pytest.param("~/images/debian.qcow2", "{home}/images/debian.qcow2", id="home"),
        pytest.param("/srv/debian.qcow2", "/srv/debian.qcow2", id="absolute"),
        pytest.param("host:///srv/debian.qcow2", "host:///srv/debian.qcow2", id="on-host"),
        pytest.param("https://example.org/d.qcow2", "https://example.org/d.qcow2", id="url"),
    ],
)
def test_local_image_paths_are_relative_to_the_inventory_file(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: str
):
    monkeypatch.setenv("HOME", "/home/operator")
    path = write(in_tmp, f"images:\n  - {{name: debian, source: '{source}'}}\n", "site/inv.yaml")
    (image,) = load_inventory(path).images
    assert image.source == expected.format(dir=in_tmp / "site", root=in_tmp, home="/home/operator")


def test_ssh_key_paths_are_relative_to_the_inventory_file(in_tmp: Path):
    path = write(
        in_tmp,
        HOST + "    ssh: {key: keys/hv1, known_hosts: known_hosts}\n",
        "site/inv.yaml",
    )
    ssh = load_inventory(path).hosts[0].ssh
    assert (ssh.key, ssh.known_hosts) == (in_tmp / "site/keys/hv1", in_tmp / "site/known_hosts")


@pytest.mark.parametrize(
    ("source", "kind", "local_path"),
    [
        pytest.param("/srv/d.qcow2", "local", Path("/srv/d.qcow2"), id="path"),
        pytest.param("host:///srv/d.qcow2", "host", None, id="host"),
        pytest.param("http://mirror/d.qcow2", "url", None, id="http"),
        pytest.param("https://mirror/d.qcow2", "url", None, id="https"),
    ],
)
def test_image_source_kind_says_how_the_image_reaches_a_host(
    in_tmp: Path, source: str, kind: str, local_path: Path | None
):
    path = write(in_tmp, f"images:\n  - {{name: d, source: '{source}'}}\n")
    (image,) = load_inventory(path).images
    assert (image.source_kind, image.local_path) == (kind, local_path)


def test_sha256_is_kept_in_lowercase(in_tmp: Path):
    digest = "AB" * 32
    path = write(in_tmp, f"images:\n  - {{name: d, source: /srv/d.qcow2, sha256: {digest}}}\n")
    assert load_inventory(path).images[0].sha256 == "ab" * 32


def test_specs_are_frozen(in_tmp: Path):
    (host,) = load_inventory(write(in_tmp, HOST)).hosts
    with pytest.raises(ValueError, match="frozen"):
        host.name = "hv9"  # type: ignore[misc]


def test_specs_compare_equal_wherever_they_were_written(in_tmp: Path):
    first = write(in_tmp, HOST, "a.yaml")
    second = write(in_tmp, "# rack 2\n\n" + HOST, "b.yaml")
    (one,) = load_inventory(first).hosts
    (other,) = load_inventory(second).hosts
    assert (one.origin, other.origin) == ("a.yaml:2", "b.yaml:4")
    assert one == other
