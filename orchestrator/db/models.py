"""The orchestrator's state, as SQLModel tables.

Only the orchestrator writes these rows; agents report, the conductor records. Each
table mirrors a Nova concept (compute node, flavor, image, instance, allocation,
instance action/event, instance fault) so operators and readers find familiar shapes.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(nullable: bool = True, **kw: Any) -> Any:
    """A timezone-aware timestamp column (SQLite drops the zone; we always store UTC)."""
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable, **kw))


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class VmState(enum.StrEnum):
    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    RESIZED = "resized"  # running on the new size, the old disk kept until confirmed
    # Shelved: its disk an image in its old host's cache, no host, domain or claim; its
    # ports (addresses) kept for the unshelve (Nova's SHELVED_OFFLOADED).
    SHELVED_OFFLOADED = "shelved_offloaded"
    RESCUED = "rescued"  # booted from a rescue image, its own disk attached second
    ERROR = "error"
    DELETED = "deleted"


class TaskState(enum.StrEnum):
    SCHEDULING = "scheduling"
    BLOCK_DEVICE_MAPPING = "block_device_mapping"
    NETWORKING = "networking"
    SPAWNING = "spawning"
    POWERING_ON = "powering-on"
    POWERING_OFF = "powering-off"
    REBOOTING = "rebooting"
    RESIZING = "resizing"
    MIGRATING = "migrating"
    DELETING = "deleting"


class PowerState(enum.StrEnum):
    """As last seen on the host (libvirt's domain states, simplified like Nova's)."""

    NOSTATE = "nostate"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    SUSPENDED = "suspended"


# libvirt's domain state (as the agent words it) -> the power state herd records.
POWER_OF: dict[str, PowerState] = {
    "running": PowerState.RUNNING,
    "idle": PowerState.RUNNING,
    "blocked": PowerState.RUNNING,
    "paused": PowerState.PAUSED,
    "shutoff": PowerState.SHUTDOWN,
    "shutdown": PowerState.SHUTDOWN,
    "crashed": PowerState.CRASHED,
    "pmsuspended": PowerState.SUSPENDED,
}


class JobState(enum.StrEnum):
    PENDING = "pending"  # recorded, not yet acknowledged by the agent
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"


class Host(SQLModel, table=True):
    """A hypervisor: how to reach it (inventory) and what it has (agent facts)."""

    __tablename__ = "hosts"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(63), unique=True, nullable=False))
    address: str
    # None: not in the inventory, so the OpenSSH client config decides (then 22, root).
    ssh_port: int | None = None
    ssh_user: str | None = None
    ssh_key: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    ssh_proxy_jump: str | None = None
    libvirt_uri: str = "qemu:///system"
    agent_dir: str = "/var/lib/herd"
    labels: dict[str, str] = _json()
    availability_zone: str = "default"
    domain_type_pref: str = "auto"
    # Where the agent may read host:// images ([]: nowhere), and the largest image
    # it takes from any source.
    image_source_dirs: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    max_image_gb: int = Field(default=64, sa_column_kwargs={"server_default": "64"})
    # Where the host keeps volumes (the inventory's storage.path); None: agent_dir/volumes.
    volume_dir: str | None = None

    # Capacity overrides from the inventory; None means "what the host reports".
    override_vcpus: int | None = None
    override_ram_mb: int | None = None
    override_disk_gb: int | None = None
    cpu_ratio: float = 16.0
    ram_ratio: float = 1.5
    disk_ratio: float = 1.0
    reserved_vcpus: int = 0
    reserved_ram_mb: int = 512
    reserved_disk_gb: int = 0

    enabled: bool = True
    disabled_reason: str | None = None

    # What the agent reported at the last handshake.
    facts: dict[str, Any] = _json()
    vcpus: int | None = None
    ram_mb: int | None = None
    disk_gb: int | None = None
    domain_type: str | None = None
    libvirt_ok: bool | None = None
    libvirt_error: str | None = None
    agent_version: str | None = None
    last_seen_at: datetime | None = _ts()
    last_error: str | None = None

    # Consecutive failed builds, reset by a success: the build-failure weigher sinks
    # a host that keeps failing (a broken libvirt) below the healthy ones.
    failed_builds: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )

    # Reconcile's heartbeat: surveys missed in a row; at `reconcile.down_after` the
    # host is marked down (and stays so until it answers a survey again).
    missed_surveys: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    marked_down: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    # Placement's resource-provider generation: every claim bumps it, and a claim
    # made against a stale view of the host fails and is retried.
    generation: int = 0
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()

    @property
    def status(self) -> str:
        """disabled | unknown (never contacted) | down | no-libvirt | up, as last seen."""
        return host_status(
            self.enabled, self.marked_down, self.last_seen_at, self.last_error, self.libvirt_ok
        )

    @property
    def total_vcpus(self) -> int | None:
        return self.override_vcpus if self.override_vcpus is not None else self.vcpus

    @property
    def total_ram_mb(self) -> int | None:
        return self.override_ram_mb if self.override_ram_mb is not None else self.ram_mb

    @property
    def total_disk_gb(self) -> int | None:
        return self.override_disk_gb if self.override_disk_gb is not None else self.disk_gb


def host_status(
    enabled: bool,
    marked_down: bool,
    last_seen_at: datetime | None,
    last_error: str | None,
    libvirt_ok: bool | None,
) -> str:
    """``Host.status`` from the columns alone, so the scheduler's loader can read plain
    rows for 10,000 hosts instead of hydrating ORM objects."""
    if not enabled:
        return "disabled"
    if marked_down:
        return "down"
    if last_seen_at is None:
        return "unknown" if last_error is None else "down"
    if last_error:
        return "down"
    if libvirt_ok is False:
        return "no-libvirt"
    return "up"


class Flavor(SQLModel, table=True):
    __tablename__ = "flavors"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    vcpus: int
    ram_mb: int
    disk_gb: int
    extra_specs: dict[str, str] = _json()
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class Image(SQLModel, table=True):
    __tablename__ = "images"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    source: str
    format: str = "qcow2"
    sha256: str | None = None
    size: int | None = None
    min_ram_mb: int = 0
    min_disk_gb: int = 0
    properties: dict[str, str] = _json()
    # "inventory": `herd inventory apply` owns it (and removes it when it leaves the
    # files); "cli": made by `herd image create`, which the inventory leaves alone.
    managed_by: str = Field(default="inventory", sa_column_kwargs={"server_default": "inventory"})
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class KeyPair(SQLModel, table=True):
    """An SSH public key, given to guests through cloud-init (Nova's keypair)."""

    __tablename__ = "key_pairs"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    public_key: str = Field(sa_column=Column(Text, nullable=False))
    fingerprint: str
    type: str = "ssh"
    created_at: datetime | None = _ts()


class Network(SQLModel, table=True):
    """Where instances' NICs attach: a host bridge, a libvirt network, or user-mode.

    With a subnet, herd hands out fixed IPs from the pool itself (Neutron's fixed IPs)
    and tells the guest through network-config; without one the network's own DHCP,
    if any, is the guest's business.
    """

    __tablename__ = "networks"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    kind: str  # bridge | network | user
    source: str | None = None  # the bridge or libvirt network name
    cidr: str | None = None
    gateway: str | None = None
    pool_start: str | None = None
    pool_end: str | None = None
    dns: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    is_default: bool = False
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class Port(SQLModel, table=True):
    """One NIC of one instance: its MAC and, on a network with a subnet, its fixed IP.

    The unique constraints are the guarantee: two live ports never share a MAC, and
    never share an IP on one network, whatever runs concurrently.
    """

    __tablename__ = "ports"
    __table_args__ = (UniqueConstraint("network_id", "ip", name="uq_ports_network_ip"),)

    id: int | None = Field(default=None, primary_key=True)
    instance_uuid: str = Field(index=True)
    network_id: int = Field(
        sa_column=Column(Integer, ForeignKey("networks.id", ondelete="RESTRICT"), nullable=False)
    )
    device_index: int = 0
    mac: str = Field(sa_column=Column(String(17), unique=True, nullable=False))
    ip: str | None = None
    created_at: datetime | None = _ts()


class ServerGroup(SQLModel, table=True):
    """Nova's server group: members are placed together or apart by its policy."""

    __tablename__ = "server_groups"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    policy: str
    created_at: datetime | None = _ts()


# The predicate of the partial unique index on live server names (migration 0010).
LIVE_INSTANCE = "vm_state != 'deleted'"


class Instance(SQLModel, table=True):
    """A server. Flavor and image are copied in, as Nova embeds the flavor, so that
    editing or removing a flavor never changes what a running server is.

    A name is unique among live servers (not deleted): the partial unique index, not
    the check in `server create`, is what holds when two operators pick one name at
    once. A deleted server keeps its name, so a name may be reused after a delete."""

    __tablename__ = "instances"
    __table_args__ = (
        Index(
            "uq_instances_live_name",
            "name",
            unique=True,
            sqlite_where=text(LIVE_INSTANCE),
            postgresql_where=text(LIVE_INSTANCE),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(sa_column=Column(String(36), unique=True, nullable=False))
    name: str = Field(index=True)
    flavor_name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_name: str
    image_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("images.id", ondelete="SET NULL"), nullable=True),
    )
    host_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="RESTRICT"), nullable=True),
    )
    group_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("server_groups.id", ondelete="RESTRICT"), nullable=True
        ),
    )
    # What the scheduler needs to place the instance again (a reschedule, later a
    # migration): Nova's RequestSpec — extra specs, image properties, zone, hints.
    request_spec: dict[str, Any] = _json()
    # What the guest is told through its NoCloud seed (Nova keeps the same on the
    # instance, so a rebuild or evacuation delivers it again unchanged).
    hostname: str | None = None
    key_name: str | None = None
    key_data: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    user_data: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    vm_state: str = VmState.BUILDING
    task_state: str | None = TaskState.SCHEDULING
    # The instance action that holds the task: only it moves the task on or ends it
    # (Nova's expected_task_state, by owner rather than by name, since two actions one
    # after the other take the same task_state). Reconcile alone clears another's.
    task_action_id: int | None = None
    power_state: str = PowerState.NOSTATE
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()
    launched_at: datetime | None = _ts()
    deleted_at: datetime | None = _ts()


