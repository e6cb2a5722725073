"""Every command, hostile values for each of its arguments, options and environment:
the answer is success, herd's one-line error with its exit code, or the CLI
framework's usage error (exit 2) — never 70 ("internal error"), a traceback or a hang.

The table is data (command, then the values tried in each place); each row runs the
real entry point in its own process (forked from one that imported herd once, see
forkcli.py). The database has a host that does not answer, a flavor, an image and a
server in ERROR, so names that exist and names that do not are both tried.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.herdcli import Result, assert_one_line_error
from tests.unit.cli.forkcli import ForkedHerd

NAMES = {
    "empty": "",
    "blank": " ",
    "markup": "[/x]",
    "long": "n" * 5000,
    "traversal": "../../etc/passwd",
    "newline": "a\nb",
    "escape": "\x1b[31m",
    "not utf-8": "\udcff",
    "sql": "'; DROP TABLE instances; --",
    "format": "%s%n%x{0}",
    "bidi": "\u202eevil",
}
# For the many commands that only look a name up: the values that took a different path.
FEW_NAMES = {k: NAMES[k] for k in ("empty", "markup", "long", "not utf-8")}
INTS = {"negative": "-1", "zero": "0", "huge": "9" * 30, "float": "1.5", "nan": "nan", "": ""}
FLOATS = {"nan": "nan", "inf": "inf", "-inf": "-inf", "negative": "-1", "huge": "1e309", "": ""}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    binary = root / "binary"
    binary.write_bytes(bytes(range(256)) * 8)
    latin1 = root / "latin1.yaml"
    latin1.write_bytes(b"flavors: []\n# caf\xe9\n")
    empty = root / "empty"
    empty.touch()
    fifo = root / "fifo"
    os.mkfifo(fifo)
    (root / "dir").mkdir()
    shadow = root / "secret"
    shadow.write_text("secret\n")
    os.chmod(shadow, 0o000)
    return {
        "directory": root / "dir",
        "missing": root / "nope" / "x",
        "binary": binary,
        "latin-1": latin1,
        "empty": empty,
        "fifo": fifo,
        "unreadable": shadow,  # root reads it anyway; the mode is the point elsewhere
        "root": Path("/"),
    }


INVENTORY = """\
hosts:
  - name: ghost
    address: 127.0.0.1
    ssh: {{port: {port}, known_hosts: {known_hosts}}}
flavors:
  - {{name: m1, vcpus: 1, ram_mb: 128, disk_gb: 1}}
images:
  - {{name: blank, source: "https://example.invalid/blank.qcow2"}}
