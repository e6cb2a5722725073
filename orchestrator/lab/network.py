"""The lab's two networks: links, bridges and addresses, made and removed by name.

Every lab host has a network namespace of its own (held open with its mount and UTS
namespaces, see namespace.py), so hosts reach each other only over links the lab
made, as hypervisors on a real fleet reach each other only over their NICs:

    root namespace (herd)                      host lab-i (its own netns)
    herd<N>m  198.18.N.254/24  ── herd<N>m<i> ═ mgmt0  198.18.N.<i>/24  (sshd, QEMU migration)
    herd<N>p  198.19.N.254/24  ── herd<N>p<i> ═ prov0 ── br-provider    (guest NICs)

*Management* (198.18.N.0/24): one veth per host into a bridge in the root namespace,
where herd runs and holds .254; the hosts' sshd listens on its management address.
*Provider* (198.19.N.0/24) stands for the LAN guests sit on: each host has a Linux
bridge ``br-provider`` (same name everywhere, as the inventory's ``type: bridge``
network expects), joined at layer 2 to the other hosts' by a veth into one root
bridge, which holds .254 so tests in the root namespace reach guests.

Why veth into a root bridge rather than VXLAN over the management network: the root
namespace needs a port on the provider network anyway (tests talk to guests from
there), a veth to a bridge is exactly a NIC cabled to a switch, it keeps the full
1500-byte MTU for guests, and it needs no per-peer forwarding entries (VXLAN without
multicast needs one per pair of hosts, rewritten whenever the lab grows), and it keeps
provider traffic off the management network, as separate NICs would.

Both subnets are RFC 2544's benchmarking range (198.18.0.0/15), which no real network
routes; N comes from ``--base-address`` so the demo lab (198.18.100.x) and the e2e lab
(198.18.101.x) live side by side. Nothing leaves: no host has a default route, the root
bridges have IPv4 forwarding off (per interface, whatever net.ipv4.ip_forward says),
and IPv6 is off on every lab link, so no router solicitation or DAD goes anywhere.

Interface names in the root namespace carry N, so labs never collide, and every link
the lab makes there carries the lab's root directory as its alias: ``down`` removes
what has the lab's names and its alias (or none, if ``up`` died in between), and ``up``
refuses names held by anything else rather than take them over.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import LabError
from orchestrator.lab.commands import run

MANAGEMENT_RANGE = ipaddress.IPv4Network("198.18.0.0/16")
PROVIDER_RANGE = ipaddress.IPv4Network("198.19.0.0/16")
ROOT_HOST = 254  # the root namespace's address on both lab subnets
BASTION_HOST = 253  # the bastion's management address, kept free in every lab
LAST_HOST = 252

# Names inside every host: the same everywhere, like a fleet's NIC and bridge names.
MANAGEMENT_NIC = "mgmt0"
PROVIDER_BRIDGE = "br-provider"
PROVIDER_PORT = "prov0"

# The provider network's pool in the inventory: .1-.9 left for the operator, .254 is
# the root namespace's address.
PROVIDER_POOL = (10, 200)

# Names inside the bastion's namespace: its leg on the management network and the
# point-to-point link the root namespace reaches it by.
BASTION_FRONT = "front0"

_OWNED_KINDS = ("bridge", "veth")


@dataclass(frozen=True)
class LabNetwork:
    """One lab's subnets and root-namespace link names, all derived from its index N
    (the third octet of its base address)."""

    index: int

    @classmethod
    def for_base(cls, base_address: str) -> LabNetwork:
        try:
            base = ipaddress.IPv4Address(base_address)
        except ValueError:
            raise LabError(f"--base-address {base_address!r} is not an IPv4 address") from None
        if base not in MANAGEMENT_RANGE:
            raise LabError(
                f"--base-address {base} must be inside {MANAGEMENT_RANGE} (RFC 2544's "
                "benchmarking range, which the lab keeps inside its own namespaces), "
                "e.g. 198.18.100.1"
            )
        return cls(int(base.packed[2]))

    @property
    def management(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.18.{self.index}.0/24")

    @property
    def provider(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.19.{self.index}.0/24")

    @property
    def management_gateway(self) -> str:
        """The root namespace's management address (no host routes through it)."""
        return str(self.management.network_address + ROOT_HOST)

    @property
    def provider_address(self) -> str:
        """The root namespace's address on the provider network, where tests stand."""
        return str(self.provider.network_address + ROOT_HOST)

    @property
    def provider_pool(self) -> tuple[str, str]:
        first = self.provider.network_address
        return str(first + PROVIDER_POOL[0]), str(first + PROVIDER_POOL[1])

    @property
    def management_bridge(self) -> str:
        return f"herd{self.index}m"

    @property
    def provider_bridge(self) -> str:
        return f"herd{self.index}p"

    @property
    def bastion_address(self) -> str:
        """The bastion's address: on the management network, and at the far end of the
        root namespace's point-to-point link to it."""
        return str(self.management.network_address + BASTION_HOST)

    @property
    def bastion_netns(self) -> str:
        """The bastion's network namespace, by ``ip netns`` name."""
        return f"herd{self.index}-bastion"

    @property
    def bastion_link(self) -> str:
        """The root namespace's end of its one link to the bastion."""
        return f"herd{self.index}b"

    @property
    def bastion_management_link(self) -> str:
        """The root-side veth that cables the bastion to the management bridge."""
        return self.host_links(0)[0]

    def host_links(self, host_index: int) -> tuple[str, str]:
        """(management, provider) root-side veth names of host lab-<host_index>;
        at most 11 characters, inside the kernel's 15."""
        return f"herd{self.index}m{host_index}", f"herd{self.index}p{host_index}"

    def owns_name(self, name: str) -> bool:
        """Whether a root-namespace link name is one this lab would make."""
        if name == self.bastion_link:
            return True
        for stem in (self.management_bridge, self.provider_bridge):
            rest = name.removeprefix(stem)
            if rest != name and (rest == "" or rest.isdigit()):
                return True
        return False