class Allocation(SQLModel, table=True):
    """Resources an instance holds on a host; written in the claim's transaction."""

    __tablename__ = "allocations"

    id: int | None = Field(default=None, primary_key=True)
    instance_uuid: str = Field(sa_column=Column(String(36), unique=True, nullable=False))
    host_id: int = Field(
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="RESTRICT"), nullable=False)
    )
    vcpus: int
    ram_mb: int
    disk_gb: int
    created_at: datetime | None = _ts()


class MigrationStatus(enum.StrEnum):
    MIGRATING = "migrating"
    FINISHED = "finished"  # a resize waiting for --confirm or --revert
    CONFIRMED = "confirmed"
    COMPLETED = "completed"  # a live migration
    REVERTED = "reverted"
    ERROR = "error"
    DELETED = "deleted"  # the server was deleted while the resize waited


OPEN_MIGRATIONS = (MigrationStatus.MIGRATING, MigrationStatus.FINISHED)


class Migration(SQLModel, table=True):
    """One move of a server between sizes or hosts (Nova's migrations table).

    Its ``uuid`` is also the consumer of the source's claim while the move is open,
    as Nova's migration-based allocations are: the old size stays held on the source
    until a resize is confirmed (or is given back to the server on revert), so the
    scheduler never hands out room the server may still return to.
    """

    __tablename__ = "migrations"

    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(sa_column=Column(String(36), unique=True, nullable=False))
    instance_uuid: str = Field(index=True)
    kind: str = "resize"
    status: str = MigrationStatus.MIGRATING
    source_host_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
    )
    dest_host_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
    )
    old_flavor: dict[str, Any] = _json()
    new_flavor: dict[str, Any] = _json()
    old_vm_state: str = VmState.ACTIVE
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class InstanceAction(SQLModel, table=True):
    __tablename__ = "instance_actions"

    id: int | None = Field(default=None, primary_key=True)
    instance_uuid: str = Field(index=True)
    action: str
    request_id: str
    message: str | None = None
    start_time: datetime | None = _ts()
    finish_time: datetime | None = _ts()


