"""`herd db copy` and `herd db status`: the whole state moves, or nothing does.

SQLite to PostgreSQL is the way up the README promises; PostgreSQL back to SQLite
shows the copy is not one-way by accident. Every table gets rows, so a table left
out of the copy (or copied before its parents) fails here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from orchestrator.db import copy as db_copy
from orchestrator.db.engine import Database, open_database
from orchestrator.db.migrate import alembic_config
from orchestrator.db.models import (
    AgentJob,
    Allocation,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    KeyPair,
    Migration,
    Network,
    Port,
    ServerGroup,
    TaskRecord,
    Volume,
    VolumeSnapshot,
)
from orchestrator.errors import Conflict, HerdError, InvalidInput
from tests.e2e.herdcli import HerdCli, assert_one_line_error

WHEN = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """The source is a SQLite file on every run: the copy is the way up from SQLite,
    and these tests read the file's bytes to prove it is left untouched."""
    return sqlite_url


async def populate(db: Database, servers: int = 3) -> None:
    """At least one row in every table, ids not starting at 1 where it matters."""
    async with db.session() as s:
        hosts = [
            Host(name=f"hv-{i}", address=f"10.0.0.{i}", vcpus=8, ram_mb=16384, disk_gb=200)
            for i in (1, 2)
        ]
        s.add_all(hosts)
        s.add(Flavor(name="small", vcpus=1, ram_mb=512, disk_gb=1, extra_specs={"a": "b"}))
        image = Image(name="cirros", source="/srv/cirros.qcow2", properties={"os": "cirros"})
        s.add(image)
        s.add(KeyPair(name="ops", public_key="ssh-ed25519 AAAA ops", fingerprint="SHA256:x"))
        net = Network(name="provider", kind="bridge", source="br0", dns=["10.0.0.53"])
        s.add(net)
        group = ServerGroup(name="web", policy="anti-affinity", created_at=WHEN)
        s.add(group)
        await s.flush()
        for i in range(servers):
            uuid = f"00000000-0000-0000-0000-{i:012d}"
            host = hosts[i % 2]
            s.add(
                Instance(
                    uuid=uuid,
                    name=f"web-{i}",
                    flavor_name="small",
                    vcpus=1,
                    ram_mb=512,
                    disk_gb=1,
                    image_name="cirros",
                    image_id=image.id,
                    host_id=host.id,
                    group_id=group.id,
                    request_spec={"flavor": "small", "n": i},
                    key_name="ops",
                    vm_state="active",
                    task_state=None,
                    power_state="running",
                    created_at=WHEN,
                    launched_at=WHEN + timedelta(seconds=i),
                )
            )
            s.add(Allocation(instance_uuid=uuid, host_id=host.id, vcpus=1, ram_mb=512, disk_gb=1))
            s.add(Port(instance_uuid=uuid, network_id=net.id, mac=f"52:54:00:00:00:{i:02x}"))
            action = InstanceAction(instance_uuid=uuid, action="create", request_id=f"req-{i}")
            s.add(action)
            await s.flush()
            s.add(InstanceActionEvent(action_id=action.id, event="spawn", result="success"))
            s.add(InstanceFault(instance_uuid=uuid, message="a fault of old"))
            s.add(AgentJob(id=f"job-{i}", host_id=host.id, op="spawn", result={"ok": True}))
        s.add(Migration(uuid="m-1", instance_uuid="00000000-0000-0000-0000-000000000000"))
        volume = Volume(
            uuid="11111111-1111-1111-1111-111111111111", name="data", host_id=hosts[0].id,
            size_gb=2, status="in-use", instance_uuid=uuid, device="vdc",
            path="/var/lib/herd/volumes/11111111-1111-1111-1111-111111111111.qcow2",
            created_at=WHEN,
        )  # fmt: skip
        s.add(volume)
        await s.flush()
        s.add(
            VolumeSnapshot(
                uuid="22222222-2222-2222-2222-222222222222", name="data-1", volume_id=volume.id,
                size_gb=2, status="available", created_at=WHEN,
            )
        )  # fmt: skip
        s.add(
            TaskRecord(
                kind="resize",
                instance_uuid="00000000-0000-0000-0000-000000000000",
                step="done",
                inputs={"flavor": "small"},
                state="done",
                runner_host="ops-1",
                runner_pid=42,
                runner_boot_id="boot",
                runner_started=2**40,
                heartbeat_at=WHEN,
            )
        )


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return value


