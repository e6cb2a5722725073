"""`herd server list` in a tenth of the time: SQLite read with the standard library,
the table drawn without rich, when nothing asks for more.

An operator (or a script polling) lists servers far more often than anything else, and
the normal path spends three quarters of a second importing typer, SQLAlchemy, the
models and rich before it reads a row. For the common case — an SQLite database at
this herd's schema revision, `server list` with at most ``--all`` and ``--json``, a
settings file already accepted (config_seen.py), a plain one-line table that fits the
terminal — this module answers alone and prints what the normal path would, byte for
byte (tests/unit/cli/test_server_listing.py holds the two equal). Anything else
returns False, and the normal path answers, errors and upgrades included.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from orchestrator import config_seen
from orchestrator.cli.escape import visible
from orchestrator.cli.states import age, state_style
from orchestrator.db.revisions import head_revision
from orchestrator.local_files import withdraw_from_others, xdg_dir

OPTIONS = {"--all", "--json"}
COLUMNS = (
    "name", "uuid", "host", "vm_state", "task_state", "power", "networks", "flavor",
    "image", "age",
)  # fmt: skip
SQLITE_HEADER = b"SQLite format 3\x00"
# SGR codes rich writes for the styles a listing uses, on every colour system.
SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
# Settings of the environment under which rich's idea of the terminal differs from ours.
RICH_ENVIRONMENT = (
    "FORCE_COLOR",
    "NO_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "JUPYTER_COLUMNS",
)

SERVERS = """
SELECT i.uuid, i.name, h.name, i.vm_state, i.task_state, i.power_state, i.flavor_name,
       i.image_name, i.vcpus, i.ram_mb, i.disk_gb, i.hostname, i.key_name,
       i.request_spec, i.created_at, i.launched_at, i.deleted_at
FROM instances AS i LEFT JOIN hosts AS h ON h.id = i.host_id
{where}
ORDER BY i.name, i.created_at
"""
PORTS = """
SELECT p.instance_uuid, n.name, p.mac, p.ip, n.cidr, n.gateway
FROM ports AS p JOIN networks AS n ON n.id = p.network_id
ORDER BY p.device_index
"""


def answer(args: Sequence[str]) -> bool:
    """Print the listing `herd server list ARGS` asks for and return True, or return
    False without printing anything: the normal path's case."""
    if not set(args) <= OPTIONS or len(set(args)) != len(args):
        return False
    path = _database_file()
    if path is None or not config_seen.accepted():
        return False
    try:
        servers = _read(path, include_deleted="--all" in args)
    except (sqlite3.Error, OSError, ValueError):
        return False  # the normal path says what is wrong, in its words
    if servers is None:
        return False
    if "--json" in args:
        sys.stdout.write(json.dumps(servers, indent=2) + "\n")
        return True
    return _print_table(servers, sys.stdout)


def _database_file() -> Path | None:
    """The SQLite file herd's URL names, if it is a plain absolute one that exists."""
    url = os.environ.get("HERD_DATABASE_URL")
    if not url:
        data_home = xdg_dir("XDG_DATA_HOME", Path.home() / ".local" / "share")
        path = data_home / "herd" / "herd.db"
    elif url.startswith("sqlite:////") and not any(c in url for c in "?%#"):
        path = Path(url.removeprefix("sqlite:///"))
    else:
        return None  # PostgreSQL, a driver, a query, an escape: SQLAlchemy reads those
    try:
        with open(path, "rb") as fh:
            if fh.read(len(SQLITE_HEADER)) != SQLITE_HEADER or not path.is_file():
                return None
    except OSError:
        return None
    return path


