"""What `herd` imports before it answers: the cheap commands must stay cheap.

Each case runs herd's entry point in a fresh interpreter, as the console script does,
and lists the modules loaded by the time it returned. sqlalchemy alone is half a
second of start-up on a small machine, asyncssh as much; none of them is needed to
print a version or the list of commands.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import app as lazy

HEAVY = (
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "asyncssh",
    "jinja2",
    "yaml",
    "pydantic",
    "rich.table",
)

PROBE = """
import json, sys
sys.argv = ["herd", *json.loads(sys.argv[1])]
from orchestrator.cli.main import run
code = 0
try:
    run()
except SystemExit as exc:
    code = exc.code or 0
sys.stdout.flush()
sys.stderr.write("\\n" + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\\n")
"""


def _imports(args: list[str], home: Path) -> tuple[int, str, set[str]]:
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")}
    env.pop("COLUMNS", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], done.stdout, set(report["modules"])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_version_imports_no_database_ssh_templates_or_tables(tmp_path: Path) -> None:
    code, stdout, modules = _imports(["--version"], tmp_path)
    assert (code, stdout) == (0, "herd 0.1.0\n")
    assert _heavy(modules) == []
    assert "typer" not in modules


@pytest.mark.parametrize("run", ["first", "again"])
def test_help_imports_no_command_module(tmp_path: Path, run: str) -> None:
    if run == "again":
        _imports(["--help"], tmp_path)
    code, stdout, modules = _imports(["--help"], tmp_path)
    assert code == 0
    assert "Usage: herd [OPTIONS] COMMAND [ARGS]..." in stdout
    assert "server" in stdout and "reconcile" in stdout
    assert not [m for m in modules if m.startswith("orchestrator.") and _is_command(m)]
    heavy = _heavy(modules)
    # typer renders the first --help with rich; later ones are the same bytes, cached
    assert heavy == ([] if run == "again" else ["rich.table"])


def _is_command(module: str) -> bool:
    return module.startswith("orchestrator.cli.") and module not in (
        "orchestrator.cli.app",
        "orchestrator.cli.escape",
        "orchestrator.cli.helpcache",
        "orchestrator.cli.main",
    )


def _eager() -> typer.Typer:
    """The tree as it was built before commands were deferred: every module imported."""
    eager = typer.Typer(
        name="herd",
        help=lazy.app.info.help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    eager.callback()(lazy.main)
    for name, (module, attribute, _help) in lazy.COMMANDS.items():
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            eager.add_typer(target, name=name)
        else:
            eager.command(name)(target)
    return eager


@pytest.mark.parametrize("args", [[], *([name] for name in lazy.COMMANDS), ["image", "cache"]])
def test_deferred_commands_show_the_help_the_eager_tree_showed(args: list[str]) -> None:
    runner = CliRunner()
    before = runner.invoke(_eager(), [*args, "--help"], prog_name="herd")
    after = runner.invoke(lazy.app, [*args, "--help"], prog_name="herd")
    assert before.exit_code == 0
    assert (after.exit_code, after.output) == (before.exit_code, before.output)


def test_a_deferred_command_runs_and_its_errors_keep_their_exit_code(tmp_path: Path) -> None:
    env = {"HERD_DATABASE_URL": "sqlite:///relative.db", "HOME": str(tmp_path)}
    result = CliRunner().invoke(lazy.app, ["server", "list"], env=env, prog_name="herd")
    assert result.exit_code != 0
    assert "relative" in str(result.exception)
