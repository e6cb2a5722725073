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
from orchestrator.db.migrate import alembic_config, head_revision, upgrade_to_head
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