"""


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkedHerd]:
    home = tmp_path_factory.mktemp("hostile-input")
    cli = ForkedHerd(home)
    cli.env["HOME"] = str(home)
    inventory = home / "inventory.yaml"
    inventory.write_text(INVENTORY.format(port=closed_port(), known_hosts=home / "kh"))
    cli.ok("inventory", "apply", str(inventory))
    failed = cli.run("server", "create", "web", "--flavor", "m1", "--image", "blank")
    assert failed.code == 5, failed.stderr  # web: in ERROR, on no host
    yield cli
    cli.close()


def _cases(files: dict[str, Path]) -> Iterator[tuple[str, tuple[str, ...], dict[str, str]]]:
    """(id, argv, extra environment) for every row of the table."""
    ref_commands = [
        ("server", "show"), ("server", "actions"), ("server", "delete"), ("server", "wait"),
        ("server", "console-log"), ("server", "console"), ("server", "start"),
        ("server", "stop"), ("server", "reboot"), ("server", "pause"), ("server", "unpause"),
        ("server", "suspend"), ("server", "resume"), ("server", "rebuild"),
        ("server", "migrate"), ("server", "live-migrate"), ("host", "refresh"),
        ("host", "trust"), ("host", "disable"), ("host", "enable"), ("host", "evacuate"),
        ("group", "delete"), ("image", "show"), ("image", "delete"), ("keypair", "delete"),
    ]  # fmt: skip
    every_name = {("server", "show"), ("host", "refresh"), ("image", "show"),
                  ("keypair", "delete"), ("group", "delete"), ("server", "delete")}  # fmt: skip
    for command in ref_commands:
        for label, value in (NAMES if command in every_name else FEW_NAMES).items():
            yield f"{' '.join(command)} NAME={label}", (*command, value), {}
    named = {
        ("server", "resize", "NAME", "--flavor", "m1"): 2,
        ("group", "create", "NAME", "--policy", "affinity"): 2,
        ("image", "create", "NAME", "--url", "https://example.invalid/x"): 2,
        ("keypair", "create", "NAME"): 2,
        ("server", "create", "NAME", "--flavor", "m1", "--image", "blank", "--dry-run"): 2,
    }
    for template, at in named.items():
        for label, value in NAMES.items():
            argv = (*template[:at], value, *template[at + 1 :])
            yield f"{' '.join(template[:2])} NAME={label}", argv, {}

    create = ("server", "create", "x", "--flavor", "m1", "--image", "blank", "--dry-run")
    for option in ("--flavor", "--image", "--group", "--availability-zone", "--host",
                   "--hint", "--network", "--key-name"):  # fmt: skip
        for label, value in FEW_NAMES.items():
            yield f"server create {option}={label}", (*create, option, value), {}
    for option in ("--count", "--min-count"):
        for label, value in INTS.items():
            yield f"server create {option}={label}", (*create, option, value), {}
    for label, path in files.items():
        if label != "fifo":  # a pipe with no writer: what `<(...)` is, with one
            yield f"server create --user-data={label}", (*create, "--user-data", str(path)), {}

    for label, value in FLOATS.items():
        yield f"server wait --timeout={label}", ("server", "wait", "web", "--timeout", value), {}
        yield (
            f"image cache prune --older-than={label}",
            ("image", "cache", "prune", "--older-than", value, "--dry-run"),
            {},
        )
    for command in (("server", "stop"), ("server", "live-migrate")):  # the two option types
        for label, value in INTS.items():
            yield (
                f"{' '.join(command)} --timeout={label}",
                (*command, "web", "--timeout", value),
                {},
            )
    for label, value in INTS.items():
        yield f"console-log --lines={label}", ("server", "console-log", "web", "--lines", value), {}

    for label, value in NAMES.items():  # stored, or compared with what is stored
        yield f"host disable --reason={label}", ("host", "disable", "ghost", "--reason", value), {}
        yield f"group create --policy={label}", ("group", "create", "g", "--policy", value), {}
    for label, value in FEW_NAMES.items():  # looked up
        yield f"host trust --fingerprint={label}", ("host", "trust", "ghost", "--fingerprint", value), {}  # fmt: skip
        yield f"image cache list --host={label}", ("image", "cache", "list", "--host", value), {}
        yield f"server rebuild --image={label}", ("server", "rebuild", "web", "--image", value), {}
        yield f"server migrate --host={label}", ("server", "migrate", "web", "--host", value), {}

    image = ("image", "create", "img")
    urls = {
        "empty": "", "ftp": "ftp://example.invalid/x", "no host": "http://",
        "bad ipv6": "https://[::1/x", "javascript": "javascript:alert(1)",
        "file": "file:///etc/shadow", "credentials": "https://u:pw@example.invalid/x",
        "markup": "https://example.invalid/[/x]", "not utf-8": "https://e.invalid/\udcff",
        "long": "https://example.invalid/" + "a" * 10000,
    }  # fmt: skip
    for label, value in urls.items():
        yield f"image create --url={label}", (*image, "--url", value), {}
    for label, value in {**NAMES, "relative": "rel/x", "dev zero": "/dev/zero"}.items():
        yield f"image create --host-path={label}", (*image, "--host-path", value), {}
    for label, path in files.items():
        if label != "fifo":
            yield f"image create --file={label}", (*image, "--file", str(path)), {}
    for label, value in {**NAMES, "vmdk": "vmdk"}.items():
        yield f"image create --format={label}", (*image, "--url", "https://e.invalid/x", "--format", value), {}  # fmt: skip
        yield f"image create --sha256={label}", (*image, "--url", "https://e.invalid/x", "--sha256", value), {}  # fmt: skip
    for option in ("--min-ram", "--min-disk"):
        for label, value in INTS.items():
            yield f"image create {option}={label}", (*image, "--url", "https://e.invalid/x", option, value), {}  # fmt: skip
    properties = {"empty": "", "no value": "k", "no key": "=v", "markup": "k=[/x]",
                  "kernel": "kernel_id=", "long key": "k" * 5000 + "=v", "not utf-8": "k=\udcff"}  # fmt: skip
    for label, value in properties.items():
        yield f"image create --property={label}", (*image, "--url", "https://e.invalid/x", "--property", value), {}  # fmt: skip

    for label, path in files.items():
        if label not in ("fifo",):
            yield f"keypair import --public-key={label}", ("keypair", "import", "k", "--public-key", str(path)), {}  # fmt: skip
            yield f"keypair create --private-key={label}", ("keypair", "create", f"k-{label.replace(' ', '-')}", "--private-key", str(path)), {}  # fmt: skip
            for verb in ("validate", "apply"):
                yield f"inventory {verb} {label}", ("inventory", verb, str(path)), {}
            yield f"reconcile --prometheus-textfile={label}", ("reconcile", "--dry-run", "--prometheus-textfile", str(path)), {}  # fmt: skip
    yield "reconcile --prometheus-textfile=fifo", ("reconcile", "--dry-run", "--prometheus-textfile", str(files["fifo"])), {}  # fmt: skip

    for label, path in {**files, "not utf-8 name": Path("/tmp/\udcff.yaml")}.items():
        if label != "fifo":
            yield f"HERD_CONFIG={label}", ("flavor", "list"), {"HERD_CONFIG": str(path)}
    for label, value in {"relative": "rel", "markup": "[/x]", "not utf-8": "/tmp/\udcff"}.items():
        yield f"XDG_STATE_HOME={label}", ("server", "migrate", "web", "--no-wait"), {"XDG_STATE_HOME": value}  # fmt: skip


def _all_cases() -> list[tuple[str, tuple[str, ...], dict[str, str]]]:
    """Collected at import time for the ids; the file paths are filled in per run."""
    placeholder = {k: Path(f"/FILES/{k}") for k in ("directory", "missing", "binary",
                   "latin-1", "empty", "fifo", "unreadable", "root")}  # fmt: skip
    return list(_cases(placeholder))


CASES = _all_cases()


def _fill(value: str, files: dict[str, Path]) -> str:
    for label, path in files.items():
        value = value.replace(f"/FILES/{label}", str(path))
    return value


def assert_clean(result: Result, what: str) -> None:
    """Success; or errors as `herd: error: ...` lines, one per problem, the last thing
    said (after what the command showed until then); or the framework's usage error."""
    assert result.code >= 0, f"{what}: killed after a hang ({result.stderr[-300:]!r})"
    assert result.code != 70, f"{what}: {result.stderr.strip()}"
    assert "Traceback" not in result.stderr + result.stdout, f"{what}: {result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.code == 2 and any(line.startswith("Usage: ") for line in lines):
        return  # typer's own usage error (a bad int, a missing option): exit 2
    first = next((n for n, line in enumerate(lines) if line.startswith("herd: error: ")), None)
    if first is not None:  # one line per problem (an inventory lists them all), at the end
        after = lines[first:]
        assert all(line.startswith("herd: error: ") for line in after), f"{what}: {result.stderr}"


