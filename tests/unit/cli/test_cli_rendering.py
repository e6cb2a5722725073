"""Stored strings are data, never markup: whatever a user or a host put in a name, a
label, an extra spec, a property, a fault or an agent error is shown as written (control
characters escaped), and no listing fails because of it.

Rich reads ``[/x]`` as a closing tag (MarkupError: the command exited 70 for everyone),
``[bold]`` and ``[link=...]`` as styling and hyperlinks, ``:thumbs_up:`` as an emoji;
an escape sequence would reach the operator's terminal as is.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.api import console as console_module
from orchestrator.api.console import ConsoleLog
from orchestrator.api.images import CacheEntry, CacheSurvey
from orchestrator.cli import catalog, explain, main, progress
from orchestrator.cli import reconcile as reconcile_cli
from orchestrator.cli.output import make_console, table, visible
from orchestrator.db.engine import Database
from orchestrator.db.models import (
    AgentJob,
    Flavor,
    Host,
    Image,
    Instance,
    InstanceAction,
    InstanceActionEvent,
    InstanceFault,
    KeyPair,
    Network,
    Port,
    ServerGroup,
    utcnow,
)
from orchestrator.errors import HostUnreachable
from orchestrator.reconcile.drift import Finding
from orchestrator.reconcile.reconciler import RunReport
from orchestrator.scheduler.engine import HostVerdict
from orchestrator.scheduler.scheduler import Plan
from tests.e2e.herdcli import HerdCli

CLOSE = "[/oops]"
BOLD = "[bold]b"
LINK = "[link=file:///etc/passwd]x[/link]"
EMOJI = ":thumbs_up:"
TITLE = "\x1b]0;pwned\x07"  # OSC: retitles the terminal
RED = "\x1b[31mred"
HOSTILE = (CLOSE, BOLD, LINK, EMOJI)
SERVER_UUID = str(uuid.UUID(int=12))

INVENTORY = f"""\
flavors:
  - name: m1
    vcpus: 1
    ram_mb: 128
    disk_gb: 1
    extra_specs: {{"label:rack": "{CLOSE}", "note": "{LINK}"}}
images:
  - name: blank
    source: https://example.invalid/blank.qcow2
    properties: {{"note": "{BOLD}", "other": "{EMOJI}"}}
hosts:
  - name: hv1
    address: 127.0.0.1
    labels: {{rack: "{CLOSE}", tag: "{LINK}"}}
