"""What an inventory says: hosts, flavors and images, validated and frozen.

The models are the contract with the rest of herd (``herd inventory apply`` reads them),
so they carry finished values: host defaults already merged, ``~`` expanded, relative
paths made absolute against the inventory file. Nothing downstream needs to know that a
YAML file was involved, except ``origin``, kept for messages.

Validation is strict where YAML's guessing hurts: ``vcpus: true`` is not 1 and
``ram_mb: 2048.5`` is not 2048. Messages are written for operators ("must be greater
than 0"); the loader puts the file, line and field in front of them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from agent import confine
from agent import specs as agent_specs
from orchestrator.guest_config import CMDLINE_PROPERTY
from orchestrator.names import is_name
from orchestrator.rpc.ssh_config import parse_proxy_jump

SourceKind = Literal["local", "host", "url"]


def validation_context(base_dir: Path, origin: str = "") -> dict[str, Any]:
    """What validation needs beyond the data: where relative paths start, where it was read.

    ``base_dir`` is the inventory file's directory, so ``source: images/x.qcow2`` means
    the same file whatever directory ``herd`` runs from.
    """
    return {"base_dir": base_dir, "origin": origin}


def _operator_path(value: Path, info: ValidationInfo) -> Path:
    """A file on the operator machine: ``~`` expanded, relative to the inventory file."""
    if value == Path():
        raise ValueError("must not be empty")
    value = value.expanduser()
    if not value.is_absolute():
        base_dir = (info.context or {}).get("base_dir")
        value = (base_dir or Path.cwd()) / value
    return Path(os.path.normpath(value))


def _absolute_on_host(value: str) -> str:
    """A POSIX path on the hypervisor, kept as a string: it is never opened here."""
    # The agent runs with whatever working directory sshd gives it: only absolute
    # paths mean the same thing on every host.
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError("must be an absolute path on the host (start with /)")
    return str(path)


def _image_file_on_host(value: str) -> str:
    """The file of a ``host://`` image (agent/confine.py's rule)."""
    confine.check_host_image_path(value)
    return value


def _image_source_dir(value: str) -> str:
    """A directory ``host://`` images may come from (agent/confine.py's rule, which the
    agent applies to hello's ``image_source_dirs`` too)."""
    confine.check_image_source_dir(value)
    return value


_HOST_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _host_name(value: str) -> str:
    # Host names end up in libvirt metadata, file names and `zone:host` hints: keep them
    # to DNS-label characters.
    if not _HOST_NAME.fullmatch(value):
        raise ValueError(
            "must be 1 to 63 characters of a-z, 0-9, '.' and '-', starting with a letter or digit"
        )
    return value


def _resource_name(value: str) -> str:
    # Flavor and image names follow Nova's habits (m1.small, ds512M) but stay usable as
    # file names in the hosts' image cache.
    if not is_name(value):
        raise ValueError(
            "must be 1 to 63 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.removesuffix(".").split(".")
        if (
            len(value) <= 253
            and all(_DNS_LABEL.fullmatch(label) for label in labels)
            # An all-digit last label is a mistyped IPv4 address (192.0.2.300), not a name.
            and not labels[-1].isdigit()
        ):
            return _migratable(value)
        raise ValueError("must be an IP address or a DNS name") from None
    return _migratable(value)


def _migratable(address: str) -> str:
    # Live migration gives the address to libvirt as tcp://ADDRESS; the agent refuses
    # what that URI cannot carry (an IPv6 zone index such as fe80::1%eth0).
    try:
        return agent_specs.check_address(address)
    except ValueError:
        raise ValueError(
            "must be an IP address or a DNS name, without an IPv6 zone (%eth0)"
        ) from None


def _libvirt_uri(value: str) -> str:
    # urlsplit drops tabs and newlines before it looks: the agent's rule catches them.
    if not urlsplit(value).scheme or "://" not in value:
        raise ValueError("must be a libvirt URI such as qemu:///system")
    return agent_specs.check_libvirt_uri(value)


def _zone(value: str) -> str:
    # Nova forbids ':' in zone names because `--availability-zone zone:host` forces a
    # host; herd keeps that door open.
    if not value.strip() or value != value.strip() or ":" in value:
        raise ValueError("must be a non-empty name without ':' or surrounding spaces")
    if not value.isprintable():
        raise ValueError("must not contain control characters (it is shown in listings)")
    return value


def _user(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise ValueError("must be a user name without spaces")
    return value


def _sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("must be 64 hexadecimal characters")
    return value.lower()


def _image_source(value: str, info: ValidationInfo) -> str:
    """Normalise an image source; local paths become absolute (see ``validation_context``)."""
    scheme, separator, rest = value.partition("://")
    if not separator:
        if not value:
            raise ValueError("must not be empty")
        return str(_operator_path(Path(value), info))
    if scheme in ("http", "https"):
        if not urlsplit(value).netloc:
            raise ValueError("must name a server: https://server/path")
        return value
    if scheme == "host":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                "must be host:///absolute/path (three slashes: the same path on every host)"
            )
        _image_file_on_host(rest)
        return value
    raise ValueError(
        f"unknown scheme {scheme!r}: use a local path, host:///path, http:// or https://"
    )


HostName = Annotated[str, AfterValidator(_host_name)]
ImageSourceDir = Annotated[str, AfterValidator(_image_source_dir)]
ResourceName = Annotated[str, AfterValidator(_resource_name)]
OperatorPath = Annotated[Path, AfterValidator(_operator_path)]
HostPath = Annotated[str, AfterValidator(_absolute_on_host)]
AgentDir = Annotated[str, AfterValidator(agent_specs.check_state_dir)]
"""The agent's state directory: the agent's own rule, so a host it would refuse is
refused here, with the file and line."""
# Amounts end up in database integer columns; PostgreSQL's `integer` is 32-bit.
_DB_INT_MAX = 2**31 - 1
Count = Annotated[int, Strict(), Field(gt=0, le=_DB_INT_MAX)]
"""A whole number of vCPUs, MiB or GiB that must not be zero."""
Amount = Annotated[int, Strict(), Field(ge=0, le=_DB_INT_MAX)]
"""A whole number of vCPUs, MiB or GiB where zero means none."""
Ratio = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]


