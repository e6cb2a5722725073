"""Migration 0010 (unique live server names) on a database that already holds live
servers sharing a name: the oldest keeps it, the others get one of their own, and the
index then holds on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from orchestrator.db.connection import sync_url
from orchestrator.db.migrate import alembic_config
from tests.conftest import selected_engines

INSERT = text(
    "INSERT INTO instances (uuid, name, flavor_name, vcpus, ram_mb, disk_gb, image_name, "
    "request_spec, vm_state, power_state) VALUES "
    "(:uuid, :name, 'f', 1, 1, 1, 'i', '{}', :state, 'running')"
)


@pytest.fixture(params=selected_engines())
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'herd.db'}"
    return request.getfixturevalue("pg_empty_url")


def test_live_servers_sharing_a_name_are_renamed_and_the_name_is_then_unique(
    empty_url: str,
) -> None:
    config = alembic_config(empty_url)
    command.upgrade(config, "0009")
    engine = create_engine(sync_url(empty_url))
    rows = [
        ("aaaaaaaa-0000", "web", "active"),
        ("bbbbbbbb-0000", "web", "active"),
        ("cccccccc-0000", "web", "deleted"),
        ("dddddddd-0000", "db", "active"),
    ]
    with engine.begin() as connection:
        for uuid, name, state in rows:
            connection.execute(INSERT, {"uuid": uuid, "name": name, "state": state})
    command.upgrade(config, "0010")
    with engine.connect() as connection:
        names = dict(connection.execute(text("SELECT uuid, name FROM instances")).all())
    assert names == {
        "aaaaaaaa-0000": "web",  # the oldest keeps it
        "bbbbbbbb-0000": "web-bbbbbbbb",
        "cccccccc-0000": "web",  # deleted: not live, left alone
        "dddddddd-0000": "db",
    }
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(INSERT, {"uuid": "eeee", "name": "db", "state": "building"})
    with engine.begin() as connection:  # a deleted one may share a live one's name
        connection.execute(INSERT, {"uuid": "ffff", "name": "db", "state": "deleted"})
    engine.dispose()
    command.downgrade(config, "0009")