@pytest.mark.parametrize(("label", "argv", "env"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_never_an_internal_error(
    herd: ForkedHerd,
    files: dict[str, Path],
    label: str,
    argv: tuple[str, ...],
    env: dict[str, str],
) -> None:
    argv = tuple(_fill(a, files) for a in argv)
    saved = dict(herd.env)
    herd.env.update({k: _fill(v, files) for k, v in env.items()})
    try:
        result = herd.run(*argv, timeout=60)
    finally:
        herd.env.clear()
        herd.env.update(saved)
    assert_clean(result, f"herd {' '.join(map(repr, argv))}")


CONFIGS = {
    "a list": "- 1\n",
    "scalar section": "scheduler: 5\n",
    "deep nesting": "[" * 1000 + "]" * 1000 + "\n",
    "unknown key": "nope: {}\n",
    "nan weight": "scheduler: {weights: {ram: .nan}}\n",
    "tab indent": "scheduler:\n\tmax_attempts: 3\n",
}


@pytest.mark.parametrize("label", CONFIGS, ids=list(CONFIGS))
def test_a_hostile_settings_file_is_never_an_internal_error(
    herd: ForkedHerd, tmp_path: Path, label: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIGS[label])
    herd.env["HERD_CONFIG"] = str(config)
    try:
        result = herd.run("flavor", "list", timeout=60)
    finally:
        del herd.env["HERD_CONFIG"]
    assert_clean(result, f"HERD_CONFIG with {label}")


DATABASE_URLS = {
    # id: (URL, exit code, what the one line says); {dir} is a scratch directory
    "garbage": ("garbage", 2, "HERD_DATABASE_URL=garbage: not a database URL"),
    "another engine": ("mysql://db/herd", 2, "unsupported database 'mysql'"),
    "in memory": ("sqlite:///:memory:", 2, "an in-memory or URI SQLite database is not kept"),
    "no file": ("sqlite://", 2, "an in-memory or URI SQLite database is not kept"),
    "relative": ("sqlite:///rel/x.db", 2, "rel/x.db is a relative path; say which file"),
    "not utf-8": ("sqlite:///{dir}/\udcff.db", 2, "not valid UTF-8"),
    "a directory": ("sqlite:///{dir}", 9, "is a directory"),
    "a text file": ("sqlite:///{dir}/notes.txt", 9, "is not a SQLite database"),
    "a device": ("sqlite:////dev/null", 9, "is not a regular file"),
    "under a file": ("sqlite:///{dir}/notes.txt/x.db", 9, "notes.txt is not a directory"),
    "cannot create": ("sqlite:////proc/herd/x.db", 9, "cannot create /proc/herd"),
    "postgresql down": ("postgresql://herd:secret@127.0.0.1:{port}/herd", 9, "Connection refused"),
}


@pytest.mark.parametrize("command", [("server", "list"), ("reconcile",)], ids=["list", "reconcile"])
@pytest.mark.parametrize("case", DATABASE_URLS, ids=list(DATABASE_URLS))
def test_an_unusable_database_url_is_one_line_and_touches_nothing(
    herd: ForkedHerd, tmp_path: Path, case: str, command: tuple[str, ...]
) -> None:
    url, code, says = DATABASE_URLS[case]
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    url = url.format(dir=tmp_path, port=closed_port())
    saved = herd.env["HERD_DATABASE_URL"]
    herd.env["HERD_DATABASE_URL"] = url
    try:
        result = herd.run(*command, timeout=60)
    finally:
        herd.env["HERD_DATABASE_URL"] = saved
    line = assert_one_line_error(result, code=code, contains=says)
    assert "secret" not in line  # a password is never shown
    assert notes.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created