# A flavor's sizes: what the agent builds (agent.specs), or refused here.
Vcpus = Annotated[int, Strict(), Field(ge=agent_specs.VCPUS[0], le=agent_specs.VCPUS[1])]
RamMb = Annotated[int, Strict(), Field(ge=agent_specs.RAM_MB[0], le=agent_specs.RAM_MB[1])]
DiskGb = Annotated[int, Strict(), Field(ge=agent_specs.DISK_GB[0], le=agent_specs.DISK_GB[1])]

BridgeName = Annotated[str, AfterValidator(partial(agent_specs.check_source, "bridge"))]
LibvirtNetworkName = Annotated[str, AfterValidator(partial(agent_specs.check_source, "network"))]
StrMap = dict[str, str]
"""Labels, extra specs, properties: the loader reads their unquoted values as strings."""


class _Frozen(BaseModel):
    """Specs never change once read; an unknown key is a typo, not a new feature."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class _Spec(_Frozen):
    """An inventory entry (host, flavor or image) that remembers where it was written."""

    _origin: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _remember_origin(self, info: ValidationInfo) -> Self:
        # Pydantic also runs this when a finished spec is put into an `Inventory`, with
        # no context: keep what the loader recorded then.
        origin = (info.context or {}).get("origin")
        if origin is not None:
            self._origin = origin
        return self

    @property
    def origin(self) -> str:
        """``"file:line"`` of the entry, for messages; empty when not read from a file."""
        return self._origin

    def __eq__(self, other: object) -> bool:
        # Where a spec was written is not part of what it says: the same host read from
        # another file, or dumped and read back, is the same host.
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__


def _proxy_jump(value: str) -> str:
    parse_proxy_jump(value)
    return value.strip()


class SshSpec(_Frozen):
    """How the orchestrator logs in to a host. A field left out is decided by the
    OpenSSH client config (``config``, else ``~/.ssh/config``), then by herd's
    defaults: user root, port 22, ssh-agent's keys and ``~/.ssh/id_*``."""

    user: Annotated[str, AfterValidator(_user)] | None = None
    port: Annotated[int, Strict(), Field(ge=1, le=65535)] | None = None
    key: OperatorPath | None = None
    known_hosts: OperatorPath | None = None
    """``None``: herd's own known_hosts, then ``~/.ssh/known_hosts``. Unknown keys are
    refused, the jump hosts' included."""
    config: OperatorPath | None = None
    """An OpenSSH client config read instead of ``~/.ssh/config`` (as ``ssh -F``)."""
    proxy_jump: Annotated[str, AfterValidator(_proxy_jump)] | None = None
    """``[user@]host[:port]``, comma-separated for a chain, or ``none``: as OpenSSH's
    ProxyJump, and it wins over the config's."""


class Capacity(_Frozen):
    """Overrides of what the host reports, e.g. to keep part of a host for other uses."""

    vcpus: Count | None = None
    ram_mb: Count | None = None
    disk_gb: Count | None = None


class AllocationRatios(_Frozen):
    """Overcommit factors; defaults are Nova's classic cpu 16.0, ram 1.5, disk 1.0."""

    cpu: Ratio = 16.0
    ram: Ratio = 1.5
    disk: Ratio = 1.0


