"""A thin virsh wrapper: every call is an argv list with a timeout.

virsh rather than the libvirt Python binding because the agent must run on the host's
bare Python with nothing installed; virsh ships with every libvirt. A hung libvirtd
must not hang the agent, hence the timeout on every call.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from agent import proc
from agent.errors import LibvirtError

log = logging.getLogger(__name__)

HERD_NS = "http://herd.local/xmlns/instance/1"
DOMAIN_PREFIX = "herd-"

QUERY_TIMEOUT = 30.0
DEFINE_TIMEOUT = 60.0
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
LIST_TIMEOUT = 60.0

# virsh prints these states (C locale); the protocol uses one word each.
_STATES = {
    "running": "running",
    "idle": "idle",
    "paused": "paused",
    "in shutdown": "shutdown",
    "shut off": "shutoff",
    "crashed": "crashed",
    "pmsuspended": "pmsuspended",
    "no state": "nostate",
    "blocked": "blocked",
}

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MARK = "@@herd-domain"
_SECTION_RE = re.compile(_MARK + r" (\S+) @@(.*?)(?=" + _MARK + r" |\Z)", re.DOTALL)
_LIST_CHUNK = 100  # domains per virsh batch: keeps the argv well below ARG_MAX
_UNSUPPORTED = ("unsupported flags", "doesn't support option", "not supported")


def host_port(address: str, port: int) -> str:
    """``ADDRESS:PORT`` as a URI carries it: a bare IPv6 address goes in brackets."""
    if ":" in address and not address.startswith("["):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def domain_name(uuid: str) -> str:
    return f"{DOMAIN_PREFIX}{uuid}"


def normalise_state(text: str) -> str:
    text = text.strip().lower()
    return _STATES.get(text, text.replace(" ", "-") or "unknown")


def fold_virsh(stderr: str) -> str:
    """virsh's stderr as one line: "error: A\\nerror: B" becomes "A: B"."""
    parts = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("error: "):
            line = line[len("error: ") :]
        if line:
            parts.append(line)
    return ": ".join(parts)


def _is_missing(err: LibvirtError) -> bool:
    text = str(err)
    return "failed to get domain" in text or "Domain not found" in text


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: str


@dataclass(frozen=True)
class DomainSummary:
    """One domain as ``list`` reports it."""

    uuid: str
    name: str
    state: str
    managed: bool
    instance_name: Optional[str]
    disks: Tuple[Tuple[str, str], ...] = ()  # (source file, dev): reconcile matches volumes

    def to_wire(self) -> dict:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "state": self.state,
            "managed": self.managed,
            "instance_name": self.instance_name,
            "disks": [{"file": file, "dev": dev} for file, dev in self.disks],
        }


