"""YAML files that try to take the machine down: an alias bomb, a huge file, /dev/zero.

The CLI cases run the real `herd` under a 1 GiB address-space limit, so a regression
fails here (MemoryError, exit 70, or the kernel's kill) instead of eating the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.inventory.source import UnreadableYaml, parse

# Nine lines, 387 million values once every alias is expanded.
BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

ADDRESS_SPACE = 1 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def herd(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env={
            **os.environ,
            "HERD_DATABASE_URL": f"sqlite:///{tmp_path / 'herd.db'}",
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        preexec_fn=_limit_memory,
    )


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    lines = done.stderr.splitlines()
    assert (done.returncode, len(lines)) == (code, 1), (done.returncode, done.stderr[-2000:])
    assert lines[0].startswith("herd: error: "), lines
    return lines[0]


def test_the_nine_line_alias_bomb_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    for verb in ("validate", "apply"):
        line = one_line(herd(tmp_path, "inventory", verb, str(bomb)), code=2)
        assert f"{bomb}:6: aliases expand to more than 500,000 values" in line


def test_an_alias_bomb_in_the_config_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    anchors = "".join(f"  {line}\n" for line in BOMB.splitlines())
    config.write_text(f"anchors:\n{anchors}scheduler:\n  enabled_filters: *i\n")
    line = one_line(herd(tmp_path, "server", "list", HERD_CONFIG=str(config)), code=2)
    assert f"{config}:7: aliases expand" in line


def _read(tmp_path: Path, which: str, path: str) -> subprocess.CompletedProcess[str]:
    if which == "inventory":
        return herd(tmp_path, "inventory", "validate", path)
    return herd(tmp_path, "server", "list", HERD_CONFIG=path)


@pytest.mark.parametrize("which", ["inventory", "config"])
def test_a_huge_file_is_refused_after_reading_no_more_than_the_limit(
    tmp_path: Path, which: str
) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: 3 GB that take no disk
    line = one_line(_read(tmp_path, which, str(huge)), code=2)
    assert f"{huge}: larger than 4 MiB, the most herd reads of a YAML file" in line


@pytest.mark.parametrize("which", ["inventory", "config"])
def test_a_device_or_a_fifo_is_refused_without_reading_it(tmp_path: Path, which: str) -> None:
    """/dev/zero never ends and a FIFO's open waits for a writer: neither is read."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        line = one_line(_read(tmp_path, which, path), code=2)
        assert path in line and "not a regular file" in line, line


def test_merge_keys_count_towards_the_limit_too() -> None:
    text = "d0: &d0 {k: v}\n" + "".join(
        f"d{n}: &d{n} {{a: {{<<: *d{n - 1}}}, b: {{<<: *d{n - 1}}}}}\n" for n in range(1, 30)
    )
    with pytest.raises(UnreadableYaml, match="aliases expand to more than 1,000 values") as bad:
        parse(text.encode(), lambda _: False, max_values=1_000)
    assert bad.value.line is not None and bad.value.line > 1


def test_aliases_within_the_limit_build_as_before() -> None:
    five = "".join(BOMB.splitlines(keepends=True)[:5])  # a..e: 74,733 values
    doc = parse(five.encode(), lambda _: False, max_values=100_000)
    assert len(doc.data["e"]) == 9 and doc.data["e"][8][8][8][8] == ["lol"] * 9