class StorageSpec(_Frozen):
    """Where the host keeps volumes: a directory of herd's own (the agent_dir's rule),
    ``<agent_dir>/volumes`` when not given."""

    type: Literal["dir"] = "dir"
    path: AgentDir | None = None


class Reserved(_Frozen):
    """Resources kept for the hypervisor itself, never given to instances (as Nova's)."""

    vcpus: Amount = 0
    ram_mb: Amount = 512
    disk_gb: Amount = 0


class HostSpec(_Spec):
    """One hypervisor, with the file's ``defaults`` already merged in."""

    name: HostName
    address: Annotated[str, AfterValidator(_address)]
    ssh: SshSpec = Field(default_factory=SshSpec)
    libvirt_uri: Annotated[str, AfterValidator(_libvirt_uri)] = "qemu:///system"
    agent_dir: AgentDir = "/var/lib/herd"
    labels: StrMap = Field(default_factory=dict)
    availability_zone: Annotated[str, AfterValidator(_zone)] = "default"
    capacity: Capacity = Field(default_factory=Capacity)
    allocation_ratios: AllocationRatios = Field(default_factory=AllocationRatios)
    reserved: Reserved = Field(default_factory=Reserved)
    domain_type: Literal["auto", "kvm", "qemu"] = "auto"
    enabled: Annotated[bool, Strict()] = True
    image_source_dirs: list[ImageSourceDir] = Field(default_factory=list)
    """Directories on the host that ``host://`` images may be read from; none by default
    (a host path is then refused). Only trusted users should be able to write there."""
    max_image_gb: Annotated[int, Strict(), Field(gt=0, le=1024 * 1024)] = 64
    """The largest image the host takes (uploaded, downloaded or copied), in GiB."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Where volumes live on the host (`herd volume create`)."""

    @model_validator(mode="after")
    def _image_dirs_apart_from_agent_dir(self) -> Self:
        """The agent's own files (journals with user data, caches) are not images."""
        agent = PurePosixPath(self.agent_dir)
        for index, value in enumerate(self.image_source_dirs):
            path = PurePosixPath(value)
            if confine.under(path, str(agent)) or confine.under(agent, value):
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [
                        InitErrorDetails(
                            type=PydanticCustomError(
                                "image_dir_overlaps_agent_dir",
                                "must not be or contain the agent_dir ({agent_dir})",
                                {"agent_dir": self.agent_dir},
                            ),
                            loc=("image_source_dirs", index),
                            input=value,
                        )
                    ],
                )
        return self

    @model_validator(mode="after")
    def _reserved_fits(self) -> Self:
        """A capacity override must leave something for instances after the reservation.

        Usable is ``capacity x ratio - reserved``, the scheduler's formula (Nova's
        legacy filters'). The error goes on the capacity field: it is always written in
        the file, while the reservation may be the built-in default.
        """
        errors = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "reserved_exceeds_capacity",
                    "leaves nothing for instances "
                    "({total} x ratio {ratio} - reserved {reserved} <= 0)",
                    {"total": total, "ratio": ratio, "reserved": reserved},
                ),
                loc=("capacity", dimension),
                input=total,
            )
            for dimension, ratio_name in (("vcpus", "cpu"), ("ram_mb", "ram"), ("disk_gb", "disk"))
            if (total := getattr(self.capacity, dimension)) is not None
            and (reserved := getattr(self.reserved, dimension))
            >= total * (ratio := getattr(self.allocation_ratios, ratio_name))
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


HOST_IDENTITY = ("name", "address")
"""Host keys that ``defaults`` cannot give: each host has its own."""

HostDefaults: type[BaseModel] = create_model(
    "HostDefaults",
    __base__=_Frozen,
    __doc__="The ``defaults`` section: any host key but its identity, all optional.",
    **{
        name: (info.annotation, info)
        for name, info in HostSpec.model_fields.items()
        if name not in HOST_IDENTITY
    },
)


class FlavorSpec(_Spec):
    """A size an instance can be booted with."""

    name: ResourceName
    vcpus: Vcpus
    ram_mb: RamMb
    disk_gb: DiskGb
    """Root disk in GiB; 0, as in Nova, means "as large as the image needs"."""
    extra_specs: StrMap = Field(default_factory=dict)