"""


async def _store_hostile_rows(url: str) -> None:
    """What validation would refuse today is still written here, at the DB level: old
    rows, another herd, an agent's or libvirt's own words."""
    db = Database(url)
    try:
        async with db.session() as s:
            host = Host(
                name=CLOSE, address="127.0.0.1", ssh_port=1, domain_type=BOLD, last_error=LINK
            )
            s.add(host)
            s.add(Flavor(name=CLOSE, vcpus=1, ram_mb=128, disk_gb=1, extra_specs={BOLD: LINK}))
            s.add(Image(name=CLOSE, source=BOLD, properties={EMOJI: LINK}, managed_by="cli"))
            s.add(KeyPair(name=CLOSE, public_key="ssh-ed25519 AAAA", fingerprint=LINK))
            s.add(ServerGroup(name=BOLD, policy=CLOSE))
            network = Network(name=CLOSE, kind="bridge", source=LINK, cidr=BOLD)
            s.add(network)
            await s.flush()
            s.add(
                Instance(
                    uuid=SERVER_UUID,
                    name=CLOSE,
                    flavor_name=BOLD,
                    vcpus=1,
                    ram_mb=128,
                    disk_gb=1,
                    image_name=LINK,
                    host_id=host.id,
                    hostname=EMOJI,
                    key_name=CLOSE,
                    vm_state="error",
                    task_state=LINK,
                    power_state=BOLD,
                    created_at=utcnow(),
                )
            )
            s.add(Port(instance_uuid=SERVER_UUID, network_id=network.id, mac="02:68:64:00:00:01"))
            s.add(
                InstanceFault(instance_uuid=SERVER_UUID, message=f"{CLOSE} {TITLE}{RED}", host=BOLD)
            )
            action = InstanceAction(
                instance_uuid=SERVER_UUID,
                action=CLOSE,
                request_id=BOLD,
                message=LINK,
                start_time=utcnow(),
            )
            s.add(action)
            await s.flush()
            s.add(
                InstanceActionEvent(
                    action_id=action.id, event=CLOSE, host=BOLD, result=LINK, details=EMOJI
                )
            )
            s.add(
                AgentJob(
                    id=str(uuid.uuid4()),
                    host_id=host.id,
                    instance_uuid=SERVER_UUID,
                    op=CLOSE,
                    state=BOLD,
                    error=LINK,
                )
            )
    finally:
        await db.dispose()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdCli]:
    home = tmp_path_factory.mktemp("hostile")
    herd = HerdCli(home)
    herd.env["COLUMNS"] = "4000"  # one line per row: the strings are found whole
    inventory = home / "inventory.yaml"
    inventory.write_text(INVENTORY)
    herd.ok("inventory", "apply", str(inventory))
    asyncio.run(_store_hostile_rows(herd.env["HERD_DATABASE_URL"]))
    yield herd


LISTINGS = {
    "server list": (("server", "list"), (CLOSE, BOLD, LINK)),
    "server list --all": (("server", "list", "--all"), (CLOSE, BOLD, LINK)),
    "server show": (("server", "show", SERVER_UUID), (CLOSE, BOLD, LINK, EMOJI)),
    "server actions": (("server", "actions", SERVER_UUID), (CLOSE, BOLD, LINK, EMOJI)),
    "flavor list": (("flavor", "list"), (CLOSE, BOLD, LINK)),
    "image list": (("image", "list"), (CLOSE, BOLD, LINK, EMOJI)),
    "image show": (("image", "show", CLOSE), (CLOSE, BOLD, LINK, EMOJI)),
    "image show blank": (("image", "show", "blank"), (BOLD, EMOJI)),
    "keypair list": (("keypair", "list"), (CLOSE, LINK)),
    "network list": (("network", "list"), (CLOSE, BOLD, LINK)),
    "group list": (("group", "list"), (CLOSE, BOLD)),
    "host list": (("host", "list"), (CLOSE, BOLD)),
}


@pytest.mark.parametrize("case", LISTINGS, ids=list(LISTINGS))
def test_listings_show_stored_strings_as_written(hostile: HerdCli, case: str) -> None:
    args, expected = LISTINGS[case]
    result = hostile.run(*args)
    assert result.code == 0, result.stderr
    for value in expected:
        assert value in result.stdout, f"{value!r} not shown by herd {' '.join(args)}"
    assert "👍" not in result.stdout  # :thumbs_up: stays text


def test_a_fault_never_sends_escape_sequences_to_the_terminal(hostile: HerdCli) -> None:
    shown = hostile.ok("server", "show", SERVER_UUID).stdout
    assert "\x1b" not in shown and "\x07" not in shown
    assert visible(TITLE + RED) in shown  # \x1b]0;pwned\x07\x1b[31mred, visibly


def test_server_create_progress_and_its_error_survive_stored_markup(hostile: HerdCli) -> None:
    """The no-valid-host path prints progress lines, the fault and the hosts' reasons,
    which name the host whose name and error are markup."""
    result = hostile.run("server", "create", "x", "--flavor", CLOSE, "--image", CLOSE)
    assert result.code == 5, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "x: " in result.stderr  # the progress lines were printed
    assert CLOSE in result.stderr  # the host named [/oops] is in the reasons
    shown = hostile.ok("server", "show", "x").stdout
    assert "no valid host" in shown


def test_an_error_message_shows_control_characters_escaped(hostile: HerdCli) -> None:
    result = hostile.run("server", "show", RED)
    assert result.code == 3
    assert "\x1b" not in result.stderr
    assert "\\x1b[31mred" in result.stderr


def _render(renderable: object, *, terminal: bool = False) -> str:
    buffer = io.StringIO()
    make_console(buffer, terminal=terminal).print(renderable)
    return buffer.getvalue()


def test_table_cells_and_titles_are_text() -> None:
    rendered = _render(table(CLOSE, ("a", "b"), [(BOLD, LINK), (EMOJI, None), (RED, 3)]))
    for value in (CLOSE, BOLD, LINK, EMOJI, "\\x1b[31mred"):
        assert value in rendered
    assert "\x1b" not in rendered


def test_printed_strings_are_text_even_on_a_terminal() -> None:
    rendered = _render(f"server {CLOSE} {BOLD} {LINK} {EMOJI} {TITLE}", terminal=True)
    assert f"server {CLOSE} {BOLD} {LINK} {EMOJI} \\x1b]0;pwned\\x07" in rendered
    assert "\x1b]8;" not in rendered  # no hyperlink escape was made from [link=...]


@pytest.mark.parametrize("terminal", [False, True], ids=["log lines", "live table"])
def test_live_progress_shows_names_and_details_as_text(
    monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(progress, "err", make_console(buffer, terminal=terminal))
    instance = Instance(uuid=SERVER_UUID, name=CLOSE, flavor_name="f", vcpus=1, ram_mb=1,
                        disk_gb=1, image_name="i")  # fmt: skip
    with progress.LiveProgress(f"Creating {BOLD}") as live:
        live.update(instance, "building", host=LINK)
        live.update(instance, f"error: {CLOSE}", detail=f"{EMOJI} {RED}")
    shown = buffer.getvalue()
    for value in (CLOSE, LINK, EMOJI, "\\x1b[31mred"):
        assert value in shown
    if terminal:
        assert BOLD in shown


def test_the_explanation_shows_filters_reasons_and_hosts_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = Plan(
        placements=[],
        unplaced={SERVER_UUID: f"no valid host: {CLOSE}"},
        explanation=[
            HostVerdict(host_name=BOLD, passed=False, filter="labels", reason=f"needs {CLOSE}"),
            HostVerdict(host_name=EMOJI, passed=True, scores={"ram": 1.0}, total=1.0),
        ],
        total_hosts=2,
    )
    buffer = io.StringIO()
    monkeypatch.setattr(explain, "out", make_console(buffer))
    explain.show_plan(plan, {SERVER_UUID: LINK}, as_json=False, explain=True)
    shown = buffer.getvalue()
    for value in (CLOSE, BOLD, LINK, EMOJI):
        assert value in shown


def test_visible_keeps_text_tabs_and_newlines() -> None:
    assert visible("naïve\tline\nnext") == "naïve\tline\nnext"
    assert visible("\x1b[2J\r\x9b\x7f") == "\\x1b[2J\\x0d\\x9b\\x7f"


def test_the_strings_come_back_unchanged_in_json(hostile: HerdCli) -> None:
    (flavor,) = [f for f in hostile.ok("flavor", "list", "--json").json() if f["name"] == "m1"]
    assert flavor["extra_specs"] == {"label:rack": CLOSE, "note": LINK}
    faults = hostile.server(SERVER_UUID)["faults"]
    assert faults[0]["message"] == f"{CLOSE} {TITLE}{RED}"


def test_reconcile_findings_and_cache_tables_show_host_words_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drift details and errors are a host's (or libvirt's) words."""
    buffer = io.StringIO()
    console = make_console(buffer)
    monkeypatch.setattr(reconcile_cli, "out", console)
    monkeypatch.setattr(reconcile_cli, "err", console)
    monkeypatch.setattr(catalog, "err", console)
    finding = Finding(kind="unknown_domain", detail=CLOSE, policy="log", host=BOLD, error=LINK)
    reconcile_cli._show(RunReport([finding], [], 0.1, dry_run=False), verbose=True)
    entry = CacheEntry(
        host=EMOJI, sha256="0" * 64, size=1, last_used=0.0, instances=[], images=[CLOSE]
    )
    console.print(catalog._cache_table(CLOSE, [entry]))
    with pytest.raises(HostUnreachable):
        catalog._unreachable(CacheSurvey(entries=[], unreachable={BOLD: f"{LINK} {RED}"}))
    shown = buffer.getvalue()
    for value in (CLOSE, BOLD, LINK, EMOJI, "\\x1b[31mred"):
        assert value in shown


