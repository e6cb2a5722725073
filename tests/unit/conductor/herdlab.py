"""A herd without root: hosts that are real agents on pipes, over a fake ``virsh``.

Each fake host is the real agent (``python -m agent serve``) with a state directory of
its own, speaking the real protocol to herd's own ``AgentSession`` over a pipe; its
hypervisor is tests/unit/fakevirt/virsh, first on the agent's PATH, which keeps the
host's domains in a JSON file so that they persist from one virsh call to the next.
qemu-img is the real one. The DB holds the hosts, a flavor and an image as
`herd inventory apply` would write them, and the conductor's pool hands each host's
requests to that host's agent. Files move between hosts as local copies (SFTP's part).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.api import servers as api
from orchestrator.conductor import recovery
from orchestrator.conductor.journal import TaskHandle, open_tasks
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.recovery import Recovery
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    Allocation,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    Migration,
    TaskRecord,
    utcnow,
)
from orchestrator.errors import HostUnreachable
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.session import AgentSession
from orchestrator.rpc.ssh import HostTarget
from tests.unit.orchestrator.agentpipe import _NoConnection, _PipeProcess

REPO = Path(__file__).resolve().parents[3]
FAKEVIRT = REPO / "tests" / "unit" / "fakevirt"
HOSTS = ("hv1", "hv2", "hv3")


class LocalSession(AgentSession):
    """A session whose files are this machine's: upload and download are copies."""

    async def upload(self, local: Path, remote: str) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, local, remote)

    async def download(self, remote: str, local: Path) -> int:
        try:
            await asyncio.to_thread(shutil.copyfile, remote, local)
        except OSError as exc:
            raise HostUnreachable(f"host {self.target.name}: download failed: {exc}") from exc
        return local.stat().st_size