class Virsh:
    """virsh bound to one libvirt URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def run(self, args: Sequence[str], timeout: float = QUERY_TIMEOUT) -> str:
        what = f"virsh {args[0]}"
        argv = ["virsh", "-q", "-c", self.uri, *args]
        return proc.run(argv, timeout, error=LibvirtError, what=what, fold=fold_virsh)

    def version(self) -> Dict[str, Optional[str]]:
        """The daemon's version; raises if virsh is missing or the daemon unreachable."""
        out = self.run(["version", "--daemon"])
        fields = dict(_colon_fields(out))
        return {
            "version": fields.get("Running against daemon"),
            "hypervisor": fields.get("Running hypervisor"),
        }

    def dominfo(self, uuid: str) -> Optional[DomainInfo]:
        """The domain with this UUID, or None when libvirt has no such domain."""
        try:
            out = self.run(["dominfo", uuid])
        except LibvirtError as err:
            if _is_missing(err):
                return None
            raise
        fields = dict(_colon_fields(out))
        return DomainInfo(
            uuid=fields.get("UUID", uuid),
            name=fields.get("Name", ""),
            state=normalise_state(fields.get("State", "")),
        )

    def define(self, xml_path: str) -> None:
        self.run(["define", xml_path], timeout=DEFINE_TIMEOUT)

    def start(self, name: str) -> None:
        self.run(["start", name], timeout=START_TIMEOUT)

    def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI); returns at once, the guest decides."""
        self.run(["shutdown", name, "--mode", "acpi"], timeout=STOP_TIMEOUT)

    def suspend(self, name: str) -> None:
        self.run(["suspend", name], timeout=STOP_TIMEOUT)

    def resume(self, name: str) -> None:
        self.run(["resume", name], timeout=STOP_TIMEOUT)

    def managed_save(self, name: str) -> None:
        """Save the guest's memory to disk and stop it; the next start restores it."""
        self.run(["managedsave", name], timeout=START_TIMEOUT)

    def has_managed_save(self, name: str) -> bool:
        out = self.run(["dominfo", name])
        return dict(_colon_fields(out)).get("Managed save", "no") == "yes"

    def destroy(self, name: str) -> bool:
        """Hard power-off; False when the domain was not running (not an error)."""
        try:
            self.run(["destroy", name], timeout=STOP_TIMEOUT)
        except LibvirtError as err:
            if "domain is not running" in str(err):
                return False
            raise
        return True

    def migrate_live(
        self, name: str, dest_uri: str, address: str, ports: Tuple[int, int], timeout: int
    ) -> None:
        """Peer-to-peer live migration with the disk copied as it runs.

        libvirt's own connection to the destination goes to ``dest_uri`` (herd tunnels
        it over its SSH connections, so hosts need no keys for each other); QEMU's
        memory stream and the disk's NBD stream go straight to ``address``, on the two
        ``ports`` herd checked this host reaches (agent/reach.py), not on ones libvirt
        would pick. Only vda is copied, and only its overlay (the base image is in the
        destination's cache already). After ``timeout`` seconds a guest that keeps
        dirtying memory is paused to finish.
        """
        memory, disks = (f"tcp://{host_port(address, port)}" for port in ports)
        argv = [
            "migrate", name, dest_uri, "--live", "--p2p", "--persistent",
            "--undefinesource", "--copy-storage-inc", "--migrate-disks", "vda",
            "--migrateuri", memory, "--disks-uri", disks, "--timeout", str(timeout),
        ]  # fmt: skip
        self.run(argv, timeout=timeout + START_TIMEOUT)

    def undefine(self, name: str) -> None:
        """Undefine with its managed save, snapshot metadata and NVRAM.

        Older libvirts or other drivers reject some flags; drop them one at a time
        rather than leave the domain defined.
        """
        flags = ["--managed-save", "--snapshots-metadata", "--nvram"]
        while True:
            try:
                self.run(["undefine", name, *flags], timeout=STOP_TIMEOUT)
                return
            except LibvirtError as err:
                if not flags or not any(s in str(err) for s in _UNSUPPORTED):
                    raise
                log.info("undefine %s: %s; retrying without %s", name, err, flags[-1])
                flags.pop()

    def list_domains(self, include_unmanaged: bool = False) -> List[DomainSummary]:
        """All domains, read with two virsh processes whatever their number.

        The UUIDs come from virsh itself, so splicing them into a virsh batch
        ("cmd ; cmd") carries no request data; we still re-check their form.
        """
        out = self.run(["list", "--all", "--uuid"], timeout=LIST_TIMEOUT)
        uuids = [u for u in (line.strip() for line in out.splitlines()) if _UUID_RE.fullmatch(u)]
        found: List[DomainSummary] = []
        for start in range(0, len(uuids), _LIST_CHUNK):
            found.extend(self._describe(uuids[start : start + _LIST_CHUNK]))
        if not include_unmanaged:
            found = [d for d in found if d.managed]
        return found

    def disk_files(self) -> Dict[str, DomainDisks]:
        """Every domain's file-backed disks, by UUID: those of its definition and, when it
        runs, of the live guest (they differ while a hot plug is half done). Three virsh
        processes per hundred domains, not two per domain."""
        out = self.run(["list", "--all", "--uuid"], timeout=LIST_TIMEOUT)
        uuids = [u for u in (line.strip() for line in out.splitlines()) if _UUID_RE.fullmatch(u)]
        found: Dict[str, DomainDisks] = {}
        for start in range(0, len(uuids), _LIST_CHUNK):
            chunk = uuids[start : start + _LIST_CHUNK]
            batch = " ; ".join(
                f"echo {_MARK} {u} @@ ; dumpxml {u} ; dumpxml {u} --inactive" for u in chunk
            )
            argv = ["virsh", "-q", "-c", self.uri, batch]
            outcome = proc.execute(argv, LIST_TIMEOUT, error=LibvirtError, what="virsh dumpxml")
            for match in _SECTION_RE.finditer(outcome.stdout):
                disks = _disks_in(match.group(2))
                if disks is not None:
                    found[match.group(1)] = disks
            for missing in (u for u in chunk if u not in found):
                # Gone since "list" is fine; any other reason it could not be read is
                # not "it has no disks": a caller deciding whether a file is free
                # must not be told yes.
                if self.dominfo(missing) is not None:
                    raise LibvirtError(f"could not read the disks of domain {missing}")
        return found

    def _describe(self, uuids: List[str]) -> List[DomainSummary]:
        batch = " ; ".join(f"echo {_MARK} {u} @@ ; domstate {u} ; dumpxml {u}" for u in uuids)
        argv = ["virsh", "-q", "-c", self.uri, batch]
        outcome = proc.execute(argv, LIST_TIMEOUT, error=LibvirtError, what="virsh dumpxml")
        if outcome.stderr.strip():
            # A domain that vanished since "list" fails alone; the rest are still good.
            log.info("virsh batch: %s", fold_virsh(outcome.stderr))
        return parse_batch(outcome.stdout)


