"""load_host_states reads plain rows, not ORM hosts: what it builds must be what the
host's own properties say (capacity overrides, status, arch from the facts, how long
ago it was seen) plus the claims on it, for every kind of host."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import Allocation, Host, Instance, TaskState, utcnow
from orchestrator.scheduler.host_state import HostState
from orchestrator.scheduler.loader import load_host_states


async def claim(
    db: Database, host: Host, task_state: str | None, with_instance: bool = True
) -> str:
    consumer = str(uuid.uuid4())
    async with db.session() as session:
        if with_instance:
            instance = Instance(
                uuid=consumer, name=f"s-{consumer[:6]}", flavor_name="f", vcpus=2, ram_mb=512,
                disk_gb=3, image_name="i", host_id=host.id,
            )  # fmt: skip
            instance.task_state = task_state
            session.add(instance)
        session.add(
            Allocation(instance_uuid=consumer, host_id=host.id or 0, vcpus=2, ram_mb=512, disk_gb=3)
        )
    return consumer


async def test_loaded_states_match_each_hosts_own_view(db: Database, add_host) -> None:
    now = utcnow()
    plain = await add_host("a-plain", facts={"arch": "x86_64", "cpu": {"model": "x"}})
    overridden = await add_host(
        "b-overridden", override_vcpus=2, override_ram_mb=1024, override_disk_gb=7,
        labels={"tier": "gold"}, availability_zone="az2", failed_builds=2,
        domain_type="kvm", generation=5,
    )  # fmt: skip
    await add_host("c-disabled", enabled=False, disabled_reason="swap")
    await add_host("d-down", marked_down=True, last_seen_at=now - timedelta(seconds=600))
    await add_host("e-erring", last_error="ssh: refused")
    await add_host("f-never", last_seen_at=None, vcpus=None, ram_mb=None, disk_gb=None)
    await add_host("g-no-libvirt", libvirt_ok=False, libvirt_error="no socket")
    held = {
        await claim(db, plain, TaskState.SPAWNING),
        await claim(db, plain, None),
        await claim(db, plain, None, with_instance=False),  # a migration's consumer
    }
    await claim(db, overridden, TaskState.NETWORKING)

    async with db.read() as session:
        states = await load_host_states(session)
        hosts = (await session.exec(select(Host).order_by(Host.name))).all()
    assert [s.name for s in states] == [h.name for h in hosts]
    for state, host in zip(states, hosts, strict=True):
        expected = HostState.from_host(host)
        assert (state.total_vcpus, state.total_ram_mb, state.total_disk_gb) == (
            expected.total_vcpus, expected.total_ram_mb, expected.total_disk_gb,
        )  # fmt: skip
        for name in (
            "id", "enabled", "libvirt_ok", "libvirt_error", "cpu_ratio", "ram_ratio",
            "disk_ratio", "reserved_vcpus", "reserved_ram_mb", "reserved_disk_gb",
            "generation", "availability_zone", "labels", "disabled_reason",
        ):  # fmt: skip
            assert getattr(state, name) == getattr(expected, name), (host.name, name)
        assert state.status == host.status, host.name
        assert state.arch == (host.facts or {}).get("arch"), host.name
        assert (state.domain_type, state.failed_builds) == (host.domain_type, host.failed_builds)
        if host.last_seen_at is None:
            assert state.seen_seconds_ago is None
        else:
            assert state.seen_seconds_ago is not None and 0 <= state.seen_seconds_ago < 3600

    by_name = {s.name: s for s in states}
    assert {s.status for s in states} == {"up", "disabled", "down", "unknown", "no-libvirt"}
    assert by_name["d-down"].seen_seconds_ago >= 600
    loaded = by_name["a-plain"]
    assert (loaded.used_vcpus, loaded.used_ram_mb, loaded.used_disk_gb) == (6, 1536, 9)
    assert (loaded.instances, loaded.builds_in_progress) == (3, 1)
    assert loaded.instance_uuids == held
    assert (by_name["b-overridden"].instances, by_name["b-overridden"].builds_in_progress) == (1, 1)

    async with db.read() as session:
        (only,) = await load_host_states(session, [plain.id or 0])
    assert only.name == "a-plain" and only.instance_uuids == held