def _read(path: Path, *, include_deleted: bool) -> list[dict[str, Any]] | None:
    """Every server as `server list --json` gives it; None if the schema is not this
    herd's (the normal path upgrades it, or refuses a newer one)."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        withdraw_from_others(file)  # as the normal path does on every open
    # mode=rw: never create the file; the reads begin DEFERRED and wait for no writer (WAL).
    uri = f"file:{quote(str(path))}?mode=rw"
    connection = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout=30000")
        connection.execute("BEGIN DEFERRED")
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        if revision != head_revision():
            return None
        where = "" if include_deleted else "WHERE i.vm_state != 'deleted'"
        rows = connection.execute(SERVERS.format(where=where)).fetchall()
        ports: dict[str, list[dict[str, Any]]] = {}
        for uuid, network, mac, ip, cidr, gateway in connection.execute(PORTS):
            ports.setdefault(uuid, []).append(
                {"network": network, "mac": mac, "ip": ip, "cidr": cidr, "gateway": gateway}
            )
        connection.execute("COMMIT")
    finally:
        connection.close()
    return [_document(row, ports.get(row[0], [])) for row in rows]


def _document(row: tuple[Any, ...], ports: list[dict[str, Any]]) -> dict[str, Any]:
    """One server as api.server_dict writes it for a listing (no group looked up)."""
    (uuid, name, host, vm_state, task_state, power_state, flavor, image, vcpus, ram_mb,
     disk_gb, hostname, key_name, request_spec, created, launched, deleted) = row  # fmt: skip
    return {
        "uuid": uuid, "name": name, "host": host, "vm_state": vm_state,
        "task_state": task_state, "power_state": power_state, "flavor": flavor,
        "image": image, "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb,
        "group": None, "hostname": hostname, "key_name": key_name, "addresses": ports,
        "request_spec": json.loads(request_spec) if request_spec is not None else None,
        "created_at": _timestamp(created), "launched_at": _timestamp(launched),
        "deleted_at": _timestamp(deleted),
    }  # fmt: skip


def _timestamp(stored: str | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME text read back as it reads it, then isoformat()."""
    return None if stored is None else datetime.fromisoformat(stored).isoformat()


def _cells(server: dict[str, Any]) -> list[tuple[str, str]]:
    """A server's row as (text, style): what cli/servers.py puts in the rich table."""
    networks = ", ".join(f"{p['network']}={p['ip'] or p['mac']}" for p in server["addresses"])
    created = server["created_at"]
    values = (
        server["name"], server["uuid"], server["host"], server["vm_state"],
        server["task_state"], server["power_state"], networks, server["flavor"],
        server["image"], age(datetime.fromisoformat(created) if created else None),
    )  # fmt: skip
    cells = [("-" if v is None else visible(str(v)), "") for v in values]
    if server["vm_state"] is not None:
        cells[3] = (cells[3][0], state_style(server["vm_state"]))
    return cells


def _terminal(stream: IO[str]) -> tuple[bool, int] | None:
    """Whether rich would colour ``stream`` and how wide it would draw; None where its
    answer could differ from this guess."""
    if any(name in os.environ for name in RICH_ENVIRONMENT):
        return None
    if (getattr(stream, "encoding", "") or "").lower().replace("-", "") != "utf8":
        return None  # rich would draw an ASCII box
    tty = stream.isatty()
    columns = os.environ.get("COLUMNS")
    if columns is not None:
        if not columns.isdigit():
            return None
        width = int(columns)
    elif tty:
        try:
            width = os.get_terminal_size(stream.fileno()).columns
        except OSError:
            return None
    else:
        width = 200  # cli/output.py's width for a pipe
    if tty and os.environ.get("TERM", "") in ("dumb", "unknown"):
        return None
    return tty, width


def _print_table(servers: list[dict[str, Any]], stream: IO[str]) -> bool:
    """rich's HEAVY_HEAD table of one-line ASCII cells, as cli/plaintable.py lays it out."""
    terminal = _terminal(stream)
    if terminal is None:
        return False
    colour, width = terminal
    rows = [_cells(s) for s in servers]
    if any(not (text.isascii() and text.isprintable()) for row in rows for text, _ in row):
        return False
    widths = [max([len(c)] + [len(row[i][0]) for row in rows]) + 2 for i, c in enumerate(COLUMNS)]
    if sum(widths) + len(widths) + 1 > width:
        return False  # rich would wrap or shrink the columns

    def paint(text: str, style: str) -> str:
        if not (colour and style):
            return text
        return f"\x1b[{SGR[style]}m{text}\x1b[0m"

    lines = ["┏" + "┳".join("━" * w for w in widths) + "┓"]
    lines.append(
        "┃" + "┃".join(
            paint(" ", "bold") + paint(c.ljust(w - 2), "bold") + paint(" ", "bold")
            for c, w in zip(COLUMNS, widths, strict=True)
        ) + "┃"
    )  # fmt: skip
    lines.append("┡" + "╇".join("━" * w for w in widths) + "┩")
    for row in rows:
        lines.append(
            "│" + "│".join(
                " " + paint(text.ljust(w - 2), style) + " "
                for (text, style), w in zip(row, widths, strict=True)
            ) + "│"
        )  # fmt: skip
    lines.append("└" + "┴".join("─" * w for w in widths) + "┘")
    stream.write("\n".join(lines) + "\n")
    return True
