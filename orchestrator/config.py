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
from orchestrator.local_files import xdg_dir
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.scheduler.config import SchedulerConfig

MAX_CONFIG_BYTES = 1024 * 1024


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
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)  # HERD_CONFIG=/dev/zero ends here too
        if len(data) > MAX_CONFIG_BYTES:
            raise InvalidInput(
                f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a settings file"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        if os.environ.get("HERD_CONFIG"):
            raise InvalidInput(f"{path}: no such file (named by HERD_CONFIG)") from None
        return HerdConfig()
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not a YAML settings file (not UTF-8 text)") from None
    try:
        data: Any = yaml.safe_load(text) or {}
    except RecursionError:  # "[[[[...": PyYAML's composer recurses per level
        raise InvalidInput(f"{path}: nested too deeply") from None
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