async def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in id order, timestamps as aware UTC."""
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            rows = {}
            for table in SQLModel.metadata.sorted_tables:
                result = await conn.execute(select(table).order_by(*table.primary_key.columns))
                rows[table.name] = [tuple(_plain(v) for v in row) for row in result]
            return rows
    finally:
        await db.dispose()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_sqlite_to_postgresql_copies_every_row(
    db: Database, db_url: str, pg_empty_url: str
) -> None:
    await populate(db)
    await db.dispose()
    before = await snapshot(db_url)
    assert all(before.values()), [name for name, rows in before.items() if not rows]
    source_file = Path(make_url(db_url).database or "")
    digest = file_digest(source_file)
    seen: list[tuple[str, int, int]] = []

    # A session far from UTC: SQLite's zoneless timestamps must still land as UTC.
    tokyo = make_url(pg_empty_url).update_query_dict({"options": "-c timezone=Asia/Tokyo"})
    to = tokyo.render_as_string(hide_password=False)
    result = await db_copy.copy_database(db_url, to, lambda *a: seen.append(a))

    assert await snapshot(pg_empty_url) == before
    assert result.tables == {name: len(rows) for name, rows in before.items()}
    assert result.tables["instances"] == 3
    assert ("instances", 3, 3) in seen and ("ports", 3, 3) in seen
    assert file_digest(source_file) == digest  # read only: not a byte written
    # The sequences are past the copied ids: herd carries on inserting.
    target = await open_database(pg_empty_url)
    try:
        async with target.session() as s:
            s.add(Flavor(name="big", vcpus=4, ram_mb=4096, disk_gb=10))
            s.add(ServerGroup(name="db", policy="affinity"))
        async with target.read() as s:
            ids = (await s.execute(select(Flavor.id).order_by(Flavor.id))).scalars().all()
        assert len(ids) == 2 and ids[1] > ids[0]
    finally:
        await target.dispose()
    status = await db_copy.database_status(pg_empty_url)
    assert (status.engine, status.state, status.tables["ports"]) == ("postgresql", "at head", 3)


async def test_postgresql_to_sqlite(pg_url: str, tmp_path: Path) -> None:
    source = Database(pg_url)
    await populate(source, servers=2)
    await source.dispose()
    target = f"sqlite:///{tmp_path / 'back' / 'herd.db'}"

    result = await db_copy.copy_database(pg_url, target)

    assert await snapshot(target) == await snapshot(pg_url)
    assert result.tables["allocations"] == 2


async def test_a_target_with_rows_is_refused_and_left_alone(
    db: Database, db_url: str, pg_url: str
) -> None:
    await populate(db, servers=1)
    other = Database(pg_url)
    async with other.session() as s:
        s.add(KeyPair(name="theirs", public_key="ssh-ed25519 BBBB", fingerprint="f"))
    await other.dispose()
    before = await snapshot(pg_url)

    with pytest.raises(Conflict, match="table key_pairs has rows"):
        await db_copy.copy_database(db_url, pg_url)

    assert await snapshot(pg_url) == before


async def test_a_count_mismatch_writes_nothing(
    db: Database, db_url: str, pg_empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await populate(db, servers=2)
    copy_table = db_copy._copy_table

    async def lossy(source: Any, target: Any, table: Any, total: int, progress: Any) -> int:
        if table.name == "ports":
            return 0  # as if a batch went missing
        return await copy_table(source, target, table, total, progress)

    monkeypatch.setattr(db_copy, "_copy_table", lossy)
    with pytest.raises(HerdError, match="table ports has 0 rows on the target, 2"):
        await db_copy.copy_database(db_url, pg_empty_url)

    assert not any((await snapshot(pg_empty_url)).values())  # rolled back, hosts too


async def test_the_same_database_is_refused(db: Database, db_url: str, pg_url: str) -> None:
    path = Path(make_url(db_url).database or "")
    roundabout = f"sqlite:///{path.parent / '.' / path.name}"
    with pytest.raises(InvalidInput, match="same database"):
        await db_copy.copy_database(db_url, roundabout)
    parsed = make_url(pg_url)
    spelled_otherwise = parsed.set(host="localhost", password="pw").render_as_string(False)
    with pytest.raises(InvalidInput, match="same database"):
        await db_copy.copy_database(pg_url, spelled_otherwise)


async def test_a_source_behind_head_is_refused_untouched(tmp_path: Path, pg_empty_url: str) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0008")
    digest = file_digest(tmp_path / "old.db")

    with pytest.raises(HerdError, match=r"revision 0008.*run any herd command on it to upgrade"):
        await db_copy.copy_database(url, pg_empty_url)

    assert file_digest(tmp_path / "old.db") == digest
    status = await db_copy.database_status(url)
    assert status.revision == "0008" and status.state.startswith("behind")


def test_cli_masks_the_password_and_prints_json(
    tmp_path: Path, pg_empty_url: str, pg_server: Any
) -> None:
    secret = "s3cret-pw"
    herd = HerdCli(tmp_path)
    herd.ok("group", "create", "web", "--policy", "anti-affinity")
    target = make_url(pg_empty_url).set(password=secret).render_as_string(False)

    done = herd.ok("db", "copy", "--to", target, "--json")
    summary = done.json()
    assert summary["tables"]["server_groups"] == 1 and summary["rows"] >= 1
    assert secret not in done.stdout + done.stderr
    assert summary["target"] == make_url(target).render_as_string(hide_password=True)
    assert "server_groups: 1 rows copied" in done.stderr  # progress, on stderr

    again = herd.run("db", "copy", "--to", target)
    line = assert_one_line_error(again, code=4, contains="not empty")
    assert secret not in line and "***" in line

    moved = HerdCli(tmp_path, database_url=target)
    shown = moved.ok("db", "status", "--json").json()
    assert shown["url"] == make_url(target).render_as_string(hide_password=True)
    assert (shown["engine"], shown["tables"]["server_groups"]) == ("postgresql", 1)
    assert secret not in moved.ok("db", "status").stdout
    assert [g["name"] for g in moved.ok("group", "list", "--json").json()] == ["web"]