class InstanceActionEvent(SQLModel, table=True):
    __tablename__ = "instance_action_events"

    id: int | None = Field(default=None, primary_key=True)
    action_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("instance_actions.id", ondelete="CASCADE"), nullable=False
        )
    )
    event: str
    host: str | None = None
    result: str | None = None  # "success" | "error"; None while running
    details: str | None = None
    start_time: datetime | None = _ts()
    finish_time: datetime | None = _ts()


class InstanceFault(SQLModel, table=True):
    __tablename__ = "instance_faults"

    id: int | None = Field(default=None, primary_key=True)
    instance_uuid: str = Field(index=True)
    code: int = 500
    message: str
    details: str | None = None
    host: str | None = None
    created_at: datetime | None = _ts()


class AgentJob(SQLModel, table=True):
    """A durable job cast to an agent. Recorded before the cast, so that whoever runs
    next (a later command, reconcile) can collect a result the caster never saw."""

    __tablename__ = "agent_jobs"

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    host_id: int = Field(
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False)
    )
    instance_uuid: str | None = Field(default=None, index=True)
    action_id: int | None = None
    op: str
    state: str = JobState.PENDING
    result: dict[str, Any] = _json()
    error: str | None = None
    created_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    collected_at: datetime | None = _ts()


class TaskRecordState(enum.StrEnum):
    RUNNING = "running"
    RECOVERING = "recovering"  # another process took it over and is finishing or undoing it
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


