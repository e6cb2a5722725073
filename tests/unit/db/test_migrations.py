"""The schema is what the migrations make, so models and migrations must agree."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

import orchestrator.db.models  # noqa: F401  (registers the tables)
from orchestrator.db.migrate import alembic_config, upgrade_to_head
from orchestrator.db.revisions import head_revision
from orchestrator.errors import HerdError


def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'herd.db'}"
    upgrade_to_head(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_every_migration_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'herd.db'}"
    upgrade_to_head(url)
    config = alembic_config(url)
    command.downgrade(config, "base")
    command.upgrade(config, "head")


def test_the_head_read_from_file_names_is_alembics_head(tmp_path: Path) -> None:
    config = alembic_config(f"sqlite:///{tmp_path / 'herd.db'}")
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_a_database_behind_head_is_upgraded_and_one_at_head_is_left_alone(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'herd.db'}"
    upgrade_to_head(url)
    command.downgrade(alembic_config(url), "0004")
    upgrade_to_head(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()
        assert "migrations" in inspect(connection).get_table_names()
    engine.dispose()
    upgrade_to_head(url)  # at head: nothing to do, nothing fails


def test_a_task_running_at_the_upgrade_belongs_to_the_servers_newest_action(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'herd.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0005")
    engine = create_engine(url)
    with engine.begin() as connection:
        for uuid, task in (("u-busy", "migrating"), ("u-idle", None)):
            connection.execute(
                text(
                    "INSERT INTO instances (uuid, name, flavor_name, vcpus, ram_mb, disk_gb, "
                    "image_name, request_spec, vm_state, task_state, power_state) VALUES "
                    "(:uuid, :uuid, 'f', 1, 1, 1, 'i', '{}', 'active', :task, 'running')"
                ),
                {"uuid": uuid, "task": task},
            )
            for action in ("create", "migrate"):
                connection.execute(
                    text(
                        "INSERT INTO instance_actions (instance_uuid, action, request_id) "
                        "VALUES (:uuid, :action, 'req')"
                    ),
                    {"uuid": uuid, "action": action},
                )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        owners = dict(connection.execute(text("SELECT uuid, task_action_id FROM instances")).all())
        newest = connection.execute(
            text("SELECT max(id) FROM instance_actions WHERE instance_uuid = 'u-busy'")
        ).scalar()
    engine.dispose()
    assert owners == {"u-busy": newest, "u-idle": None}


def test_a_database_from_a_newer_herd_is_one_clear_error(tmp_path: Path) -> None:
    """alembic's "Can't locate revision" was an internal error (exit 70)."""
    path = tmp_path / "herd.db"
    upgrade_to_head(f"sqlite:///{path}")
    newer = f"{int(head_revision()) + 1:04d}"
    connection = sqlite3.connect(path)
    connection.execute("UPDATE alembic_version SET version_num = ?", (newer,))
    connection.commit()
    connection.close()
    with pytest.raises(HerdError, match=f"schema revision {newer}, which this herd does not know"):
        upgrade_to_head(f"sqlite:///{path}")


def test_the_task_journal_outlives_its_hosts_and_goes_away_on_downgrade(tmp_path: Path) -> None:
    """A task names its hosts for recovery; deleting a host must not delete the journal
    (nor be refused): the host ids go to NULL. 0008 knows no tasks table."""
    url = f"sqlite:///{tmp_path / 'herd.db'}"
    upgrade_to_head(url)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("PRAGMA foreign_keys=ON"))
        connection.execute(text("INSERT INTO hosts (id, name, address, libvirt_uri, agent_dir, "
            "labels, availability_zone, domain_type_pref, image_source_dirs, max_image_gb, "
            "cpu_ratio, ram_ratio, disk_ratio, reserved_vcpus, reserved_ram_mb, "
            "reserved_disk_gb, enabled, facts, failed_builds, missed_surveys, marked_down, "
            "generation) VALUES (1, 'hv1', 'a', 'qemu:///system', '/var/lib/herd', '{}', "
            "'default', 'auto', '[]', 64, 1, 1, 1, 0, 0, 0, 1, '{}', 0, 0, 0, 0)"))  # fmt: skip
        connection.execute(text("INSERT INTO tasks (kind, instance_uuid, source_host_id, "
            "dest_host_id, step, inputs, claims, state, runner_host, runner_pid, "
            "runner_boot_id, runner_started, generation) VALUES ('migrate', 'u-1', 1, 1, "
            "'copy', '{}', '{}', 'running', 'h', 1, 'b', 12345678901, 0)"))  # fmt: skip
        connection.execute(text("DELETE FROM hosts WHERE id = 1"))
        row = connection.execute(
            text("SELECT source_host_id, dest_host_id, runner_started FROM tasks")
        ).one()
    assert tuple(row) == (None, None, 12345678901)
    command.downgrade(alembic_config(url), "0008")
    with engine.connect() as connection:
        assert "tasks" not in inspect(connection).get_table_names()
    engine.dispose()