def host_addresses(base_address: str, count: int) -> list[str]:
    """`count` consecutive management addresses from `base_address`, all in one /24
    of 198.18.0.0/16 and clear of its network, root (.254) and broadcast addresses."""
    if count < 1:
        raise LabError(f"a lab needs at least one host, not {count}")
    network = LabNetwork.for_base(base_address)
    first = int(ipaddress.IPv4Address(base_address).packed[3])
    if first == 0:
        raise LabError(f"{base_address} is a network address; start the lab at .1 or above")
    if first + count - 1 > LAST_HOST:
        raise LabError(
            f"{count} host(s) from {base_address} run past "
            f"{network.management.network_address + LAST_HOST} (.253 is the bastion's, "
            ".254 the root namespace's, .255 the broadcast); pick a lower --base-address"
        )
    return [str(network.management.network_address + first + i) for i in range(count)]


# -- doing -------------------------------------------------------------------------


def _ip(argv: list[str], what: str, netns_pid: int | None = None) -> str:
    """Run `ip`, in the root namespace or (by pid) a host's network namespace."""
    prefix = ["nsenter", "--target", str(netns_pid), "--net", "--"] if netns_pid else []
    return _run([*prefix, "ip", *argv], what)


def _sysctl(settings: dict[str, str], what: str, netns_pid: int | None = None) -> None:
    prefix = ["nsenter", "--target", str(netns_pid), "--net", "--"] if netns_pid else []
    pairs = [f"{key}={value}" for key, value in settings.items()]
    _run([*prefix, "sysctl", "-q", "-w", *pairs], what)


def _run(argv: list[str], what: str) -> str:
    return run(argv, what).stdout


def links() -> dict[str, dict[str, object]]:
    """The root namespace's links by name, with their kind and alias."""
    raw = json.loads(_run(["ip", "-j", "-d", "link", "show"], "ip link show") or "[]")
    found: dict[str, dict[str, object]] = {}
    for link in raw:
        info = link.get("linkinfo") or {}
        found[str(link["ifname"])] = {
            "kind": info.get("info_kind"),
            "alias": link.get("ifalias"),
            "up": "UP" in link.get("flags", []),
        }
    return found


