"""Job arguments, checked once and turned into typed records; and the rules behind them.

The orchestrator is trusted, but a malformed request must fail as ``BadRequest`` at
``job_start`` (answered at once) rather than halfway through a build.

The ``check_*`` functions and the limits are the single source of what a host accepts:
the orchestrator's inventory models, CLI and API call them too, so a value the agent
would refuse is refused there, before any resource is claimed. They raise
``ValueError`` with a message that reads after the field's name ("must be ...").

Every pattern is applied with ``fullmatch``: ``$`` also matches before a trailing
newline, so ``re.match("^[a-z]+$", "db\\n")`` accepts ``"db\\n"``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from agent.errors import BadRequest

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# XML 1.0 cannot carry most control characters even escaped; names are one line anyway.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

DOMAIN_TYPES = ("kvm", "qemu")
IMAGE_FORMATS = ("qcow2", "raw")
NIC_KINDS = ("user", "bridge", "network")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# A Linux interface name (the kernel's dev_valid_name: under IFNAMSIZ, no '/', ':' or
# space) and a libvirt network name, as `ip link` and `virsh net-define` take them.
_BRIDGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# What libvirt's migration URI (tcp://ADDRESS) can carry unescaped: a host name, an
# IPv4 address or a bracketed or bare IPv6 address; no zone index ('%' needs escaping).
_ADDRESS_RE = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
_SOCKET_NAME = re.compile(r"migrate-[0-9a-f]{1,32}\.sock")
MAX_SEED_BYTES = 4 * 1024 * 1024
MAX_CMDLINE = 2048
MAX_NICS = 16
MAX_TEXT = 255  # names, as the domain XML's title and metadata carry them
MAX_HOSTNAME = 253  # a DNS name
# A flavor's sizes: 1 to 1024 vCPUs, 16 MiB to 16 TiB of RAM, a root disk of up to 1 PiB
# (0: the image's own size).
VCPUS = (1, 1024)
RAM_MB = (16, 16 * 1024 * 1024)
DISK_GB = (0, 1024 * 1024)
# Seconds: a graceful stop or soft reboot before it is forced; a live migration's copy.
STOP_TIMEOUT = (0, 3600)
MIGRATION_TIMEOUT = (1, 86400)
TCP_PORT = (1, 65535)
# sun_path holds 107 bytes and a NUL; herd opens sockets in the state directory (live
# migration's `migrate-<12 hex>.sock`, 26 characters), so the directory leaves room.
MAX_SOCKET_PATH = 107
MAX_STATE_DIR = 80
# POSIX's portable file name characters: nothing a shell, a libvirt URI (`?socket=`)
# or a log line could read twice.
_PATH_PART_RE = re.compile(r"[A-Za-z0-9._-]+")
# Directories of the system itself. One component (`/srv`, `/opt`, `/home`) is refused
# anyway: herd's state gets a directory of its own.
_SYSTEM_DIRS = frozenset(
    {
        "/var/backups",
        "/var/cache",
        "/var/crash",
        "/var/lib",
        "/var/local",
        "/var/lock",
        "/var/log",
        "/var/mail",
        "/var/opt",
        "/var/spool",
        "/var/tmp",
        "/var/lib/libvirt",  # libvirt's own: its images/ is libvirt's default pool
    }
)
# Trees that belong to the distribution: herd writes nothing under them.
_SYSTEM_TREES = ("/etc", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Virtual or volatile file systems: not a disk, or emptied at every boot, while the
# journal and the image cache must outlive a reboot.
_VOLATILE_TREES = ("/proc", "/sys", "/dev", "/run", "/var/run")


def _under(path: str, trees: Tuple[str, ...]) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in trees)


def check_state_dir(value: Any) -> str:
    """``value`` if it can be herd's state directory on a host, else ``ValueError``.

    One rule for the inventory's ``agent_dir`` and the agent's ``hello``. A path that
    could name its directory two ways (``..``, ``//``, a trailing ``/``) is refused,
    not normalised: hosts are compared by their agent_dir strings (live migration
    keeps disk paths), and the operator should see the path herd will use.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("must be an absolute path on the host (start with /)")
    if len(value) > MAX_STATE_DIR:
        raise ValueError(
            f"must be at most {MAX_STATE_DIR} characters (sockets herd opens there "
            f"must fit in {MAX_SOCKET_PATH})"
        )
    parts = value[1:].split("/")
    if value != "/" and any(part in ("", ".", "..") for part in parts):
        raise ValueError("must be written in normal form: no '//', '.', '..' or trailing '/'")
    if value != "/" and not all(_PATH_PART_RE.fullmatch(part) for part in parts):
        raise ValueError("must use only letters, digits, '.', '_' and '-' between its slashes")
    if _under(value, _VOLATILE_TREES):
        raise ValueError("must not be under /proc, /sys, /dev or /run (not kept across reboots)")
    if len(parts) < 2 or value in _SYSTEM_DIRS or _under(value, _SYSTEM_TREES):
        raise ValueError(f"must be a directory of herd's own, not {value} (a system directory)")
    return value


def check_source(kind: str, value: Any) -> str:
    """What a NIC of ``kind`` "bridge" or "network" attaches to: the bridge's name or
    the libvirt network's."""
    if kind == "bridge":
        if isinstance(value, str) and _BRIDGE_RE.fullmatch(value):
            return value
        raise ValueError(
            "must be a Linux bridge name: 1 to 15 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    if isinstance(value, str) and _NETWORK_RE.fullmatch(value):
        return value
    raise ValueError(
        "must be a libvirt network name: 1 to 64 letters, digits, '_', '.', ':' or '-', "
        "starting with a letter or digit"
    )


def check_cmdline(value: Any) -> str:
    """A direct-boot kernel command line (the image property ``os_command_line``)."""
    if not isinstance(value, str) or len(value) > MAX_CMDLINE or _CONTROL_RE.search(value):
        raise ValueError(
            f"must be one line of at most {MAX_CMDLINE} characters, without control characters"
        )
    return value


def check_address(value: Any) -> str:
    """A host's address as a live migration's destination (``tcp://ADDRESS``)."""
    if not isinstance(value, str) or not _ADDRESS_RE.fullmatch(value):
        raise ValueError(
            "must be a host name or an IP address (no zone index: libvirt's URI cannot carry it)"
        )
    return value


def check_socket(value: Any, where: str) -> str:
    """A tunnel socket's path. It goes into a libvirt URI (no '&' or '?') and is
    unlinked afterwards: only the names the orchestrator makes (``migrate-<hex>.sock``);
    the caller confines it to state_dir."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_SOCKET_PATH
        or not value.startswith("/")
        or not _SOCKET_NAME.fullmatch(value.rsplit("/", 1)[1])
    ):
        raise BadRequest(f"{where}socket must be an absolute path to migrate-<hex>.sock")
    return value


def check_libvirt_uri(value: Any) -> str:
    """A libvirt connection URI, as ``virsh -c`` takes it: one word, never an option."""
    if (
        not isinstance(value, str)
        or not value
        or value.startswith("-")
        or any(char.isspace() or not char.isprintable() for char in value)
    ):
        raise ValueError("must be a libvirt URI such as qemu:///system (one word)")
    return value


def obj(args: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = args.get(key)
    if not isinstance(value, Mapping):
        raise BadRequest(f"{where}{key} must be an object")
    return value


def text(args: Mapping[str, Any], key: str, where: str, max_len: int = MAX_TEXT) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequest(f"{where}{key} must be a string of 1 to {max_len} characters")
    if _CONTROL_RE.search(value):
        raise BadRequest(f"{where}{key} must not contain control characters")
    return value


def integer(args: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{where}{key} must be an integer from {low} to {high}")
    return value


def choice(args: Mapping[str, Any], key: str, where: str, allowed: tuple) -> str:
    value = args.get(key)
    if value not in allowed:
        raise BadRequest(f"{where}{key} must be one of {', '.join(allowed)}")
    return value


def uuid(args: Mapping[str, Any], key: str, where: str = "") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not UUID_RE.fullmatch(value.lower()):
        raise BadRequest(f"{where}{key} must be a UUID in canonical form")
    return value.lower()


def sha256(args: Mapping[str, Any], key: str, where: str = "") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise BadRequest(f"{where}{key} must be 64 lowercase hex digits")
    return value


def mapping(args: Mapping[str, Any], key: str, where: str) -> Dict[str, Any]:
    value = args.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest(f"{where}{key} must be an object")
    return dict(value)


@dataclass(frozen=True)
class Instance:
    uuid: str
    name: str
    hostname: str


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int  # 0: the root disk keeps the image's own size, as in Nova
    extra_specs: Dict[str, Any]


@dataclass(frozen=True)
class Image:
    name: str
    sha256: str
    format: str
    properties: Dict[str, Any]


@dataclass(frozen=True)
class Nic:
    mac: str
    kind: str
    source: Optional[str]


@dataclass(frozen=True)
class BootFiles:
    """Direct kernel boot: a kernel and initramfs from the image cache, and a command line."""

    kernel: str  # sha256 of a cached image
    ramdisk: Optional[str]
    cmdline: str


def _boot(args: Mapping[str, Any]) -> Optional[BootFiles]:
    raw = args.get("boot")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise BadRequest("build: boot must be an object")
    cmdline = raw.get("cmdline", "")
    try:
        check_cmdline(cmdline)
    except ValueError as exc:
        raise BadRequest(f"build: boot.cmdline {exc}") from None
    return BootFiles(
        kernel=sha256(raw, "kernel", "build: boot."),
        ramdisk=sha256(raw, "ramdisk", "build: boot.") if raw.get("ramdisk") is not None else None,
        cmdline=cmdline,
    )


@dataclass(frozen=True)
class VolumeDisk:
    """A volume the domain has as a data disk: its file in the host's volume directory
    (``dir``, or the state directory's ``volumes``), as which device."""

    volume: str  # its UUID, which names the file and is the disk's serial
    format: str
    device: str
    dir: Optional[str] = None

    def args(self) -> Dict[str, Any]:
        """As agent/volumes.py takes a volume's whereabouts."""
        found: Dict[str, Any] = {"volume": self.volume, "format": self.format}
        if self.dir is not None:
            found["dir"] = self.dir
        return found


MAX_VOLUMES = 24  # vdc to vdz
_VOLUME_DEVICE_RE = re.compile(r"vd[c-z]")


def _volumes(args: Mapping[str, Any]) -> Tuple[VolumeDisk, ...]:
    raw = args.get("volumes", [])
    if not isinstance(raw, list) or len(raw) > MAX_VOLUMES:
        raise BadRequest(f"build: volumes must be a list of at most {MAX_VOLUMES} objects")
    found: List[VolumeDisk] = []
    for index, item in enumerate(raw):
        where = f"build: volumes[{index}]."
        if not isinstance(item, Mapping):
            raise BadRequest(f"build: volumes[{index}] must be an object")
        device = item.get("device")
        if not isinstance(device, str) or not _VOLUME_DEVICE_RE.fullmatch(device):
            raise BadRequest(f"{where}device must be vdc to vdz")
        found.append(_volume_disk(item, where, device))
    if len({v.device for v in found}) != len(found):
        raise BadRequest("build: volumes name one device twice")
    return tuple(found)


def _root_volume(args: Mapping[str, Any]) -> Optional[VolumeDisk]:
    raw = args.get("root_volume")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise BadRequest("build: root_volume must be an object")
    return _volume_disk(raw, "build: root_volume.", "vda")


def _volume_disk(item: Mapping[str, Any], where: str, device: str) -> VolumeDisk:
    """A volume's whereabouts as a build names them: its UUID, format, directory."""
    directory = item.get("dir")
    if directory is not None:
        try:
            check_state_dir(directory)
        except ValueError as exc:
            raise BadRequest(f"{where}dir {directory!r} {exc}") from None
    return VolumeDisk(
        volume=uuid(item, "volume", where),
        format=choice(item, "format", where, ("qcow2", "raw")),
        device=device,
        dir=directory,
    )


def _nics(args: Mapping[str, Any]) -> Tuple[Nic, ...]:
    raw = args.get("nics", [])
    if not isinstance(raw, list) or len(raw) > MAX_NICS:
        raise BadRequest(f"build: nics must be a list of at most {MAX_NICS} objects")
    nics: List[Nic] = []
    for index, item in enumerate(raw):
        where = f"build: nics[{index}]."
        if not isinstance(item, Mapping):
            raise BadRequest(f"build: nics[{index}] must be an object")
        mac = item.get("mac")
        if not isinstance(mac, str) or not MAC_RE.fullmatch(mac):
            raise BadRequest(f"{where}mac must be a MAC address like 02:68:64:0a:0b:0c")
        kind = choice(item, "kind", where, NIC_KINDS)
        source = item.get("source")
        if kind == "user":
            source = None
        else:
            try:
                check_source(kind, source)
            except ValueError as exc:
                raise BadRequest(f"{where}source {exc}") from None
        nics.append(Nic(mac=mac, kind=kind, source=source))
    return tuple(nics)


def _seed(args: Mapping[str, Any]) -> Optional[bytes]:
    raw = args.get("seed")
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > MAX_SEED_BYTES * 4 // 3 + 4:
        raise BadRequest(f"build: seed must be base64 of at most {MAX_SEED_BYTES} bytes")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("build: seed is not valid base64") from None


def _disk_from(args: Mapping[str, Any]) -> Optional[str]:
    value = args.get("disk_from")
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "/../" in value:
        raise BadRequest("build: disk_from must be an absolute path")
    return value


def _flag(args: Mapping[str, Any], key: str, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"build: {key} must be true or false")
    return value


POWER_ACTIONS = (
    "start",
    "stop",
    "reboot",
    "hard_reboot",
    "pause",
    "unpause",
    "suspend",
    "resume",
)


@dataclass(frozen=True)
class PowerSpec:
    """A power action on one of herd's domains; ``timeout``: how long a graceful stop or
    soft reboot may take before it is forced (Nova's shutdown_timeout)."""

    uuid: str
    action: str
    timeout: int

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> PowerSpec:
        return cls(
            uuid=uuid(args, "uuid", "power: "),
            action=choice(args, "action", "power: ", POWER_ACTIONS),
            timeout=integer(args, "timeout", "power: ", *STOP_TIMEOUT) if "timeout" in args else 60,
        )

    @property
    def lock_key(self) -> str:
        return self.uuid


@dataclass(frozen=True)
class BuildSpec:
    instance: Instance
    flavor: Flavor
    image: Image
    domain_type: str
    boot: Optional[BootFiles] = None
    nics: Tuple[Nic, ...] = ()
    seed: Optional[bytes] = None  # the NoCloud ISO, made by the orchestrator
    # Rebuild (or evacuation target): throw away any domain and disk of this UUID here
    # and build afresh, instead of adopting what exists.
    rebuild: bool = False
    # Start the domain once defined (a stopped server is migrated or rebuilt stopped).
    start: bool = True
    # Cold migration, resize: the server's own disk instead of a fresh overlay.
    disk_from: Optional[str] = None
    # Copy disk_from rather than move it: it is the only copy (a resize's stash), which
    # must survive this build failing.
    keep_disk_from: bool = False
    # A live migration's destination: everything but the domain, which the migration
    # brings (at the very same paths).
    define: bool = True
    # The volumes attached to it (a rebuild or a move keeps them), after vda and vdb.
    volumes: Tuple[VolumeDisk, ...] = ()
    # Booted from a volume: its file is vda (made from the image by volume_create), and
    # no overlay of the cached image is made.
    root_volume: Optional[VolumeDisk] = None

    @property
    def image_digests(self) -> List[str]:
        """Every cached image this instance's files come from."""
        digests = [] if self.root_volume is not None else [self.image.sha256]
        if self.boot is not None:
            digests.append(self.boot.kernel)
            if self.boot.ramdisk:
                digests.append(self.boot.ramdisk)
        return digests

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> BuildSpec:
        inst = obj(args, "instance", "build: ")
        flav = obj(args, "flavor", "build: ")
        img = obj(args, "image", "build: ")
        return cls(
            instance=Instance(
                uuid=uuid(inst, "uuid", "build: instance."),
                name=text(inst, "name", "build: instance."),
                hostname=text(inst, "hostname", "build: instance.", max_len=MAX_HOSTNAME),
            ),
            flavor=Flavor(
                name=text(flav, "name", "build: flavor."),
                vcpus=integer(flav, "vcpus", "build: flavor.", *VCPUS),
                ram_mb=integer(flav, "ram_mb", "build: flavor.", *RAM_MB),
                disk_gb=integer(flav, "disk_gb", "build: flavor.", *DISK_GB),
                extra_specs=mapping(flav, "extra_specs", "build: flavor."),
            ),
            image=Image(
                name=text(img, "name", "build: image."),
                sha256=sha256(img, "sha256", "build: image."),
                format=choice(img, "format", "build: image.", IMAGE_FORMATS),
                properties=mapping(img, "properties", "build: image."),
            ),
            domain_type=choice(args, "domain_type", "build: ", DOMAIN_TYPES),
            boot=_boot(args),
            nics=_nics(args),
            seed=_seed(args),
            rebuild=_flag(args, "rebuild", False),
            start=_flag(args, "start", True),
            disk_from=_disk_from(args),
            keep_disk_from=_flag(args, "keep_disk_from", False),
            define=_flag(args, "define", True),
            volumes=_volumes(args),
            root_volume=_root_volume(args),
        )

    @property
    def lock_key(self) -> str:
        return self.instance.uuid


@dataclass(frozen=True)
class DeleteSpec:
    """One instance by UUID: what delete, and a resize's stash and drop, act on."""

    uuid: str

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> DeleteSpec:
        return cls(uuid=uuid(args, "uuid", "delete: "))

    @property
    def lock_key(self) -> str:
        return self.uuid


@dataclass(frozen=True)
class LiveMigrateSpec:
    """Move a running domain to the libvirtd reached through ``socket`` (a tunnel the
    orchestrator holds open), streaming to the destination's ``address``."""

    uuid: str
    socket: str
    address: str
    timeout: int
    port: int  # QEMU's memory stream, and the NBD server's for the disk: the ports
    disks_port: int  # the orchestrator checked the source can reach (agent/reach.py)

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> LiveMigrateSpec:
        where = "live_migrate: "
        socket = check_socket(args.get("socket"), where)
        address = args.get("address")
        try:
            check_address(address)
        except ValueError as exc:
            raise BadRequest(f"{where}address {exc}") from None
        return cls(
            uuid=uuid(args, "uuid", where),
            socket=socket,
            address=address,
            timeout=integer(args, "timeout", where, *MIGRATION_TIMEOUT),
            port=integer(args, "port", where, *TCP_PORT),
            disks_port=integer(args, "disks_port", where, *TCP_PORT),
        )

    @property
    def lock_key(self) -> str:
        return self.uuid
