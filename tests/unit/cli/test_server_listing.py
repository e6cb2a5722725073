"""The quick `server list` (cli/server_listing.py) prints what the normal path prints,
byte for byte, or steps aside and prints nothing."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydantic
import pytest
import yaml

from bench.seed_servers import seed
from orchestrator import config_seen
from orchestrator.cli import server_listing, servers
from orchestrator.cli.output import make_console
from orchestrator.config import load_config
from orchestrator.db.engine import Database
from orchestrator.db.models import Instance, Network, Port, VmState


class Terminal(io.StringIO):
    """A stream rich and the quick path both take for a UTF-8 terminal."""

    encoding = "utf-8"  # type: ignore[assignment]

    def isatty(self) -> bool:
        return True


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the quick path reads the SQLite file itself and steps aside for any
    other engine (test_it_steps_aside_for_what_it_does_not_handle shows it does)."""
    return sqlite_url


@pytest.fixture
async def listing(db: Database, db_url: str, tmp_path: Path, monkeypatch) -> Database:
    """A database of servers in every state, one deleted, one on no host, one with two
    ports; herd's environment pointed at it, with no settings file."""
    monkeypatch.setenv("HERD_DATABASE_URL", db_url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in (*server_listing.RICH_ENVIRONMENT, "HERD_CONFIG", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    await seed(db, 14, hosts=3)
    now = datetime.now(UTC)
    async with db.session() as session:
        gone = Instance(uuid="00000000-0000-4000-8000-00000000dead", name="gone",
                        flavor_name="m1.tiny", vcpus=1, ram_mb=64, disk_gb=1, image_name="cirros",
                        vm_state=VmState.DELETED, created_at=now - timedelta(days=3),
                        deleted_at=now, request_spec={"hints": {"group": "g"}})  # fmt: skip
        homeless = Instance(uuid="00000000-0000-4000-8000-000000000001", name="homeless",
                            flavor_name="m1.tiny", vcpus=1, ram_mb=64, disk_gb=1, image_name="cirros",
                            vm_state=VmState.ERROR, created_at=now)  # fmt: skip
        second = Network(name="b-net", kind="bridge", source="br-b", cidr="10.8.0.0/24")
        session.add_all([gone, homeless, second])
        await session.flush()
        session.add_all([
            Port(instance_uuid=homeless.uuid, network_id=second.id or 0, mac="52:54:00:aa:00:01",
                 ip=None, device_index=1),
            Port(instance_uuid=homeless.uuid, network_id=second.id or 0, mac="52:54:00:aa:00:02",
                 ip="10.8.0.9", device_index=0),
        ])  # fmt: skip
    return db


def normal_table(monkeypatch, stream: io.StringIO, *, all_: bool = False) -> str:
    monkeypatch.setattr(servers, "out", make_console(stream))
    servers.list_(all_=all_, as_json=False)
    return stream.getvalue()


def normal_json(capsys, *, all_: bool = False) -> list:
    servers.list_(all_=all_, as_json=True)
    return json.loads(capsys.readouterr().out)


def quick(capsys, *args: str) -> str:
    assert server_listing.answer(list(args)) is True
    return capsys.readouterr().out


@pytest.mark.parametrize("all_", [False, True])
def test_the_table_for_a_pipe_is_the_normal_paths(listing, monkeypatch, capsys, all_) -> None:
    expected = normal_table(monkeypatch, io.StringIO(), all_=all_)
    got = quick(capsys, *(["--all"] if all_ else []))
    assert got == expected
    assert ("gone" in got) is all_ and "homeless" in got and "b-net=10.8.0.9" in got


def test_the_coloured_table_for_a_terminal_is_the_normal_paths(listing, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "240")
    expected = normal_table(monkeypatch, Terminal())
    assert "\x1b[32m" in expected and "\x1b[1m" in expected  # rich did colour it
    servers_now = server_listing._read(
        Path(os.environ["HERD_DATABASE_URL"].removeprefix("sqlite:///")), include_deleted=False
    )
    assert servers_now is not None
    stream = Terminal()
    assert server_listing._print_table(servers_now, stream) is True
    assert stream.getvalue() == expected


@pytest.mark.parametrize("all_", [False, True])
def test_json_is_the_normal_paths(listing, capsys, all_) -> None:
    expected = normal_json(capsys, all_=all_)
    got = json.loads(quick(capsys, "--json", *(["--all"] if all_ else [])))
    assert got == expected
    assert len(got) == (16 if all_ else 15)


def test_an_empty_listing_is_the_normal_paths(db, db_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HERD_DATABASE_URL", db_url)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("COLUMNS", raising=False)
    assert quick(capsys) == normal_table(monkeypatch, io.StringIO())
    assert json.loads(quick(capsys, "--json")) == []


def test_a_table_wider_than_the_terminal_is_left_to_rich(listing, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    assert server_listing.answer([]) is False
    assert capsys.readouterr().out == ""


def test_it_steps_aside_for_what_it_does_not_handle(listing, monkeypatch, capsys) -> None:
    url = os.environ["HERD_DATABASE_URL"]
    assert server_listing.answer(["--long"]) is False  # typer says what is wrong
    assert server_listing.answer(["--json", "--json"]) is False
    monkeypatch.setenv("HERD_DATABASE_URL", "postgresql://herd@127.0.0.1/herd")
    assert server_listing.answer([]) is False
    monkeypatch.setenv("HERD_DATABASE_URL", url + "-missing")
    assert server_listing.answer([]) is False  # the normal path creates it
    monkeypatch.setenv("HERD_DATABASE_URL", url)
    monkeypatch.setenv("NO_COLOR", "1")
    assert server_listing.answer([]) is False
    monkeypatch.delenv("NO_COLOR")
    assert capsys.readouterr().out == ""


def test_a_schema_of_another_revision_goes_the_normal_way(listing, capsys) -> None:
    path = os.environ["HERD_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0008'")
    assert server_listing.answer([]) is False
    assert capsys.readouterr().out == ""


def test_a_control_character_is_shown_escaped_as_rich_shows_it(listing, monkeypatch, capsys):
    path = os.environ["HERD_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE instances SET name = 'evil\x1b]0;x' WHERE name = 'homeless'")
    got = quick(capsys)
    assert "evil\\x1b]0;x" in got and "\x1b" not in got
    assert got == normal_table(monkeypatch, io.StringIO())


def test_a_wide_character_is_left_to_rich(listing, capsys) -> None:
    path = os.environ["HERD_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE instances SET name = '服务器' WHERE name = 'homeless'")
    assert server_listing.answer([]) is False
    assert capsys.readouterr().out == ""
    assert json.loads(quick(capsys, "--json"))  # JSON has no layout to get wrong


def test_a_settings_file_is_trusted_once_herd_accepted_it_as_it_is(
    listing, tmp_path, capsys
) -> None:
    settings = tmp_path / "config" / "herd" / "config.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text("scheduler:\n  max_attempts: 5\n")
    assert server_listing.answer([]) is False  # never read: the normal path checks it
    load_config()
    assert server_listing.answer([]) is True
    settings.write_text("scheduler:\n  max_attempts: 0\n")
    assert server_listing.answer([]) is False  # changed since: checked again (and refused)
    capsys.readouterr()


def test_a_settings_file_judged_by_other_code_is_checked_again(listing, tmp_path, capsys):
    """A herd upgraded (or a checkout moved) since may refuse what the old one took."""
    settings = tmp_path / "config" / "herd" / "config.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text("reconcile: {}\n")
    rules = tmp_path / "rules.py"
    rules.write_text("STRICT = False\n")
    config_seen.remember_accepted(settings, settings.read_bytes(), [rules])
    assert server_listing.answer([]) is True
    capsys.readouterr()
    rules.write_text("STRICT = True\n")
    assert server_listing.answer([]) is False
    rules.unlink()
    assert server_listing.answer([]) is False
    assert capsys.readouterr().out == ""


def test_herd_remembers_the_code_that_accepted_a_settings_file(listing, tmp_path) -> None:
    settings = tmp_path / "config" / "herd" / "config.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text("scheduler:\n  max_attempts: 5\n")
    load_config()
    (mark,) = (tmp_path / "cache" / "herd" / "settings").iterdir()
    judged = {Path(line.split(" ", 2)[2]) for line in mark.read_text().splitlines()}
    package = Path(config_seen.__file__).parent
    for module in ("config.py", "scheduler/config.py", "reconcile/config.py",
                   "inventory/source.py"):  # fmt: skip
        assert package / module in judged
    assert Path(pydantic.__file__) in judged and Path(yaml.__file__) in judged


def test_a_cut_or_empty_mark_trusts_nothing(listing, tmp_path) -> None:
    settings = tmp_path / "config" / "herd" / "config.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text("reconcile: {}\n")
    config_seen.remember_accepted(settings, settings.read_bytes(), [])
    assert config_seen.accepted() is False  # as a mark of the herd before this one
    load_config()
    (mark,) = (tmp_path / "cache" / "herd" / "settings").iterdir()
    assert config_seen.accepted() is True
    mark.write_text(mark.read_text()[:-10])
    assert config_seen.accepted() is False


@pytest.mark.parametrize("settings", [False, True])
def test_herd_server_list_imports_no_orm_rich_typer_or_ssh(tmp_path: Path, settings) -> None:
    url = f"sqlite:///{tmp_path / 'herd.db'}"
    env = {**os.environ, "HERD_DATABASE_URL": url, "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "c")}  # fmt: skip
    env.pop("COLUMNS", None)
    env.pop("HERD_CONFIG", None)
    if settings:  # the first run below reads and accepts it, the second trusts that
        (tmp_path / "c" / "herd").mkdir(parents=True)
        (tmp_path / "c" / "herd" / "config.yaml").write_text("scheduler:\n  max_attempts: 4\n")
    herd = [sys.executable, "-m", "orchestrator"]
    subprocess.run([*herd, "server", "list"], env=env, check=True, capture_output=True)  # migrates
    probe = (
        "import sys; sys.argv = ['herd', 'server', 'list', '--json']\n"
        "from orchestrator.cli.main import run\nrun()\n"
        "sys.stderr.write(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert json.loads(done.stdout) == []
    modules = set(done.stderr.split())
    heavy = ("sqlalchemy", "sqlmodel", "alembic", "asyncssh", "rich", "typer", "pydantic", "yaml")
    assert sorted(m for m in modules if m.split(".")[0] in heavy) == []


def _herd_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HERD_DATABASE_URL": f"sqlite:///{tmp_path / 'herd.db'}",
           "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "c")}  # fmt: skip
    env.pop("HERD_CONFIG", None)
    return env


def _herd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("damage", ["newer revision", "corrupt pages"])
def test_a_database_it_cannot_read_is_the_normal_paths_one_line_error(tmp_path, damage):
    env = _herd_env(tmp_path)
    assert _herd(env, "server", "list").returncode == 0  # creates and migrates it
    path = tmp_path / "herd.db"
    if damage == "newer revision":
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE alembic_version SET version_num = '9999'")
        says = "schema revision 9999, which this herd does not know"
    else:
        content = bytearray(path.read_bytes())
        content[100:] = b"\xff" * (len(content) - 100)  # the header kept, the pages gone
        path.write_bytes(bytes(content))
        says = "database disk image is malformed"
    normal = _herd(env, "host", "list")  # never the quick path
    for args in (("server", "list"), ("server", "list", "--json")):
        done = _herd(env, *args)
        assert (done.returncode, done.stdout, done.stderr) == (
            normal.returncode,
            "",
            normal.stderr,
        ), args
    assert normal.returncode != 0 and len(normal.stderr.splitlines()) == 1
    assert says in normal.stderr and "Traceback" not in normal.stderr
