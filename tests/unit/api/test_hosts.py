"""The hosts API without the CLI: found by name in the order asked, enabled and disabled
with the reason stored where the scheduler and `herd inventory apply` read it."""

from __future__ import annotations

import pytest
from sqlmodel import select

from orchestrator.api import hosts as hosts_api
from orchestrator.db.engine import Database
from orchestrator.db.models import Host
from orchestrator.errors import NotFound
from tests.unit.conftest import AddHost


async def stored(db: Database, name: str) -> Host:
    async with db.read() as session:
        host = (await session.exec(select(Host).where(Host.name == name))).one()
    return host


async def test_disable_stores_the_reason_and_says_it_changed(
    db: Database, add_host: AddHost
) -> None:
    await add_host("h1")
    done = await hosts_api.set_enabled(db, "h1", False, "disk swap")
    assert done == hosts_api.EnabledChange("h1", False, "disk swap", changed=True)
    host = await stored(db, "h1")
    assert (host.enabled, host.disabled_reason) == (False, "disk swap")


async def test_a_disable_without_a_reason_still_stores_one(db: Database, add_host: AddHost) -> None:
    await add_host("h1")
    done = await hosts_api.set_enabled(db, "h1", False, None)
    assert done.disabled_reason == "disabled by an operator"
    assert (await stored(db, "h1")).disabled_reason == "disabled by an operator"


async def test_enable_forgets_the_reason_and_twice_changes_nothing(
    db: Database, add_host: AddHost
) -> None:
    await add_host("h1", enabled=False, disabled_reason="disk swap")
    first = await hosts_api.set_enabled(db, "h1", True, None)
    assert first == hosts_api.EnabledChange("h1", True, None, changed=True)
    second = await hosts_api.set_enabled(db, "h1", True, None)
    assert second.changed is False
    host = await stored(db, "h1")
    assert (host.enabled, host.disabled_reason) == (True, None)


async def test_an_unknown_host_is_not_found_and_nothing_is_written(
    db: Database, add_host: AddHost
) -> None:
    await add_host("h1")
    with pytest.raises(NotFound, match="host 'nope' not found"):
        await hosts_api.set_enabled(db, "nope", False, "x")
    assert (await stored(db, "h1")).enabled is True


async def test_find_hosts_keeps_the_order_asked_and_names_the_known_on_a_miss(
    db: Database, add_host: AddHost
) -> None:
    await add_host("a")
    await add_host("b")
    assert [h.name for h in await hosts_api.find_hosts(db, ["b", "a"])] == ["b", "a"]
    assert [h.name for h in await hosts_api.find_hosts(db, None)] == ["a", "b"]
    with pytest.raises(NotFound, match=r"host 'c' not found \(known: .*a.*b"):
        await hosts_api.find_hosts(db, ["a", "c"])
