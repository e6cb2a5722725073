"""The names operators give things: servers, server groups, key pairs.

One rule, matched against the whole value: ``re.match`` with ``$`` also accepts a
trailing newline, which once made `herd group create $'db\\n'` a second group that
every listing showed as "db". Names become guest hostnames, file names and table
cells, so they stay one short word. Inventory names (flavors, images, networks) are
checked with ``is_name`` too.
"""

from __future__ import annotations

import re

from orchestrator.errors import InvalidInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_RULE = (
    "use letters, digits, '.', '_' or '-', start with a letter or digit, at most 63 characters"
)


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid name, else ``InvalidInput`` naming the ``kind``
    ("server", "group", "key pair")."""
    if not is_name(value):
        # A 5,000-character name is not echoed back whole.
        shown = repr(value) if len(value) <= 64 else f"{value[:64]!r}... ({len(value)} characters)"
        raise InvalidInput(f"{kind} name {shown} is invalid: {NAME_RULE}")
    return value


def choices(names: list[str]) -> str:
    """The names an operator could have meant, for a "not found" message."""
    return ", ".join(sorted(names)) if names else "none defined; run `herd inventory apply`"