GUEST_LINES = ["\x1b]0;owned\x07\x1b[2J\x1b[31mred\tcell", "plain line", "bell\x07 and \r cr"]


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "--raw"])
def test_console_log_shows_guest_control_characters_escaped_unless_raw(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, raw: bool
) -> None:
    async def fake_console_log(db: object, pool: object, ref: str, lines: int) -> ConsoleLog:
        return ConsoleLog(ref, "hv1", GUEST_LINES, truncated=False)

    monkeypatch.setenv("HERD_DATABASE_URL", f"sqlite:///{tmp_path / 'herd.db'}")
    monkeypatch.setattr(console_module, "console_log", fake_console_log)
    args = ["server", "console-log", "web", *(["--raw"] if raw else [])]
    result = CliRunner().invoke(main.app, args)
    assert result.exit_code == 0, result.output
    if raw:
        assert result.stdout == "".join(line + "\n" for line in GUEST_LINES)
    else:
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert result.stdout.splitlines() == [
            "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\tcell",
            "plain line",
            "bell\\x07 and \\x0d cr",
        ]


def test_log_lines_show_control_characters_escaped() -> None:
    import logging

    from orchestrator.cli.main import _VisibleFormatter

    record = logging.LogRecord("herd", logging.WARNING, __file__, 1, "agent said %s", (RED,), None)
    line = _VisibleFormatter("%(message)s").format(record)
    assert line == "agent said \\x1b[31mred"
