"""rich's Table, laid out in one pass when its cells are plain one-line text.

rich measures, wraps and pads every cell through its general renderable machinery:
about a millisecond a row on a small machine, seconds for `herd server list` of a
thousand servers. When every cell is one line of ASCII text with at most one style
and the table fits the width, the layout is just each column's widest cell, and this
class yields the very segments rich's own ``Table._render`` would (same box, same
styles, same splits), so the console prints the same bytes; anything else (a wide
character, a newline, a nested renderable, a title, a table wider than the console)
goes through rich as before. tests/unit/cli/test_plaintable.py holds the two equal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.style import Style


class PlainTable(Table):
    """A ``Table`` (title, padding and box as rich's defaults) with a fast common case."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        columns = self._plain_columns()
        if columns is None:
            yield from super().__rich_console__(console, options)
            return
        widths = [max(len(plain) for plain, _style in cells) for cells in columns]
        if self.box is None or sum(widths) + 2 * len(widths) + self._extra_width > (
            options.max_width
        ):
            yield from super().__rich_console__(console, options)
            return
        widths = [width + 2 for width in widths]  # the default padding, one each side
        box = self.box.substitute(
            options, safe=console.safe_box if self.safe_box is None else self.safe_box
        )
        get_style = console.get_style
        border = get_style(self.style or "") + get_style(self.border_style or "")
        header_styles = [
            get_style(self.header_style or "") + get_style(column.header_style)
            for column in self.columns
        ]
        new_line = Segment.line()
        yield Segment(box.get_top(widths), border)
        yield new_line
        yield Segment(box.head_left, border)
        for index, (cells, width, style) in enumerate(
            zip(columns, widths, header_styles, strict=True)
        ):
            if index:
                yield Segment(box.head_vertical, border)
            yield Segment(" ", style)
            yield Segment(cells[0][0].ljust(width - 2), style)
            yield Segment(" ", style)
        yield Segment(box.head_right, border)
        yield new_line
        yield Segment(box.get_row(widths, "head", edge=True), border)
        yield new_line
        blank = Segment(" ")
        last = len(columns[0]) - 1
        for row in range(1, last + 1):
            # rich's middle rows and its last row may draw their sides differently
            left, right, divider = (
                (box.mid_left, box.mid_right, box.mid_vertical)
                if row < last
                else (box.foot_left, box.foot_right, box.foot_vertical)
            )
            yield Segment(left, border)
            for index, (cells, width) in enumerate(zip(columns, widths, strict=True)):
                if index:
                    yield Segment(divider, border)
                plain, style = cells[row]
                yield blank
                yield Segment(plain.ljust(width - 2), None if style is None else get_style(style))
                yield blank
            yield Segment(right, border)
            yield new_line
        yield Segment(box.get_bottom(widths), border)
        yield new_line

    def _plain_columns(self) -> list[list[tuple[str, Style | str | None]]] | None:
        """Per column, its header then its cells as (text, style); None unless every
        one is plain one-line ASCII, there is a body row, and nothing else is set."""
        if (
            self.title
            or self.caption
            or not self.rows
            or not self.show_header
            or self.show_footer
            or not self.show_edge
            or self.show_lines
            or self.row_styles
            or self.expand
            or self.width is not None
            or self.padding != (0, 1, 0, 1)
            or self.leading
            or not self.pad_edge
            or self.collapse_padding
        ):
            return None
        columns = []
        for column in self.columns:
            header = column.header
            if (
                not isinstance(header, str)
                or not header
                or not _plain(header)
                or "[" in header
                or ":" in header
            ):
                return None
            if (
                column.style
                or column.justify != "left"
                or column.width is not None
                or column.min_width is not None
                or column.max_width is not None
                or column.ratio is not None
            ):
                return None
            cells: list[tuple[str, Style | str | None]] = [(column.header, None)]
            for value in column.cells:
                if (
                    not isinstance(value, Text)
                    or value.spans
                    or not _plain(value.plain)
                    or (value.style and not value.plain)
                    or value.justify
                    or value.overflow
                ):
                    return None
                cells.append((value.plain, value.style or None))
            columns.append(cells)
        return columns


def _plain(value: str) -> bool:
    """One line of printable ASCII: as many cells wide as it has characters. (A header
    is a ``str`` rich may read markup or emoji codes in: the caller refuses ``[``
    and ``:`` there.)"""
    return value.isascii() and value.isprintable()