def parse_batch(text: str) -> List[DomainSummary]:
    """Parse the output of the ``echo MARK uuid END ; domstate ; dumpxml`` batch.

    The end mark matters: under ``-q`` virsh's echo prints no newline.
    """
    result = []
    for match in _SECTION_RE.finditer(text):
        uuid, body = match.group(1), match.group(2)
        start, end = body.find("<domain"), body.rfind("</domain>")
        if start < 0 or end < 0:
            continue  # the domain vanished between "list" and the batch
        state = normalise_state(body[:start])
        summary = summarise(uuid, state, body[start : end + len("</domain>")])
        if summary is not None:
            result.append(summary)
    return result


@dataclass(frozen=True)
class DomainDisks:
    name: str
    files: Tuple[str, ...]  # source files of its disks, live and defined


def _disks_in(body: str) -> Optional[DomainDisks]:
    """The disks of the (live and inactive) domain documents in one batch section; None
    if the domain vanished before virsh read it."""
    name, files = None, set()
    for document in re.findall(r"<domain.*?</domain>", body, re.DOTALL):
        try:
            root = ET.fromstring(document)
        except ET.ParseError:
            continue
        name = (root.findtext("name") or "").strip()
        for source in root.iterfind("devices/disk/source"):
            if source.get("file"):
                files.add(str(source.get("file")))
    return None if name is None else DomainDisks(name, tuple(sorted(files)))


def summarise(uuid: str, state: str, xml_text: str) -> Optional[DomainSummary]:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        log.warning("domain %s: unparsable XML from libvirt: %s", uuid, exc)
        return None
    meta = root.find(f"metadata/{{{HERD_NS}}}instance")
    instance_name = meta.findtext(f"{{{HERD_NS}}}name") if meta is not None else None
    return DomainSummary(
        uuid=(root.findtext("uuid") or uuid).strip(),
        name=(root.findtext("name") or "").strip(),
        state=state,
        managed=meta is not None,
        instance_name=instance_name,
        disks=tuple(_file_disks(root)),
    )


def _file_disks(root: ET.Element) -> List[Tuple[str, str]]:
    """(source file, target dev) of a domain document's file-backed disks."""
    found = []
    for disk in root.iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if source is not None and target is not None and source.get("file"):
            found.append((str(source.get("file")), str(target.get("dev"))))
    return found


def _colon_fields(text: str) -> List[tuple]:
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs
