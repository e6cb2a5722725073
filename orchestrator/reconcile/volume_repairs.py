"""Repairs of volume drift (volume_drift.py), each by its policy.

Every repair reads the volume again and takes it with the same atomic status change a
command uses (``take``), so a repair never races an attach, a detach or a delete an
operator began since the survey: the one that loses is refused (here: skipped).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Awaitable, Callable

from sqlalchemy import update
from sqlmodel import col, select

from orchestrator.conductor.actions import finish_action, record_event, start_action
from orchestrator.conductor.hosts import target_of
from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.tasks.volume_snapshots import (
    SS,
    drop_snapshot,
    settle_snapshot,
    snapshot_args,
    take_snapshot,
)
from orchestrator.conductor.tasks.volumes import S, settle, take, volume_args
from orchestrator.db.models import Allocation, Host, Instance, Volume, VolumeSnapshot, utcnow
from orchestrator.errors import Conflict, HerdError
from orchestrator.reconcile.findings import Finding, Skipped
from orchestrator.rpc.agent_api import AgentAPI, VolumeArgs
from orchestrator.scheduler.claims import release


class VolumeRepairs:
    def __init__(self, conductor: Conductor, agent: AgentAPI) -> None:
        self.conductor, self.db, self.agent = conductor, conductor.db, agent
        self.repairs: dict[str, Callable[[Finding], Awaitable[None]]] = {
            "orphan_volume": self._reap_orphan,
            "missing_volume": self._record_missing,
            "stuck_volume": self._unstick,
            "stuck_snapshot": self._unstick_snapshot,
            "volume_attachment_missing": self._attachment,
            "volume_attachment_unknown": self._attachment,
        }

    async def fix(self, finding: Finding) -> None:
        await self.repairs[finding.kind](finding)

    async def _volume(self, volume_uuid: str) -> Volume | None:
        async with self.db.read() as db:
            return (await db.exec(select(Volume).where(Volume.uuid == volume_uuid))).first()

    async def _host(self, name: str | None) -> Host:
        async with self.db.read() as db:
            host = (await db.exec(select(Host).where(Host.name == name))).first()
        if host is None:
            raise HerdError(f"host {name} vanished from the database")
        return host

    async def _take(self, volume: Volume, expected: tuple[str, ...], status: str) -> Volume:
        try:
            return await take(self.conductor, volume, expected, status)
        except Conflict as exc:
            raise Skipped(f"{exc} since the survey; left alone") from None

    async def _reap_orphan(self, finding: Finding) -> None:
        """The file goes, unless a record for it appeared on this host since the
        snapshot (a create that was just starting); the agent refuses while a domain
        has it as a disk."""
        host = await self._host(finding.host)
        volume = await self._volume(finding.data["volume"])
        if volume is not None and volume.host_id == host.id:
            raise Skipped("a volume record for this file appeared since the survey")
        args: VolumeArgs = {"volume": finding.data["volume"], "format": finding.data["format"]}
        if host.volume_dir:
            args["dir"] = host.volume_dir
        await self.agent.volume_delete(target_of(host), args)

    async def _record_missing(self, finding: Finding) -> None:
        """Kept, with the loss written on it: an available volume goes to ``error`` (a
        `volume delete` clears it); an in-use one keeps its status, so it can still be
        detached, and says what is wrong."""
        volume = await self._volume(finding.data["volume"])
        host = await self._host(finding.host)
        if volume is None or volume.status not in (S.AVAILABLE, S.IN_USE):
            raise Skipped("the volume changed since the survey; left alone")
        if volume.host_id != host.id:
            raise Skipped("the volume moved to another host since the survey; left alone")
        status = volume.status
        volume = await self._take(volume, (status,), status)
        message = f"its file is missing on {finding.host} (found by reconcile)"
        await settle(
            self.conductor, volume, S.ERROR if status == S.AVAILABLE else status, error=message
        )

    async def _unstick_snapshot(self, finding: Finding) -> None:
        """A create is made again (the host finds it made, or copies now), or undone if
        that fails; a delete is done again, then the record and its claim go."""
        async with self.db.read() as db:
            query = select(VolumeSnapshot).where(VolumeSnapshot.uuid == finding.data["snapshot"])
            snap = (await db.exec(query)).first()
        status = finding.data["status"]
        if snap is None or snap.status != status:
            raise Skipped("the snapshot changed since the survey; left alone")
        try:
            snap = await take_snapshot(self.conductor, snap, (status,), status)
        except Conflict as exc:
            raise Skipped(f"{exc} since the survey; left alone") from None
        async with self.db.read() as db:
            volume = await db.get(Volume, snap.volume_id)
        assert volume is not None
        host = await self._host(finding.host)
        args = snapshot_args(volume, snap, host)
        if status == SS.CREATING:
            if volume.instance_uuid is not None:
                args["uuid"] = volume.instance_uuid
            try:
                made = await self.agent.volume_snapshot_create(target_of(host), args)
            except HerdError:
                await drop_snapshot(self.conductor, snap)
                raise
            await settle_snapshot(self.conductor, snap, SS.AVAILABLE, path=made["path"])
            return
        await self.agent.volume_snapshot_delete(target_of(host), args)
        await drop_snapshot(self.conductor, snap)

    async def _unstick(self, finding: Finding) -> None:
        """Finish or undo the dead command's step from what the host has: a create whose
        file is there is available, one whose file is not gives its claim back (error);
        an extend is done again to the size it claimed (the host finds it done if it
        was); a delete is done again, then the record goes."""
        volume = await self._volume(finding.data["volume"])
        status = finding.data["status"]
        if volume is None or volume.status != status:
            raise Skipped("the volume changed since the survey; left alone")
        volume = await self._take(volume, (status,), status)
        host = await self._host(finding.host)
        args = volume_args(volume, host)
        if status == S.CREATING and finding.data["file_present"]:
            made = await self.agent.volume_create(
                target_of(host), {**args, "size_gb": volume.size_gb}
            )
            await settle(self.conductor, volume, S.AVAILABLE, path=made["path"], error=None)
        elif status == S.CREATING:
            async with self.db.session() as db:
                await release(db, volume.uuid)
            message = "its create was interrupted before the file was made (found by reconcile)"
            await settle(self.conductor, volume, S.ERROR, error=message)
        elif status == S.EXTENDING:
            await self._extend_again(volume, host, args)
        elif status == S.REVERTING:  # the host replaces the file whole or not at all
            message = "its revert was interrupted: the file is either as it was or reverted"
            await settle(self.conductor, volume, S.AVAILABLE, error=message)
        else:
            await self._delete_again(volume, host, args)

    async def _extend_again(self, volume: Volume, host: Host, args: VolumeArgs) -> None:
        after = S.IN_USE if volume.instance_uuid else S.AVAILABLE
        async with self.db.read() as db:
            query = select(Allocation).where(Allocation.instance_uuid == volume.uuid)
            claim = (await db.exec(query)).first()
        size_gb = claim.disk_gb if claim is not None else volume.size_gb
        if volume.instance_uuid is not None:
            args["uuid"] = volume.instance_uuid
        try:
            await self.agent.volume_extend(target_of(host), {**args, "size_gb": size_gb})
        except HerdError as exc:
            async with self.db.session() as db:
                await db.exec(
                    update(Allocation)  # type: ignore[call-overload]
                    .where(col(Allocation.instance_uuid) == volume.uuid)
                    .values(disk_gb=volume.size_gb)
                )
            await settle(self.conductor, volume, after, error=f"extend failed: {exc}")
            raise
        await settle(self.conductor, volume, after, size_gb=size_gb, error=None)

    async def _delete_again(self, volume: Volume, host: Host, args: VolumeArgs) -> None:
        try:
            await self.agent.volume_delete(target_of(host), args)
        except HerdError as exc:
            await settle(self.conductor, volume, S.AVAILABLE, error=f"delete failed: {exc}")
            raise
        async with self.db.session() as db:
            row = (await db.exec(select(Volume).where(Volume.uuid == volume.uuid))).first()
            if row is not None:
                await db.delete(row)
            await release(db, volume.uuid)

    async def _attachment(self, finding: Finding) -> None:
        """``restore``: the domain made to match the DB (the disk attached again, or a
        disk the DB does not have detached); ``record``: the DB made to match the
        domain. The volume is held (attaching or detaching) while the host works, so a
        command cannot take it meanwhile; the server's actions say what was done."""
        volume = await self._volume(finding.data["volume"])
        server = await self._server(finding.uuid)
        host = await self._host(finding.host)
        missing = finding.kind == "volume_attachment_missing"
        if finding.policy == "record":
            await self._record_attachment(finding, volume, server, host, missing)
        elif missing:
            if volume is None or volume.instance_uuid != server.uuid:
                raise Skipped("the volume changed since the survey; left alone")
            volume = await self._take(volume, (S.IN_USE,), S.ATTACHING)
            args = volume_args(volume, host)
            args["uuid"], args["device"] = server.uuid, finding.data["device"]
            try:
                await self.agent.volume_attach(target_of(host), args)
            finally:
                await settle(self.conductor, volume, S.IN_USE)
        else:
            await self._detach_unknown(finding, volume, server, host)
        await self._event(server, finding)

    async def _detach_unknown(
        self, finding: Finding, volume: Volume | None, server: Instance, host: Host
    ) -> None:
        args: VolumeArgs = {"volume": finding.data["volume"], "format": finding.data["format"]}
        if host.volume_dir:
            args["dir"] = host.volume_dir
        args["uuid"] = server.uuid
        held = None
        if volume is not None and volume.status == S.AVAILABLE:
            held = await self._take(volume, (S.AVAILABLE,), S.DETACHING)
        elif volume is not None and volume.instance_uuid == server.uuid:
            raise Skipped("the volume was attached to this server since the survey")
        try:
            await self.agent.volume_detach(target_of(host), args)
        finally:
            if held is not None:
                await settle(self.conductor, held, S.AVAILABLE)

    async def _record_attachment(
        self,
        finding: Finding,
        volume: Volume | None,
        server: Instance,
        host: Host,
        missing: bool,
    ) -> None:
        if volume is None:
            raise Skipped("no volume record for this file: nothing to record (restore detaches)")
        if missing:
            if volume.instance_uuid != server.uuid:
                raise Skipped("the volume changed since the survey; left alone")
            volume = await self._take(volume, (S.IN_USE,), S.DETACHING)
            await settle(self.conductor, volume, S.AVAILABLE, instance_uuid=None, device=None)
            return
        if not finding.data["recordable"] or volume.host_id != host.id:
            raise Skipped(
                f"volume {volume.name} is {volume.status} elsewhere: recording it attached "
                "here would attach it twice (restore detaches it from this domain)"
            )
        volume = await self._take(volume, (S.AVAILABLE,), S.ATTACHING)
        await settle(
            self.conductor, volume, S.IN_USE,
            instance_uuid=server.uuid, device=finding.data["device"],
        )  # fmt: skip

    async def _server(self, instance_uuid: str | None) -> Instance:
        async with self.db.read() as db:
            row = (await db.exec(select(Instance).where(Instance.uuid == instance_uuid))).first()
        if row is None:
            raise HerdError(f"server {instance_uuid} vanished from the database")
        if row.task_state is not None:
            raise Skipped("an action began on the server since the survey; left alone")
        return row

    async def _event(self, server: Instance, finding: Finding) -> None:
        """The repair in the server's actions (as power_sync is), so `server show`
        tells why a disk came or went."""
        async with self.db.session() as db:
            action = await start_action(db, server.uuid, "volume_sync", f"req-{uuidlib.uuid4()}")
            detail = f"{finding.detail}: {finding.policy}"
            await record_event(db, action.id, "reconcile", True, finding.host, detail)
            await finish_action(db, action.id)

    async def create_claim(self, finding: Finding) -> None:
        """A volume's missing claim, made under its host's generation."""
        async with self.db.session() as db:
            volume = (
                await db.exec(select(Volume).where(Volume.uuid == finding.data["volume"]))
            ).first()
            if volume is None:
                raise Skipped("the volume is gone since the survey")
            query = select(Allocation).where(Allocation.instance_uuid == volume.uuid)
            if (await db.exec(query)).first() is not None:
                raise Skipped("the volume was claimed since the survey")
            host = await db.get(Host, volume.host_id)
            assert host is not None
            host.generation += 1
            db.add(host)
            db.add(
                Allocation(
                    instance_uuid=volume.uuid,
                    host_id=volume.host_id,
                    vcpus=0,
                    ram_mb=0,
                    disk_gb=volume.size_gb,
                    created_at=utcnow(),
                )
            )
