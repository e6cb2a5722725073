"""The YAML inventory: which hypervisors, flavors and images herd manages.

``load_inventory(*paths)`` returns a validated, frozen ``Inventory`` or raises
``InventoryError``, whose message has one ``file:line: field: message`` line per problem.
``inventory.example.yaml`` at the top of the repository documents every key. Hosts may
come from Ansible inventories instead (``orchestrator.inventory.ansible``).
"""

from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.models import (
    AllocationRatios,
    Capacity,
    FlavorSpec,
    HostSpec,
    ImageSpec,
    Inventory,
    Reserved,
    SourceKind,
    SshSpec,
)
from orchestrator.inventory.problems import InventoryError, InventoryProblem

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
