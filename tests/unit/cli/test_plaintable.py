"""PlainTable prints the bytes rich's Table prints, for any cells, on any console."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.table import Table

from orchestrator.cli.output import make_console, text
from orchestrator.cli.plaintable import PlainTable
from orchestrator.cli.states import STATE_STYLES

_words = st.one_of(
    st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=30),
    st.text(max_size=12),  # wide characters, newlines, markup-like brackets
    st.sampled_from(["active", "down: no answer", "[b]x[/b]", ":smile:", "", "a\nb", "日本"]),
)
_cells = st.tuples(_words, st.sampled_from(["", *STATE_STYLES.values(), "bold"]))


def _render(
    kind: type[Table],
    headers: list[str],
    rows: list[list[tuple[str, str]]],
    *,
    terminal: bool,
    width: int,
) -> str:
    stream = io.StringIO()
    console = make_console(stream, terminal=terminal)
    console.width = width
    grid = kind(title=None, title_justify="left", header_style="bold")
    for header in headers:
        grid.add_column(header)
    for row in rows:
        grid.add_row(*(text(value, style) for value, style in row))
    console.print(grid)
    return stream.getvalue()


@settings(max_examples=300, deadline=None)
@given(
    columns=st.integers(1, 5),
    data=st.data(),
    terminal=st.booleans(),
    width=st.sampled_from([20, 80, 200]),
)
def test_plain_table_prints_what_rich_prints(
    columns: int, data: st.DataObject, terminal: bool, width: int
) -> None:
    headers = data.draw(st.lists(_words, min_size=columns, max_size=columns))
    rows = data.draw(st.lists(st.lists(_cells, min_size=columns, max_size=columns), max_size=6))
    expected = _render(Table, headers, rows, terminal=terminal, width=width)
    assert _render(PlainTable, headers, rows, terminal=terminal, width=width) == expected


def test_server_list_shaped_table_is_laid_out_without_rich_cells() -> None:
    rows = [[(f"web-{n}", ""), ("active", "green"), ("10m ago", "")] for n in range(3)]
    for terminal in (False, True):
        expected = _render(Table, ["name", "vm_state", "age"], rows, terminal=terminal, width=200)
        assert (
            _render(PlainTable, ["name", "vm_state", "age"], rows, terminal=terminal, width=200)
            == expected
        )
    grid = PlainTable()
    grid.add_column("name")
    grid.add_row(text("web-1"))
    assert grid._plain_columns() == [[("name", None), ("web-1", None)]]


_plain_words = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    columns=st.integers(1, 6),
    data=st.data(),
    terminal=st.booleans(),
    width=st.sampled_from([30, 80, 200]),
)
def test_plain_cells_print_the_same_by_the_short_path(
    columns: int, data: st.DataObject, terminal: bool, width: int
) -> None:
    headers = data.draw(
        st.lists(
            _plain_words.filter(lambda h: "[" not in h and ":" not in h),
            min_size=columns,
            max_size=columns,
        )
    )
    cells = st.tuples(_plain_words, st.sampled_from(["", *STATE_STYLES.values()]))
    rows = data.draw(
        st.lists(st.lists(cells, min_size=columns, max_size=columns), min_size=1, max_size=6)
    )
    expected = _render(Table, headers, rows, terminal=terminal, width=width)
    assert _render(PlainTable, headers, rows, terminal=terminal, width=width) == expected