class LabPool(AgentPool):
    """Each host's requests go to that host's agent, started when it is first asked for
    (most tests never reach one host or two: an agent is a process to start and stop);
    ``down`` hosts cannot be reached."""

    def __init__(self, start: Callable[[str], Awaitable[LocalSession]]) -> None:
        super().__init__()
        self._start = start
        self._starting: dict[str, asyncio.Task[LocalSession]] = {}
        self.down: set[str] = set()
        self.ops: list[tuple[str, str]] = []  # (host, op) of every call, in order

    async def session(self, target: HostTarget) -> AgentSession:
        if target.name in self.down:
            raise HostUnreachable(f"host {target.name}: cannot reach it (test)")
        if target.name not in self._starting:
            self._starting[target.name] = asyncio.ensure_future(self._start(target.name))
        return await asyncio.shield(self._starting[target.name])

    async def call(
        self, target: HostTarget, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        name = (args or {}).get("op", op) if op == "job_start" else op
        self.ops.append((target.name, name))
        return await super().call(target, op, args, timeout)


class Died(BaseException):
    """The runner 'killed' at a step: not an Exception, so no handler of the task's runs."""


class HerdLab:
    """The fake hosts, their hypervisors and the DB rows that describe them."""

    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root
        self.virt = root / "virt"
        self.virt.mkdir()
        self.bin = root / "bin"
        self.bin.mkdir()
        self.sessions: dict[str, LocalSession] = {}
        self.procs: list[asyncio.subprocess.Process] = []
        self.hosts: tuple[str, ...] = ()
        self.pool = LabPool(self._start_agent)
        self.conductor = Conductor(db, self.pool, build_timeout=60)

    # -- setup -----------------------------------------------------------------

    def agent_dir(self, host: str) -> str:
        return str(self.root / host)

    def address(self, host: str) -> str:
        return f"127.0.0.{HOSTS.index(host) + 11}"

    async def start(self, hosts: tuple[str, ...] = HOSTS) -> None:
        self.hosts = hosts
        (self.virt / "addresses.json").write_text(json.dumps({self.address(h): h for h in hosts}))
        # The fake virsh runs dozens of times a test: by this very interpreter, without
        # site (a pyenv shim on PATH costs ~90 ms a call, this ~7 ms).
        script = (FAKEVIRT / "virsh").read_text().split("\n", 1)[1]
        virsh = self.bin / "virsh"
        virsh.write_text(f"#!{os.path.realpath(sys.executable)} -SI\n{script}")
        virsh.chmod(0o755)
        image = self.root / "base.qcow2"
        await asyncio.to_thread(shutil.copyfile, await _base_image(), image)
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        async with self.db.session() as db:
            db.add(Flavor(name="small", vcpus=1, ram_mb=1024, disk_gb=1))
            db.add(Flavor(name="big", vcpus=2, ram_mb=2048, disk_gb=2))
            db.add(Flavor(name="huge", vcpus=64, ram_mb=512000, disk_gb=2))
            db.add(Image(name="cirros", source=str(image), sha256=digest, format="qcow2",
                         size=image.stat().st_size))  # fmt: skip
            for name in hosts:
                db.add(
                    Host(
                        name=name, address=self.address(name), ssh_user="root",
                        agent_dir=self.agent_dir(name), libvirt_uri=f"fake:///{name}",
                        domain_type_pref="qemu", domain_type="qemu", vcpus=4, ram_mb=4096,
                        disk_gb=50, libvirt_ok=True, last_seen_at=utcnow(),
                        reserved_ram_mb=0, cpu_ratio=1.0, ram_ratio=1.0,
                    )
                )  # fmt: skip

    async def _start_agent(self, name: str) -> LocalSession:
        target = HostTarget(
            name=name, address=self.address(name), agent_dir=self.agent_dir(name),
            libvirt_uri=f"fake:///{name}", domain_type="qemu",
        )  # fmt: skip
        env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "FAKEVIRT_DIR": str(self.virt),
            "PYTHONPATH": str(REPO),
            "HERD_TEMPLATES_DIR": str(REPO / "templates"),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "serve",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=self.root,
        )  # fmt: skip
        self.procs.append(proc)
        session = LocalSession(target, _NoConnection(), None)  # type: ignore[arg-type]
        await session.speak(_PipeProcess(proc))  # type: ignore[arg-type]
        self.sessions[name] = session
        return session

    async def stop(self) -> None:
        for session in self.sessions.values():
            await session.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    # -- the fake hypervisors --------------------------------------------------

    def virt_state(self, host: str) -> dict[str, Any]:
        path = self.virt / f"{host}.json"
        if not path.exists():
            return {"domains": {}, "fail": {}, "fail_after": {}}
        return dict(json.loads(path.read_text()))

    def domains(self, host: str) -> dict[str, str]:
        """uuid -> state of every domain on ``host``."""
        return {u: d["state"] for u, d in self.virt_state(host)["domains"].items()}

    def where(self, uuid: str) -> dict[str, str]:
        """host -> state, of every host that has a domain for ``uuid``."""
        found = {h: self.domains(h).get(uuid) for h in self.hosts}
        return {h: s for h, s in found.items() if s is not None}

    def fail(self, host: str, command: str, message: str = "boom", *, after: bool = False) -> None:
        """Make ``command`` fail on ``host``'s hypervisor (``after``: do it, then fail)."""
        state = self.virt_state(host)
        state.setdefault("fail_after" if after else "fail", {})[command] = message
        (self.virt / f"{host}.json").write_text(json.dumps(state))

    def heal(self, host: str) -> None:
        state = self.virt_state(host)
        state["fail"], state["fail_after"] = {}, {}
        (self.virt / f"{host}.json").write_text(json.dumps(state))

    def files(self, host: str, uuid: str) -> dict[str, bool]:
        """Which of the server's files ``host`` holds."""
        base = Path(self.agent_dir(host))
        return {
            "dir": (base / "instances" / uuid).exists(),
            "stash": (base / "instances" / f"{uuid}.resize").exists(),
            "incoming": (base / "images" / "incoming" / f"{uuid}.migrating").exists(),
        }

    # -- the DB ------------------------------------------------------------------

    async def boot(self, name: str = "s1", *, host: str | None = "hv1", flavor: str = "small"):
        """A server built through the conductor, as `herd server create` does."""
        request = api.CreateRequest(name=name, flavor=flavor, image="cirros", host=host)
        (instance,) = await api.create_servers(self.db, request)
        (outcome,) = await self.conductor.build([instance])
        assert outcome.error is None, outcome.error
        return await self.server(instance.uuid)

    async def fill(self, host: str) -> None:
        """Take all of ``host``'s room, as other servers would (cheaper than booting them:
        a claim under a consumer of no server)."""
        row = await self.host(host)
        async with self.db.session() as db:
            db.add(Allocation(instance_uuid=f"filler-{host}", host_id=row.id, vcpus=row.vcpus,
                              ram_mb=row.ram_mb, disk_gb=1, created_at=utcnow()))  # fmt: skip
            await db.exec(
                update(Host)  # type: ignore[call-overload]
                .where(col(Host.id) == row.id)
                .values(generation=Host.generation + 1)
            )

    async def server(self, uuid: str) -> Instance:
        async with self.db.read() as db:
            return (await db.exec(select(Instance).where(Instance.uuid == uuid))).one()

    async def host_name(self, host_id: int | None) -> str | None:
        async with self.db.read() as db:
            host = await db.get(Host, host_id) if host_id else None
        return host.name if host else None

    async def host(self, name: str) -> Host:
        async with self.db.read() as db:
            return (await db.exec(select(Host).where(Host.name == name))).one()

    async def claims(self) -> list[tuple[str, str, int]]:
        """(consumer, host, vcpus) of every allocation, sorted."""
        async with self.db.read() as db:
            rows = (await db.exec(select(Allocation))).all()
            names = {h.id: h.name for h in (await db.exec(select(Host))).all()}
        return sorted((a.instance_uuid, names[a.host_id], a.vcpus) for a in rows)

    async def claim_hosts(self, uuid: str) -> list[str]:
        """The hosts holding a claim for the server, under its UUID or its migration's."""
        async with self.db.read() as db:
            migrations = (
                await db.exec(select(Migration.uuid).where(Migration.instance_uuid == uuid))
            ).all()
        consumers = {uuid, *migrations}
        return sorted(h for c, h, _ in await self.claims() if c in consumers)

    async def events(self, uuid: str, action: str) -> list[tuple[str, bool | None]]:
        """(event, ok) of the server's last ``action``, in the order they started."""
        async with self.db.read() as db:
            act = (
                await db.exec(
                    select(InstanceAction)
                    .where(InstanceAction.instance_uuid == uuid, InstanceAction.action == action)
                    .order_by(col(InstanceAction.id).desc())
                )
            ).first()
            assert act is not None, f"no {action} action"
            rows = (
                await db.exec(
                    select(InstanceActionEvent)
                    .where(InstanceActionEvent.action_id == act.id)
                    .order_by(col(InstanceActionEvent.id))
                )
            ).all()
        return [(e.event, e.result == "success" if e.result else None) for e in rows]

    async def tasks(self, uuid: str) -> list[TaskRecord]:
        async with self.db.read() as db:
            query = select(TaskRecord).where(TaskRecord.instance_uuid == uuid)
            return list((await db.exec(query.order_by(col(TaskRecord.id)))).all())

    async def orphan(self, task_id: int) -> None:
        """The task's runner is gone, as if its herd had been killed on another boot."""
        async with self.db.session() as db:
            await db.exec(
                update(TaskRecord)  # type: ignore[call-overload]
                .where(col(TaskRecord.id) == task_id)
                .values(runner_boot_id="a-boot-long-gone")
            )

    async def kill_at(self, kind: str, step: str, work: Callable[[], Awaitable[Any]]) -> TaskRecord:
        """Run ``work`` until its ``kind`` task journals ``step``, and 'kill' it there: the
        row is left open, its runner gone (as HERD_TEST_STOP_AT and kill -9 leave it)."""
        with pytest.MonkeyPatch.context() as patch:
            die_at(patch, kind, step)
            try:
                await work()
            except Died:
                pass
            else:
                raise AssertionError(f"{kind} finished without reaching step {step}")
        (record,) = [t for t in await open_tasks(self.db) if t.kind == kind]
        assert record.step == step
        await self.orphan(record.id)
        return record

    async def recover(self) -> list[Recovery]:
        return await recovery.recover(self.conductor)

    async def assert_whole(self, uuid: str, host: str, state: str = "running") -> None:
        """The server as every move must leave it: one domain, on its DB host, in
        ``state``; its claims there only; no resize stash or carried disk anywhere, and
        no files on the other hosts."""
        row = await self.server(uuid)
        assert await self.host_name(row.host_id) == host
        assert self.where(uuid) == {host: state}
        assert await self.claim_hosts(uuid) == [host]
        for name in self.hosts:
            files = self.files(name, uuid)
            assert not files["stash"] and not files["incoming"], (name, files)
            assert files["dir"] == (name == host), (name, files)
        assert row.task_state is None
        assert [t.kind for t in await open_tasks(self.db, uuid)] == []