class ImageSpec(_Spec):
    """A disk image instances boot from, and where to get it."""

    name: ResourceName
    source: Annotated[str, AfterValidator(_image_source)]
    """An absolute path on the operator machine, ``host:///path`` or an http(s) URL."""
    format: Literal["qcow2", "raw", "aki", "ari"] = "qcow2"
    """qcow2 or raw: a disk; aki or ari: a kernel or initramfs that disk images name in
    their ``kernel_id`` / ``ramdisk_id`` properties (direct kernel boot, as in Nova)."""
    sha256: Annotated[str, AfterValidator(_sha256)] | None = None
    min_ram_mb: Amount = 0
    min_disk_gb: Amount = 0
    properties: StrMap = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cmdline_boots(self) -> Self:
        """The kernel command line goes to the agent as is: its rule applies here."""
        cmdline = self.properties.get(CMDLINE_PROPERTY)
        if cmdline is not None:
            try:
                agent_specs.check_cmdline(cmdline)
            except ValueError as exc:
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [
                        InitErrorDetails(
                            type=PydanticCustomError("cmdline", str(exc)),
                            loc=("properties", CMDLINE_PROPERTY),
                            input=cmdline,
                        )
                    ],
                ) from None
        return self

    @property
    def source_kind(self) -> SourceKind:
        """How the image reaches a host: pushed from here, already there, or downloaded."""
        if self.source.startswith("host://"):
            return "host"
        if self.source.startswith(("http://", "https://")):
            return "url"
        return "local"

    @property
    def local_path(self) -> Path | None:
        """The image file on the operator machine (absolute), or ``None`` if not local."""
        return Path(self.source) if self.source_kind == "local" else None


class AllocationPool(_Frozen):
    """The addresses herd may hand out, both ends included."""

    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address


class NetworkSpec(_Spec):
    """Where NICs attach, and (with a subnet) the fixed IPs herd allocates on it."""

    name: ResourceName
    type: Literal["user", "bridge", "network"]
    """user: QEMU user-mode networking (no host set-up); bridge: a
    Linux bridge that exists on every host; network: a libvirt network on every host."""
    bridge: BridgeName | None = None
    libvirt_network: LibvirtNetworkName | None = None
    subnet: ipaddress.IPv4Network | None = None
    gateway: ipaddress.IPv4Address | None = None
    allocation_pool: AllocationPool | None = None
    dns: list[ipaddress.IPv4Address] = Field(default_factory=list)
    default: Annotated[bool, Strict()] = False
    """Servers created without ``--network`` get a port on the default network."""

    @model_validator(mode="before")
    @classmethod
    def _no_vlan(cls, data: Any) -> Any:
        """`vlan:` is refused with the reason rather than as an unknown key: libvirt
        tags guest traffic only on Open vSwitch bridges and SR-IOV NICs, never on a
        Linux bridge, so herd could not honour it (README: no VLAN tags)."""
        if isinstance(data, dict) and "vlan" in data:
            vlan = data["vlan"]
            message = (
                "libvirt tags VLANs only on Open vSwitch and SR-IOV NICs, not Linux "
                f"bridges; make a bridge for VLAN {vlan} on every host (e.g. "
                f"br-vlan{vlan} over eth0.{vlan}) and name it in `bridge:`"
            )
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("network", message), loc=("vlan",), input=vlan
                    )
                ],
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        errors: list[tuple[str, str]] = []
        wants = {"bridge": "bridge", "network": "libvirt_network"}
        for kind, key in wants.items():
            value = getattr(self, key)
            if self.type == kind and not value:
                errors.append((key, f"is required for a network of type {kind}"))
            elif self.type != kind and value:
                errors.append((key, f"is only for networks of type {kind}"))
        subnet = self.subnet
        if subnet is None:
            for key in ("gateway", "allocation_pool"):
                if getattr(self, key) is not None:
                    errors.append((key, "needs a subnet"))
        else:
            if self.gateway is not None and self.gateway not in subnet:
                errors.append(("gateway", f"{self.gateway} is not in {subnet}"))
            pool = self.allocation_pool
            if pool is not None:
                for end in ("start", "end"):
                    if getattr(pool, end) not in subnet:
                        errors.append(
                            (f"allocation_pool.{end}", f"{getattr(pool, end)} is not in {subnet}")
                        )
                if pool.start > pool.end:
                    errors.append(("allocation_pool", "start is after end"))
            if subnet.prefixlen > 30:
                errors.append(("subnet", "must be /30 or larger to hold a gateway and guests"))
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("network", message),
                        loc=tuple(key.split(".")),
                        input=None,
                    )
                    for key, message in errors
                ],
            )
        return self


class Inventory(_Frozen):
    """Everything the inventory files declare, merged; names are unique per kind."""

    hosts: list[HostSpec] = Field(default_factory=list)
    flavors: list[FlavorSpec] = Field(default_factory=list)
    images: list[ImageSpec] = Field(default_factory=list)
    networks: list[NetworkSpec] = Field(default_factory=list)
