"""Ansible inventories, INI or YAML, as a source of herd's hosts.

An operator whose fleet is already in an Ansible inventory points herd at it
(``herd inventory apply hosts.ini herd.yaml``) instead of writing the hosts twice. The
file gives hosts only; flavors, images and networks come from a herd YAML file given
beside it. Which format a file is in:

- ``*.ini``: Ansible INI;
- otherwise the file is read as YAML (as Ansible tries its YAML reader first). A mapping
  with herd's sections (``hosts:`` as a list, ``flavors:``...) is herd's own inventory; a
  mapping of groups (``all:``, or ``NAME:`` with ``hosts``/``children``/``vars``) is
  Ansible's; one holding both is refused rather than guessed. A file that is not YAML,
  or not a mapping, and has no ``.yaml``/``.yml``/``.json`` suffix is read as INI
  (``/etc/ansible/hosts`` has no suffix).
"""

from __future__ import annotations

from typing import Any, Literal

from orchestrator.inventory.ansible.groups import ALL, AnsibleInventory, AnsibleSyntaxError
from orchestrator.inventory.ansible.hostvars import HostFields, Source, host_fields
from orchestrator.inventory.ansible.ini import read_ini
from orchestrator.inventory.ansible.yamlfile import GROUP_KEYS, read_groups

HERD_ONLY_SECTIONS = ("defaults", "flavors", "images", "networks")
YAML_SUFFIXES = (".yaml", ".yml", ".json")


def yaml_kind(data: dict[Any, Any]) -> Literal["herd", "ansible"]:
    """Whose YAML inventory ``data`` is; ``ValueError`` says why when it holds both."""
    herd = [key for key in HERD_ONLY_SECTIONS if key in data]
    if isinstance(data.get("hosts"), list):
        herd.insert(0, "hosts")
    ansible = [
        key
        for key, value in data.items()
        if key == ALL or (isinstance(value, dict) and value and set(value) <= set(GROUP_KEYS))
    ]
    if herd and ansible:
        raise ValueError(
            f"holds herd's sections ({', '.join(herd)}) and Ansible groups "
            f"({', '.join(map(str, ansible))}): put the Ansible inventory in a file of its own"
        )
    return "ansible" if ansible else "herd"


__all__ = [
    "ALL",
    "YAML_SUFFIXES",
    "AnsibleInventory",
    "AnsibleSyntaxError",
    "HostFields",
    "Source",
    "host_fields",
    "read_groups",
    "read_ini",
    "yaml_kind",
]