def _claim(name: str, root: Path, existing: dict[str, dict[str, object]], kind: str) -> bool:
    """True if the link exists and is this lab's; False if it is free to make;
    LabError if something else holds the name."""
    link = existing.get(name)
    if link is None:
        return False
    if link["kind"] == kind and link["alias"] in (str(root), None):
        return True
    holder = f"a {link['kind'] or 'plain'} link"
    if link["alias"]:
        holder += f" of {link['alias']}"
    raise LabError(
        f"the interface name {name} is taken by {holder}, not this lab's; remove it or "
        "pick another --base-address"
    )


def _quiet_link(name: str, root: Path) -> None:
    """What every lab link in the root namespace gets: the lab as its alias, no IPv6."""
    _ip(["link", "set", "dev", name, "alias", str(root)], f"alias {name}")
    _sysctl({f"net.ipv6.conf.{name}.disable_ipv6": "1"}, f"{name}: IPv6 off")


def _check_subnets_free(network: LabNetwork, existing_bridges: set[str]) -> None:
    """No other interface of the root namespace may sit on the lab's subnets: the
    lab's routes would shadow it, or it would answer the lab's traffic."""
    raw = json.loads(_run(["ip", "-j", "-4", "addr", "show"], "ip addr show") or "[]")
    for link in raw:
        name = str(link["ifname"])
        if name in existing_bridges:
            continue
        for info in link.get("addr_info", []):
            address = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
            for subnet in (network.management, network.provider):
                if address.network.overlaps(subnet):
                    raise LabError(
                        f"{subnet} is already used by interface {name} ({address}); "
                        "pick another --base-address"
                    )


def ensure_bridges(network: LabNetwork, root: Path, bastion: bool = False) -> list[str]:
    """The two root bridges with the root namespace's addresses; returns what it made.
    Behind a ``bastion`` the root namespace has no address on the management bridge:
    it is a switch the hosts and the bastion share, and herd is not on it."""
    existing = links()
    ours = {
        name
        for name in (network.management_bridge, network.provider_bridge)
        if _claim(name, root, existing, "bridge")
    }
    if _claim(network.bastion_link, root, existing, "veth"):
        ours.add(network.bastion_link)
    _check_subnets_free(network, ours)
    made = []
    for name, subnet in (
        (network.management_bridge, network.management),
        (network.provider_bridge, network.provider),
    ):
        if name not in ours:
            _ip(["link", "add", "name", name, "type", "bridge"], f"bridge {name}")
            made.append(name)
        _quiet_link(name, root)
        # Forwarding off on the lab's side of the root namespace, whatever the global
        # switch says: no packet from a lab host or guest is routed on from here.
        _sysctl({f"net.ipv4.conf.{name}.forwarding": "0"}, f"{name}: forwarding off")
        if bastion and name == network.management_bridge:
            _ip(["addr", "flush", "dev", name], f"{name}: no address behind a bastion")
        else:
            address = f"{subnet.network_address + ROOT_HOST}/{subnet.prefixlen}"
            _ip(["addr", "replace", address, "dev", name], f"{name}: address")
        if name == network.provider_bridge:
            _forget_moved_guests(name)
        _ip(["link", "set", "dev", name, "up"], f"{name}: up")
    return made


def _forget_moved_guests(bridge: str, netns_pid: int | None = None) -> None:
    """The lab's guests move between hosts (migrations, shelves, evacuations) and their
    addresses pass to new guests within seconds, faster than a real network's caches
    expire: the provider bridge learns no MAC (ageing 0: it floods, as a hub), and the
    root namespace re-checks a neighbour after 2 s, so a test that reaches a guest is
    never sent to where that MAC or address lived before."""
    _ip(["link", "set", "dev", bridge, "type", "bridge", "ageing_time", "0"], bridge, netns_pid)
    if netns_pid is None:
        _sysctl(
            {
                f"net.ipv4.neigh.{bridge}.base_reachable_time_ms": "2000",
                f"net.ipv4.neigh.{bridge}.delay_first_probe_time": "1",
            },
            f"{bridge}: short neighbour cache",
        )


