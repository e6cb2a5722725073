"""herd's own settings: `~/.config/herd/config.yaml` (or `HERD_CONFIG`), like nova.conf.

Sections: `scheduler:` and `reconcile:`. A missing file means the defaults; a bad one
is refused with the file, the key and the problem on one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import InvalidInput
from orchestrator.inventory.problems import first_validation_problem
from orchestrator.inventory.source import UnreadableYaml, read_yaml
from orchestrator.local_files import xdg_dir
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.scheduler.config import SchedulerConfig


class HerdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)


def config_path() -> Path:
    explicit = os.environ.get("HERD_CONFIG")
    if explicit:
        return Path(explicit)
    return xdg_dir("XDG_CONFIG_HOME", Path.home() / ".config") / "herd" / "config.yaml"


def load_config(path: Path | None = None) -> HerdConfig:
    path = path or config_path()
    try:
        # The inventory's reader: its size and alias limits, duplicate keys refused.
        document = read_yaml(path)
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
        return HerdConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {first_validation_problem(exc)}") from None