OPEN_TASK_STATES = (TaskRecordState.RUNNING, TaskRecordState.RECOVERING)


class TaskRecord(SQLModel, table=True):
    """One multi-step task (a move, a rebuild...) as its journal: where it stands, and who
    runs it.

    The step is written, with the inputs it needs, *before* the step's side effect, so
    whoever finds the task abandoned (its runner gone, see ``conductor.journal``) knows
    exactly where it stopped and which rule finishes or undoes it. ``generation`` is
    bumped by every write: a write made against a stale view (the runner, after a
    recovery took the task over) matches no row and fails.
    """

    __tablename__ = "tasks"

    id: int | None = Field(default=None, primary_key=True)
    kind: str
    instance_uuid: str = Field(index=True)
    action_id: int | None = None
    migration_uuid: str | None = None
    source_host_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
    )
    dest_host_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True),
    )
    step: str
    inputs: dict[str, Any] = _json()
    claims: dict[str, Any] = _json()
    state: str = TaskRecordState.RUNNING
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Who runs it: a pid alone is reused, so also the boot and the process's start time.
    runner_host: str
    runner_pid: int
    runner_boot_id: str
    runner_started: int = Field(sa_column=Column(BigInteger, nullable=False))
    heartbeat_at: datetime | None = _ts()
    generation: int = 0
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class VolumeStatus(enum.StrEnum):
    """Cinder's volume states, less the ones herd has no use for yet."""

    CREATING = "creating"
    AVAILABLE = "available"
    ATTACHING = "attaching"
    IN_USE = "in-use"
    DETACHING = "detaching"
    EXTENDING = "extending"
    REVERTING = "reverting"  # its file replaced by a snapshot's copy
    DELETING = "deleting"
    ERROR = "error"


class Volume(SQLModel, table=True):
    """A data disk on one host's own storage: a file named by its UUID in the host's
    volume directory, which outlives the servers it is attached to.

    Its space is claimed like a server's (an ``allocations`` row whose consumer is the
    volume's UUID, disk only), so the scheduler counts it against the host's disk and
    two creates racing for the last room cannot both win. ``status`` is written before
    each step's side effect, with ``task_owner`` naming the command that runs it."""

    __tablename__ = "volumes"

    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(sa_column=Column(String(36), unique=True, nullable=False))
    name: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    host_id: int = Field(
        sa_column=Column(Integer, ForeignKey("hosts.id", ondelete="RESTRICT"), nullable=False)
    )
    size_gb: int
    format: str = "qcow2"
    image_name: str | None = None
    status: str = VolumeStatus.CREATING
    # The server it is attached to, and as which disk.
    instance_uuid: str | None = Field(default=None, index=True)
    device: str | None = None
    # Where the file is on its host, as the agent reported it.
    path: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    task_owner: str | None = None
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()


class SnapshotStatus(enum.StrEnum):
    """Cinder's snapshot states herd uses."""

    CREATING = "creating"
    AVAILABLE = "available"
    DELETING = "deleting"
    ERROR = "error"


class VolumeSnapshot(SQLModel, table=True):
    """A volume as it was at one moment: a flattened qcow2 copy beside the volume on its
    host's storage (``<volume_dir>/<volume uuid>.snapshots/<uuid>.qcow2``), which a
    revert copies back over the volume.

    A full copy rather than a qcow2 internal snapshot: it works for raw volumes too, is
    taken from a running guest as `server image create` takes a root disk (a disk-only
    snapshot, so the guest runs on), and a revert or delete never rewrites the volume's
    own metadata. It claims its size on the host as a volume does (an allocation whose
    consumer is its UUID). ``status`` and ``task_owner`` as a volume's."""

    __tablename__ = "volume_snapshots"

    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(sa_column=Column(String(36), unique=True, nullable=False))
    name: str = Field(sa_column=Column(String(255), unique=True, nullable=False))
    volume_id: int = Field(
        sa_column=Column(Integer, ForeignKey("volumes.id", ondelete="RESTRICT"), nullable=False)
    )
    size_gb: int
    status: str = SnapshotStatus.CREATING
    path: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    task_owner: str | None = None
    created_at: datetime | None = _ts()
    updated_at: datetime | None = _ts()
