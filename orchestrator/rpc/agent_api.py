"""The typed client of the agent: one coroutine per op of docs/protocol.md.

This is the one place in the orchestrator that names an agent op (Nova's
``compute/rpcapi.py`` has one method per remote call for the same reason): a caller
says what it wants done, with typed arguments, and gets the answer as a typed record.
A test holds it to the agent's own op table and to the protocol page, so an op added
to the agent is missed neither here nor in the docs.

Answers are the agent's JSON as it came (TypedDicts are plain dicts at run time): the
callers read what they need, and a fake pool in a test may answer with less. Only the
reachability check, whose answer is reasoned about field by field, becomes dataclasses.

A job op starts a durable job. Given ``job_id`` (already recorded in the DB, so that
`herd server wait` and `herd reconcile` find it if herd dies), it returns once the job
is journalled on the host and the caller follows it with ``job_wait``. Given
``timeout`` instead, it runs the job as one step of a longer workflow: started, waited
for, forgotten on the host, and a failure raised with the agent's own message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

from orchestrator import __version__
from orchestrator.rpc.ssh import HostTarget

if TYPE_CHECKING:  # the pool opens sessions, and a session says hello through here
    from orchestrator.rpc.pool import AgentPool

HELLO_TIMEOUT = 30.0
# qemu-img over a whole image, or a guest granting a hot-unplug, under TCG.
VOLUME_TIMEOUT = 120.0
# The agent's worst case: snapshot 600 s, convert 1800 s, merge 600 s, then hashing.
RESCUE_TIMEOUT = 300.0  # a qemu-img overlay, a define, a start
SNAPSHOT_TIMEOUT = 3600.0


# -- answers of calls ---------------------------------------------------------------


class Libvirt(TypedDict, total=False):
    ok: bool
    uri: str
    version: str | None
    error: str | None
    hypervisor: str | None


class Facts(TypedDict, total=False):
    """What a host is, as its agent read it (see "facts" in docs/protocol.md)."""

    hostname: str
    arch: str
    kernel: str
    python: str
    cpus: int
    memory_mb: int
    disk_gb: int
    disk_free_gb: int
    boot_id: str | None
    libvirt: Libvirt
    domain_type: Literal["kvm", "qemu"] | None
    kvm: dict[str, Any]
    tools: dict[str, bool]
    state_dir: str


class Hello(TypedDict):
    agent_version: str
    protocol: int
    capabilities: list[str]
    facts: Facts


class Domain(TypedDict):
    uuid: str
    name: str
    state: str  # one word: running, shutoff, paused, ...
    managed: bool
    instance_name: str | None


class Domains(TypedDict):
    domains: list[Domain]


class ImageStatus(TypedDict):
    present: bool
    path: str
    size: int | None


class CachedFile(TypedDict):
    path: str
    size: int


class Fetched(TypedDict):
    sha256: str
    path: str
    size: int


class CachedImage(TypedDict):
    sha256: str
    size: int
    last_used: float
    instances: list[str]


class Unreadable(TypedDict, total=False):
    """A file the agent skipped instead of failing the whole answer."""

    job_id: str
    file: str
    error: str


class ImageList(TypedDict):
    images: list[CachedImage]
    unreadable: list[Unreadable]


class Removed(TypedDict):
    removed: bool


class ConsoleTail(TypedDict):
    lines: list[str]
    size: int
    truncated: bool


class DomainState(TypedDict):
    state: str


class JobError(TypedDict):
    type: str
    message: str


class JobRecord(TypedDict):
    job_id: str
    op: str
    state: Literal["running", "succeeded", "failed", "lost"]
    result: dict[str, Any] | None
    error: JobError | None
    started_at: float
    finished_at: float | None


class JobList(TypedDict):
    jobs: list[JobRecord]
    unreadable: list[Unreadable]


# -- arguments and results of jobs --------------------------------------------------

BuildArgs = Mapping[str, Any]  # made by guest_config.build_args; docs/protocol.md lists it


class PowerArgs(TypedDict):
    uuid: str
    action: str  # start, stop, reboot, hard_reboot, pause, unpause, suspend, resume
    timeout: int  # seconds a guest gets to shut down before it is forced


class LiveMigrateArgs(TypedDict):
    uuid: str
    socket: str  # <state_dir>/migrate-<hex>.sock: the tunnel to the destination's libvirtd
    address: str
    timeout: int
    port: int
    disks_port: int


class Built(TypedDict, total=False):
    domain: str
    state: str  # "prepared" for an incoming live migration
    disk_path: str


class Existed(TypedDict):
    existed: bool


class Powered(TypedDict, total=False):
    state: str
    forced: bool
    managed_save: bool


class Stashed(TypedDict):
    disk: str


class Migrated(TypedDict):
    state: str


# -- the reachability check ---------------------------------------------------------


class VolumeArgs(TypedDict, total=False):
    volume: str  # the volume's UUID: its file's name
    dir: str  # the host's volume directory (absent: agent_dir/volumes)
    format: str
    size_gb: int
    image_sha256: str
    image_format: str
    uuid: str  # the server, to attach to or detach from
    device: str
    snapshot: str  # a snapshot's UUID: its file's name


class SnapshotFile(TypedDict, total=False):
    path: str
    size: int
    live: bool  # taken from a running guest


class VolumeFile(TypedDict):
    path: str
    size_bytes: int
    allocated_bytes: int
    existed: bool


class Snapshot(TypedDict):
    sha256: str
    size: int
    live: bool  # taken from a running guest


class VolumeFiles(TypedDict):
    dir: str
    volumes: list[dict[str, Any]]  # {"uuid", "format", "bytes"}


class Rescued(TypedDict, total=False):
    state: str
    root_device: str  # where the server's own disk is in the rescue domain
    unrescued: bool


class Attached(TypedDict, total=False):
    device: str
    live: bool
    detached: bool


@dataclass(frozen=True)
class Listening:
    """Listeners a destination opened for one probe: where, and the token to send."""

    probe: str
    token: str
    ports: tuple[int, ...]
    port_range: tuple[int, int]


@dataclass(frozen=True)
class Knock:
    """One port as the source found it: ``error`` None when the destination answered."""

    port: int
    error: str | None


@dataclass(frozen=True)
class ReachCheck:
    libvirt: str | None  # None: the destination's libvirtd answered through the tunnel
    knocks: tuple[Knock, ...]


SessionCall = Callable[..., Awaitable[Any]]


class AgentAPI:
    """Every agent op, over the pool's sessions (one per host, reopened when broken)."""

    def __init__(self, pool: AgentPool) -> None:
        self.pool = pool

    async def _call(
        self, target: HostTarget, op: str, args: dict[str, Any], timeout: float | None
    ) -> Any:
        # Without a timeout, the pool's own default (30 s) applies.
        if timeout is None:
            return await self.pool.call(target, op, args)
        return await self.pool.call(target, op, args, timeout=timeout)

    # -- calls ----------------------------------------------------------------------

    @staticmethod
    async def hello(call: SessionCall, target: HostTarget) -> Hello:
        """The first request of a session, configuring it from the inventory; sent by
        the session itself as it opens (through the pool it would open another)."""
        args = {
            "orchestrator_version": __version__,
            "state_dir": target.agent_dir,
            "libvirt_uri": target.libvirt_uri,
            "domain_type": target.domain_type,
            "image_source_dirs": list(target.image_source_dirs),
            "max_image_bytes": target.max_image_gb << 30,
        }
        hello: Hello = await call("hello", args, timeout=HELLO_TIMEOUT)
        return hello

    async def ping(self, target: HostTarget) -> None:
        """Whether the host answers at all; touches nothing there."""
        await self._call(target, "ping", {}, None)

    async def facts(self, target: HostTarget) -> Facts:
        """The host's facts read afresh (the session's hello holds those of its start)."""
        facts: Facts = await self._call(target, "facts", {}, None)
        return facts

    async def list_domains(self, target: HostTarget) -> Domains:
        """The host's herd domains (op ``list``), with their states."""
        domains: Domains = await self._call(target, "list", {}, None)
        return domains

    async def image_status(self, target: HostTarget, sha256: str) -> ImageStatus:
        status: ImageStatus = await self._call(target, "image_status", {"sha256": sha256}, None)
        return status

    async def image_commit(
        self, target: HostTarget, sha256: str, upload: str, fmt: str, *, timeout: float
    ) -> CachedFile:
        """Move an uploaded file into the cache once the host has checked its digest
        and inspected it as ``fmt``."""
        args = {"sha256": sha256, "upload": upload, "format": fmt}
        committed: CachedFile = await self._call(target, "image_commit", args, timeout)
        return committed

    async def image_fetch(
        self, target: HostTarget, source: str, sha256: str | None, fmt: str, *, timeout: float
    ) -> Fetched:
        """The host downloads (or copies from one of its own paths) an image into its
        cache; without ``sha256``, the digest of what arrived comes back."""
        args = {"source": source, "sha256": sha256, "format": fmt}
        fetched: Fetched = await self._call(target, "image_fetch", args, timeout)
        return fetched

    async def image_list(self, target: HostTarget, *, timeout: float | None = None) -> ImageList:
        images: ImageList = await self._call(target, "image_list", {}, timeout)
        return images

    async def image_remove(self, target: HostTarget, sha256: str) -> Removed:
        """Refused by the host while an instance there uses the image."""
        removed: Removed = await self._call(target, "image_remove", {"sha256": sha256}, None)
        return removed

    async def console_log(
        self, target: HostTarget, uuid: str, lines: int, *, timeout: float | None = None
    ) -> ConsoleTail:
        args = {"uuid": uuid, "lines": lines}
        tail: ConsoleTail = await self._call(target, "console_log", args, timeout)
        return tail

    async def domain_power(
        self, target: HostTarget, uuid: str, action: Literal["start", "stop"], *,
        timeout: float | None = None,
    ) -> DomainState:  # fmt: skip
        """Start a shut-off domain or hard-stop a running one, at once and without a
        job: for putting a guest back, and for reconcile."""
        args = {"uuid": uuid, "action": action}
        state: DomainState = await self._call(target, "domain_power", args, timeout)
        return state

    async def job_start(
        self, target: HostTarget, op: str, args: Mapping[str, Any], job_id: str
    ) -> None:
        """Journal and start a job on the host; idempotent by ``job_id``. The job ops
        below are the way to call it: ``op`` is one of theirs."""
        await self.pool.cast(target, op, dict(args), job_id)

    async def job_status(self, target: HostTarget, job_id: str) -> JobRecord:
        record: JobRecord = await self._call(target, "job_status", {"job_id": job_id}, None)
        return record

    async def job_wait(self, target: HostTarget, job_id: str, timeout: float) -> JobRecord:
        """The job's record once it finished, long-polling ``job_wait``: the job
        survives a dropped connection, so a broken session is simply reopened."""
        record: JobRecord = await self.pool.follow(target, job_id, timeout)
        return record

    async def jobs(self, target: HostTarget) -> JobList:
        listed: JobList = await self._call(target, "jobs", {}, None)
        return listed

    async def job_forget(
        self, target: HostTarget, job_id: str, *, timeout: float | None = None
    ) -> None:
        """The result is recorded in the DB: the host may drop its journal entry."""
        await self._call(target, "job_forget", {"job_id": job_id}, timeout)

    async def reach_listen(
        self, target: HostTarget, address: str, count: int, hold: int
    ) -> Listening:
        """On a live migration's destination: listen on free migration ports."""
        args = {"address": address, "count": count, "hold": hold}
        answer = await self._call(target, "reach_listen", args, None)
        low, high = answer["range"]
        return Listening(answer["probe"], answer["token"], tuple(answer["ports"]), (low, high))

    async def reach_check(
        self,
        target: HostTarget,
        *,
        socket: str,
        address: str,
        listening: Listening,
        timeout: float,
        call_timeout: float,
    ) -> ReachCheck:
        """On the source: ask the destination's libvirtd through the tunnel at
        ``socket``, and knock on every listening port with the probe's token."""
        args: dict[str, object] = {
            "socket": socket,
            "address": address,
            "ports": list(listening.ports),
            "token": listening.token,
            "timeout": timeout,
        }
        answer = await self._call(target, "reach_check", args, call_timeout)
        knocks = tuple(Knock(k["port"], k["error"]) for k in answer["ports"])
        return ReachCheck(answer["libvirt"], knocks)

    async def reach_close(self, target: HostTarget, probe: str) -> frozenset[int]:
        """Close the probe's listeners; the ports whose token the destination heard."""
        answer = await self._call(target, "reach_close", {"probe": probe}, None)
        return frozenset(answer["heard"])

    # -- jobs -----------------------------------------------------------------------

    async def _job(
        self,
        target: HostTarget,
        op: str,
        args: Mapping[str, Any],
        job_id: str | None,
        timeout: float | None,
    ) -> Any:
        if job_id is not None:
            await self.job_start(target, op, args, job_id)
            return None
        if timeout is None:
            raise TypeError(f"{op}: give job_id (start it) or timeout (run it to the end)")
        return await self.pool.run(target, op, dict(args), timeout)

    @overload
    async def build(self, target: HostTarget, args: BuildArgs, *, job_id: str) -> None: ...
    @overload
    async def build(self, target: HostTarget, args: BuildArgs, *, timeout: float) -> Built: ...
    async def build(
        self,
        target: HostTarget,
        args: BuildArgs,
        *,
        job_id: str | None = None,
        timeout: float | None = None,
    ) -> Built | None:
        """Define and start a server (or, with ``rebuild``/``disk_from``/``define``,
        rebuild it, move its disk in, prepare an incoming live migration)."""
        built: Built | None = await self._job(target, "build", args, job_id, timeout)
        return built

    @overload
    async def delete(self, target: HostTarget, uuid: str, *, job_id: str) -> None: ...
    @overload
    async def delete(self, target: HostTarget, uuid: str, *, timeout: float) -> Existed: ...
    async def delete(
        self,
        target: HostTarget,
        uuid: str,
        *,
        job_id: str | None = None,
        timeout: float | None = None,
    ) -> Existed | None:
        """Remove the server's domain and files from the host; nothing there is fine."""
        deleted: Existed | None = await self._job(target, "delete", {"uuid": uuid}, job_id, timeout)
        return deleted

    @overload
    async def power(self, target: HostTarget, args: PowerArgs, *, job_id: str) -> None: ...
    @overload
    async def power(self, target: HostTarget, args: PowerArgs, *, timeout: float) -> Powered: ...
    async def power(
        self,
        target: HostTarget,
        args: PowerArgs,
        *,
        job_id: str | None = None,
        timeout: float | None = None,
    ) -> Powered | None:
        """A guest's power action, ACPI first for a stop or reboot (``args.timeout``
        bounds that on the host; ``timeout`` bounds the whole job here)."""
        powered: Powered | None = await self._job(target, "power", args, job_id, timeout)
        return powered

    async def resize_stash(self, target: HostTarget, uuid: str, *, timeout: float) -> Stashed:
        """Undefine the server and keep its directory as ``<uuid>.resize`` until the
        resize is confirmed or reverted; its disk's path comes back."""
        stashed: Stashed = await self._job(target, "resize_stash", {"uuid": uuid}, None, timeout)
        return stashed

    async def resize_drop(self, target: HostTarget, uuid: str, *, timeout: float) -> Existed:
        """Remove a resize's kept ``<uuid>.resize`` directory."""
        dropped: Existed = await self._job(target, "resize_drop", {"uuid": uuid}, None, timeout)
        return dropped

    async def live_migrate(
        self, target: HostTarget, args: LiveMigrateArgs, *, timeout: float
    ) -> Migrated:
        """On the source: move the running guest to the prepared destination."""
        migrated: Migrated = await self._job(target, "live_migrate", args, None, timeout)
        return migrated

    # -- volumes (agent/volumes.py): direct calls, each idempotent by the volume's UUID --

    async def volume_create(self, target: HostTarget, args: VolumeArgs) -> VolumeFile:
        """Make the volume's file (blank, or from a cached image): ``existed`` when a
        repeated call found it made."""
        made: VolumeFile = await self._call(target, "volume_create", dict(args), VOLUME_TIMEOUT)
        return made

    async def volume_extend(self, target: HostTarget, args: VolumeArgs) -> VolumeFile:
        grown: VolumeFile = await self._call(target, "volume_extend", dict(args), VOLUME_TIMEOUT)
        return grown

    async def volume_delete(self, target: HostTarget, args: VolumeArgs) -> Removed:
        """Refused by the host while one of its domains still has the file as a disk."""
        removed: Removed = await self._call(target, "volume_delete", dict(args), VOLUME_TIMEOUT)
        return removed

    async def volume_adopt(self, target: HostTarget, args: VolumeArgs) -> VolumeFile:
        """The file a move uploaded to the incoming directory, taken into the volume
        directory (checked a plain image of its format)."""
        adopted: VolumeFile = await self._call(target, "volume_adopt", dict(args), VOLUME_TIMEOUT)
        return adopted

    async def image_snapshot(self, target: HostTarget, uuid: str) -> Snapshot:
        """The server's root disk flattened into a new image in the host's cache; a
        running one's through a disk-only snapshot, so it runs on (crash-consistent)."""
        made: Snapshot = await self._call(
            target, "image_snapshot", {"uuid": uuid}, SNAPSHOT_TIMEOUT
        )
        return made

    async def image_snapshot_settle(self, target: HostTarget, uuid: str) -> dict[str, Any]:
        """Merge back a snapshot overlay a dead call left the guest running on."""
        return await self._call(target, "image_snapshot_settle", {"uuid": uuid}, SNAPSHOT_TIMEOUT)

    async def volume_list(self, target: HostTarget, directory: str | None) -> VolumeFiles:
        args = {} if directory is None else {"dir": directory}
        found: VolumeFiles = await self._call(target, "volume_list", args, None)
        return found

    async def volume_attach(self, target: HostTarget, args: VolumeArgs) -> Attached:
        """The volume as ``device`` of the server: in its definition, and hot-plugged
        when it runs."""
        attached: Attached = await self._call(target, "volume_attach", dict(args), VOLUME_TIMEOUT)
        return attached

    async def volume_detach(self, target: HostTarget, args: VolumeArgs) -> Attached:
        """Out of the definition and of the running guest, once the guest released it."""
        detached: Attached = await self._call(
            target, "volume_detach", dict(args), VOLUME_TIMEOUT + 30
        )
        return detached

    async def rescue(self, target: HostTarget, args: dict[str, Any]) -> Rescued:
        """Boot the server from a fresh disk of the rescue image, its own disk second."""
        done: Rescued = await self._call(target, "rescue", args, RESCUE_TIMEOUT)
        return done

    async def unrescue(self, target: HostTarget, uuid: str, *, start: bool = True) -> Rescued:
        """Its own definition back (nothing kept: it has it already), started unless
        ``start`` is false."""
        args = {"uuid": uuid, "start": start}
        done: Rescued = await self._call(target, "unrescue", args, RESCUE_TIMEOUT)
        return done

    async def volume_snapshot_create(self, target: HostTarget, args: VolumeArgs) -> SnapshotFile:
        """A flattened copy of the volume beside it; a running guest's taken while it runs
        (``uuid``: the server it is attached to)."""
        made: SnapshotFile = await self._call(
            target, "volume_snapshot_create", dict(args), SNAPSHOT_TIMEOUT
        )
        return made

    async def volume_snapshot_delete(self, target: HostTarget, args: VolumeArgs) -> Removed:
        removed: Removed = await self._call(
            target, "volume_snapshot_delete", dict(args), VOLUME_TIMEOUT
        )
        return removed

    async def volume_snapshot_revert(self, target: HostTarget, args: VolumeArgs) -> SnapshotFile:
        """The volume's file replaced by the snapshot's copy (refused while attached)."""
        done: SnapshotFile = await self._call(
            target, "volume_snapshot_revert", dict(args), SNAPSHOT_TIMEOUT
        )
        return done