def netns_names() -> set[str]:
    listed = json.loads(_run(["ip", "-j", "netns", "list"], "ip netns list") or "[]")
    return {str(entry["name"]) for entry in listed}


def ensure_bastion(network: LabNetwork, root: Path) -> list[str]:
    """The bastion's network namespace, cabled to the management bridge and, by one
    point-to-point link, to the root namespace, which gets a route to the bastion's
    address and nothing else of the management subnet:

        herd<N>b  198.18.N.254 peer .253  ═ front0  198.18.N.253 peer .254
        herd<N>m0 (in herd<N>m)           ═ mgmt0   198.18.N.253/24

    The rest of 198.18.N.0/24 is an ``unreachable`` route in the root namespace, so a
    direct attempt fails at once instead of following the default route off the
    machine. The bastion forwards no packets (forwarding off, as in any new network
    namespace, and set so); only its sshd's TCP forwards cross it. Returns what it made."""
    made: list[str] = []
    name = network.bastion_netns
    if name not in netns_names():
        _run(["ip", "netns", "add", name], f"network namespace {name}")
        made.append(f"network namespace {name}")
    inside = ["ip", "netns", "exec", name]
    existing = links()
    inner = {
        str(link["ifname"])
        for link in json.loads(_run([*inside, "ip", "-j", "link", "show"], "ip link") or "[]")
    }
    for outside, nic in (
        (network.bastion_management_link, MANAGEMENT_NIC),
        (network.bastion_link, BASTION_FRONT),
    ):
        if not _claim(outside, root, existing, "veth") or nic not in inner:
            _delete(outside)
            _ip(
                [
                    "link",
                    "add",
                    "name",
                    outside,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    nic,
                    "netns",
                    name,
                ],
                f"veth {outside}",
            )
            made.append(outside)
        _quiet_link(outside, root)
    _ip(
        [
            "link",
            "set",
            "dev",
            network.bastion_management_link,
            "master",
            network.management_bridge,
            "up",
        ],
        "bastion: management leg",
    )
    _sysctl({f"net.ipv4.conf.{network.bastion_link}.forwarding": "0"}, "bastion link")
    _ip(
        [
            "addr",
            "replace",
            network.management_gateway,
            "peer",
            f"{network.bastion_address}/32",
            "dev",
            network.bastion_link,
        ],
        "bastion link",
    )
    _ip(["link", "set", "dev", network.bastion_link, "up"], "bastion link: up")
    _ip(["route", "replace", "unreachable", str(network.management)], "unreachable route")
    sysctls = {
        "net.ipv4.conf.all.forwarding": "0",
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
    }
    _run([*inside, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())], "bastion")
    prefix = network.management.prefixlen
    for argv in (
        ["addr", "replace", f"{network.bastion_address}/{prefix}", "dev", MANAGEMENT_NIC],
        [
            "addr",
            "replace",
            network.bastion_address,
            "peer",
            f"{network.management_gateway}/32",
            "dev",
            BASTION_FRONT,
        ],
        ["link", "set", "dev", MANAGEMENT_NIC, "up"],
        ["link", "set", "dev", BASTION_FRONT, "up"],
        ["link", "set", "dev", "lo", "up"],
    ):
        _run([*inside, "ip", *argv], f"bastion: ip {' '.join(argv[:2])}")
    return made


