"""Names operators give (servers, groups, and whatever else calls names.check_name) match
as a whole: `group create $'db\\n'` made a second group that listings showed as "db"."""

from __future__ import annotations

import pytest

from orchestrator.api import groups as groups_api
from orchestrator.api import servers as servers_api
from orchestrator.db.engine import Database
from orchestrator.errors import InvalidInput
from orchestrator.names import check_name

BAD_NAMES = [
    pytest.param("db\n", id="trailing-newline"),
    pytest.param("db\r\n", id="trailing-crlf"),
    pytest.param("db\nweb", id="second-line"),
    pytest.param("", id="empty"),
    pytest.param("-db", id="leading-dash"),
    pytest.param("d" * 64, id="too-long"),
    pytest.param("db x", id="space"),
    pytest.param("../db", id="path"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses_what_is_not_a_whole_name(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_name("thing", name)
    assert str(caught.value).startswith(f"thing name {name!r} is invalid: use letters")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["db", "web-1", "a.b_c", "d" * 63, "0"])
def test_check_name_returns_a_good_name(name: str) -> None:
    assert check_name("thing", name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_group_name_with_a_line_break_is_refused_and_nothing_written(
    db: Database, name: str
) -> None:
    await groups_api.create_group(db, "db", "anti-affinity")
    with pytest.raises(InvalidInput, match=r"group name .* is invalid"):
        await groups_api.create_group(db, name, "anti-affinity")
    assert [view.group.name for view in await groups_api.list_groups(db)] == ["db"]


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_server_name_with_a_line_break_is_refused_and_nothing_written(
    db: Database, name: str
) -> None:
    with pytest.raises(InvalidInput, match=r"server name .* is invalid"):
        await servers_api.create_servers(db, servers_api.CreateRequest(name, "small", "cirros"))
    assert await servers_api.list_servers(db) == []
