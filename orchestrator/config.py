"""herd's own settings: `~/.config/herd/config.yaml` (or `HERD_CONFIG`), like nova.conf.

Sections: `scheduler:` and `reconcile:`. A missing file means the defaults; a bad one
is refused with the file, the key and the problem on one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.config_seen import config_path, remember_accepted
from orchestrator.errors import InvalidInput
from orchestrator.inventory.problems import first_validation_problem
from orchestrator.inventory.source import UnreadableYaml, parse, read_source
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.scheduler.config import SchedulerConfig


class HerdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)


def load_config(path: Path | None = None) -> HerdConfig:
    path = path or config_path()
    try:
        # The inventory's reader: its size and alias limits, duplicate keys refused.
        source = read_source(path)
        document = parse(source, lambda _: False)
    except FileNotFoundError:
        if os.environ.get("HERD_CONFIG"):
            raise InvalidInput(f"{path}: no such file (named by HERD_CONFIG)") from None
        return HerdConfig()
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    except UnreadableYaml as exc:
        line = f":{exc.line}" if exc.line is not None else ""
        raise InvalidInput(f"{path}{line}: {exc.message}") from None
    if document.issues:
        issue = document.issues[0]
        more = f" (+{len(document.issues) - 1} more)" if len(document.issues) > 1 else ""
        raise InvalidInput(f"{path}:{issue.line}: {issue.message}{more}")
    data: Any = document.data or {}
    try:
        config = HerdConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {first_validation_problem(exc)}") from None
    remember_accepted(path, source)
    return config
