"""Live progress of many instances at once, on stderr."""

from __future__ import annotations

from dataclasses import dataclass

from rich.live import Live
from rich.table import Table

from orchestrator.cli.output import err, styled, table
from orchestrator.db.models import Instance


@dataclass
class _Row:
    name: str
    host: str | None
    status: str
    detail: str


class LiveProgress:
    """A table that redraws as instances move through their states. When stderr is
    not a terminal (cron, CI logs) it prints one line per change instead."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: dict[str, _Row] = {}
        self.live: Live | None = None

    def __enter__(self) -> LiveProgress:
        if err.is_terminal:
            self.live = Live(self._render(), console=err, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)

    def update(
        self, instance: Instance, status: str, *, host: str | None = None, detail: str = ""
    ) -> None:
        row = self.rows.get(instance.uuid)
        if row is None:
            row = self.rows[instance.uuid] = _Row(instance.name, host, status, detail)
        row.host = host or row.host
        row.status, row.detail = status, detail
        if self.live is not None:
            self.live.update(self._render())
        else:
            suffix = f" ({detail})" if detail else ""
            err.print(f"{instance.name}: {status}{' on ' + row.host if row.host else ''}{suffix}")

    def _render(self) -> Table:
        return table(
            self.title,
            ("server", "host", "status", "detail"),
            ((row.name, row.host, styled(row.status), row.detail) for row in self.rows.values()),
        )