def remove_bastion(network: LabNetwork) -> list[str]:
    """End what runs in the bastion's namespace, delete it and the root namespace's
    route for the management subnet; its veths go with the namespace."""
    removed: list[str] = []
    name = network.bastion_netns
    if name in netns_names():
        pids = _run(["ip", "netns", "pids", name], f"ip netns pids {name}").split()
        for pid in pids:
            subprocess.run(["kill", "-KILL", pid], capture_output=True, stdin=subprocess.DEVNULL)
        _run(["ip", "netns", "delete", name], f"ip netns delete {name}")
        removed.append(f"network namespace {name}")
    done = subprocess.run(
        ["ip", "route", "delete", "unreachable", str(network.management)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode == 0:
        removed.append(f"route unreachable {network.management}")
    return removed


def attach_host(
    network: LabNetwork, root: Path, host_index: int, address: str, pid: int, fresh: bool
) -> None:
    """Cable a host's namespace (held by `pid`) to both lab bridges and give it its
    management address. Idempotent: a running host keeps its links; a `fresh`
    namespace gets new ones (a veth of its predecessor may linger for a moment)."""
    existing = links()
    management, provider = network.host_links(host_index)
    pairs = (
        (management, MANAGEMENT_NIC, network.management_bridge),
        (provider, PROVIDER_PORT, network.provider_bridge),
    )
    for outside, inside, bridge in pairs:
        claimed = _claim(outside, root, existing, "veth")
        if claimed and fresh:
            _delete(outside)
            claimed = False
        if not claimed:
            veth = ["type", "veth", "peer", "name", inside, "netns", str(pid)]
            _ip(["link", "add", "name", outside, *veth], f"veth {outside}")
        _quiet_link(outside, root)
        _ip(["link", "set", "dev", outside, "master", bridge, "up"], f"{outside}: up")
    inner = {str(link["ifname"]) for link in _inner_links(pid)}
    if PROVIDER_BRIDGE not in inner:
        _ip(["link", "add", "name", PROVIDER_BRIDGE, "type", "bridge"], PROVIDER_BRIDGE, pid)
    for name in (MANAGEMENT_NIC, PROVIDER_PORT, PROVIDER_BRIDGE):
        _sysctl({f"net.ipv6.conf.{name}.disable_ipv6": "1"}, f"{name}: IPv6 off", pid)
    _ip(["link", "set", "dev", PROVIDER_PORT, "master", PROVIDER_BRIDGE, "up"], PROVIDER_PORT, pid)
    _forget_moved_guests(PROVIDER_BRIDGE, pid)
    _ip(["link", "set", "dev", PROVIDER_BRIDGE, "up"], PROVIDER_BRIDGE, pid)
    prefix = network.management.prefixlen
    _ip(["addr", "replace", f"{address}/{prefix}", "dev", MANAGEMENT_NIC], MANAGEMENT_NIC, pid)
    _ip(["link", "set", "dev", MANAGEMENT_NIC, "up"], MANAGEMENT_NIC, pid)


def _delete(name: str) -> bool:
    """Delete a link; False if it was already gone."""
    done = subprocess.run(
        ["ip", "link", "delete", "dev", name],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode == 0


def _inner_links(pid: int) -> list[dict[str, object]]:
    return json.loads(_ip(["-j", "link", "show"], "ip link show", pid) or "[]")


def cabled(network: LabNetwork, host_index: int) -> bool:
    """Whether both of a host's root-side veths exist, are up and sit in their bridges."""
    raw = json.loads(_run(["ip", "-j", "link", "show"], "ip link show") or "[]")
    by_name = {str(link["ifname"]): link for link in raw}
    wanted = zip(
        network.host_links(host_index),
        (network.management_bridge, network.provider_bridge),
        strict=True,
    )
    return all(
        name in by_name
        and "UP" in by_name[name].get("flags", [])
        and by_name[name].get("master") == bridge
        for name, bridge in wanted
    )


def remove(network: LabNetwork, root: Path, wait: float = 10.0) -> list[str]:
    """Delete the lab's root-namespace links: host veths first (most vanish by
    themselves once their host's namespace is gone, which the kernel does a little
    later), then the bridges. Returns the names it deleted."""
    removed: list[str] = []
    deadline = time.monotonic() + wait
    while True:
        existing = links()
        mine = [
            name
            for name, link in existing.items()
            if network.owns_name(name)
            and link["kind"] in _OWNED_KINDS
            and link["alias"] in (str(root), None)
        ]
        if not mine:
            return removed
        # Veths before bridges: a bridge goes last so nothing is left unattached.
        for name in sorted(mine, key=lambda n: existing[n]["kind"] == "bridge"):
            if _delete(name):
                removed.append(name)
        if time.monotonic() >= deadline:
            left = sorted(set(mine) & set(links()))
            if left:
                raise LabError(f"lab links {', '.join(left)} could not be removed")
            return removed
        time.sleep(0.1)
