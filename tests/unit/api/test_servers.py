"""The API validates before it writes: names, flavors, images, duplicates."""

from __future__ import annotations

import pytest

from orchestrator.api import servers as servers_api
from orchestrator.db.engine import Database
from orchestrator.errors import Conflict, InvalidInput, NotFound


@pytest.mark.usefixtures("catalog")
async def test_create_writes_building_rows_with_an_action(db: Database) -> None:
    created = await servers_api.create_servers(
        db, servers_api.CreateRequest("web", "small", "cirros", 3)
    )
    assert [i.name for i in created] == ["web-1", "web-2", "web-3"]
    view = await servers_api.show_server(db, "web-2")
    assert view.instance.vm_state == "building" and view.instance.task_state == "scheduling"
    assert [a.action for a, _ in view.actions] == ["create"]


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    ("request_", "error", "text"),
    [
        pytest.param(servers_api.CreateRequest("x", "nope", "cirros"), NotFound, "flavor 'nope' not found (known: big, small)", id="unknown-flavor"),
        pytest.param(servers_api.CreateRequest("x", "small", "nope"), NotFound, "image 'nope' not found (known: cirros, fat)", id="unknown-image"),
        pytest.param(servers_api.CreateRequest("bad name", "small", "cirros"), InvalidInput, "server name 'bad name' is invalid", id="bad-name"),
        pytest.param(servers_api.CreateRequest("x", "small", "cirros", 0), InvalidInput, "--count must be between", id="zero-count"),
        pytest.param(servers_api.CreateRequest("x", "small", "fat"), InvalidInput, "needs at least 4096 MiB", id="image-min-ram"),
    ],
)  # fmt: skip
async def test_bad_requests_are_refused_before_writing(db: Database, request_, error, text) -> None:
    with pytest.raises(error) as caught:
        await servers_api.create_servers(db, request_)
    assert text in str(caught.value)
    assert await servers_api.list_servers(db) == []


@pytest.mark.usefixtures("catalog")
async def test_duplicate_names_are_refused(db: Database) -> None:
    await servers_api.create_servers(db, servers_api.CreateRequest("web", "small", "cirros", 2))
    with pytest.raises(Conflict, match="a server named 'web-1' already exists"):
        await servers_api.create_servers(db, servers_api.CreateRequest("web", "small", "cirros", 3))
    assert len(await servers_api.list_servers(db)) == 2


@pytest.mark.usefixtures("catalog")
async def test_find_by_uuid_or_name(db: Database) -> None:
    (one,) = await servers_api.create_servers(
        db, servers_api.CreateRequest("solo", "small", "cirros")
    )
    assert (await servers_api.find_servers(db, [one.uuid]))[0].name == "solo"
    with pytest.raises(NotFound, match="server 'ghost' not found"):
        await servers_api.find_servers(db, ["ghost"])
