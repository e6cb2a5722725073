"""herd's own settings: `~/.config/herd/config.yaml` (or `HERD_CONFIG`), like nova.conf.

Sections: `scheduler:` and `reconcile:`. A missing file means the defaults; a bad one
is refused with the file, the key and the problem on one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import InvalidInput
from orchestrator.inventory.problems import first_validation_problem
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
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "herd" / "config.yaml"


def load_config(path: Path | None = None) -> HerdConfig:
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if os.environ.get("HERD_CONFIG"):
            raise InvalidInput(f"{path}: no such file (named by HERD_CONFIG)") from None
        return HerdConfig()
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InvalidInput(
            f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    try:
        return HerdConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {first_validation_problem(exc)}") from None