_BASE: list[Path] = []


async def _base_image() -> Path:
    """One empty qcow2 made by the real qemu-img for the whole run, copied into each lab."""
    if not _BASE:
        folder = Path(tempfile.mkdtemp(prefix="herd-lab-base-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        image = folder / "base.qcow2"
        made = await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"
        )
        assert await made.wait() == 0
        _BASE.append(image)
    return _BASE[0]


@asynccontextmanager
async def herd_lab(db: Database, hosts: tuple[str, ...] = HOSTS) -> AsyncIterator[HerdLab]:
    # Not pytest's tmp_path: an agent's state_dir may have at most 80 characters.
    root = Path(tempfile.mkdtemp(prefix="herd-lab-"))
    lab = HerdLab(db, root)
    try:
        await lab.start(hosts)
        yield lab
    finally:
        await lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def die_at(monkeypatch: Any, kind: str, step: str) -> None:
    """The runner of ``kind`` dies right after it journals ``step`` (HERD_TEST_STOP_AT's
    point: the step written, its side effect not begun), without running any handler.
    A task's first step is the one its journal row opens with."""
    from orchestrator.conductor.tasks.base import Task

    original_step: Callable[..., Any] = TaskHandle.step
    original_open: Callable[..., Any] = Task.open_journal

    async def step_then_die(self: TaskHandle, name: str, **inputs: Any) -> None:
        await original_step(self, name, **inputs)
        if (self.kind, name) == (kind, step):
            raise Died(f"{kind} killed at {step}")

    async def open_then_die(self: Task, *args: Any, **kw: Any) -> TaskHandle:
        handle: TaskHandle = await original_open(self, *args, **kw)
        if (self.kind, kw.get("step", "begin")) == (kind, step):
            raise Died(f"{kind} killed at {step}")
        return handle

    monkeypatch.setattr(TaskHandle, "step", step_then_die)
    monkeypatch.setattr(Task, "open_journal", open_then_die)
