"""The YAML inventory: which hypervisors, flavors and images herd manages.

``load_inventory(*paths)`` returns a validated, frozen ``Inventory`` or raises
``InventoryError``, whose message has one ``file:line: field: message`` line per problem.
``inventory.example.yaml`` at the top of the repository documents every key. Hosts may
come from Ansible inventories instead (``orchestrator.inventory.ansible``).
"""

from __future__ import annotations

import importlib
from typing import Any

# Names handed on from the modules that define them, each imported on first use: a
# command that needs only ``inventory.problems`` (the config file's errors) must not
# wait for pydantic models, the Ansible reader and SSH config parsing.
_WHERE = {
    "load_inventory": "loader",
    "InventoryError": "problems",
    "InventoryProblem": "problems",
    **dict.fromkeys(
        (
            "AllocationRatios", "Capacity", "FlavorSpec", "HostSpec", "ImageSpec",
            "Inventory", "Reserved", "SourceKind", "SshSpec",
        ),
        "models",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "AllocationRatios",
    "Capacity",
    "FlavorSpec",
    "HostSpec",
    "ImageSpec",
    "Inventory",
    "InventoryError",
    "InventoryProblem",
    "Reserved",
    "SourceKind",
    "SshSpec",
    "load_inventory",
]
