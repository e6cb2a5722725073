"""How a state is coloured and a moment is aged in tables: shared by the rich tables
(cli/output.py) and the quick server listing (cli/server_listing.py), which must not
import rich, so this module imports nothing but the standard library."""

from __future__ import annotations

from datetime import UTC, datetime

STATE_STYLES = {
    "active": "green",
    "running": "green",
    "up": "green",
    "succeeded": "green",
    "building": "yellow",
    "spawning": "yellow",
    "scheduling": "yellow",
    "deleting": "yellow",
    "resized": "cyan",
    "shelved_offloaded": "blue",
    "rescued": "magenta",
    "error": "red",
    "down": "red",
    "failed": "red",
    "deleted": "dim",
    "disabled": "dim",
}


def state_style(value: str) -> str:
    """The style of a state such as ``active`` or ``down: no answer`` ('' for none)."""
    return STATE_STYLES.get(value.split(" ")[0].split(":")[0], "")


def age(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 5400:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"
