"""An Ansible host's variables to herd's host fields, remembering which variable gave each.

What herd reads, and nothing else (an Ansible inventory holds many variables for other
playbooks; they are none of herd's business):

- the host's name in the inventory is herd's host name, and its address unless
  ``ansible_host`` says otherwise;
- ``ansible_host``, ``ansible_port``, ``ansible_user``, ``ansible_ssh_private_key_file``
  (and their older spellings ``ansible_ssh_host``, ``ansible_ssh_port``,
  ``ansible_ssh_user``, ``ansible_private_key_file``) become the address and
  ``ssh.port``, ``ssh.user``, ``ssh.key``. Where two spellings are set, the one
  Ansible's ssh connection uses wins (the later one in each list below);
- ``herd_FIELD`` for each of herd's host fields (``herd_availability_zone``,
  ``herd_labels``, ``herd_agent_dir``...), and ``herd_SECTION_KEY`` for the keys of the
  nested ones (``herd_ssh_known_hosts``, ``herd_capacity_vcpus``,
  ``herd_reserved_ram_mb``, ``herd_allocation_ratios_cpu``), so that INI files, which
  have no nesting, can set them all. A ``herd_*`` variable wins over the ``ansible_*``
  one for the same field. ``herd_`` is herd's prefix: an unknown ``herd_*`` variable is
  a typo, and refused.

Ansible leaves a type to the use of a value (``enabled=false`` in INI is a string until
a playbook says ``| bool``); herd's fields are typed, so a string is read as Ansible's
``bool`` filter and an integer's digits would be.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel

from orchestrator.inventory.ansible.groups import Var
from orchestrator.inventory.models import HostSpec
from orchestrator.inventory.source import DataPath

PREFIX = "herd_"

ANSIBLE_VARS: dict[DataPath, tuple[str, ...]] = {
    ("address",): ("ansible_host", "ansible_ssh_host"),
    ("ssh", "port"): ("ansible_port", "ansible_ssh_port"),
    ("ssh", "user"): ("ansible_user", "ansible_ssh_user"),
    ("ssh", "key"): ("ansible_private_key_file", "ansible_ssh_private_key_file"),
}
"""herd's field → the Ansible variables for it, the last set one winning (as in
Ansible's ssh connection plugin, whose options list them in this order)."""

# Ansible's `bool` filter (ansible.module_utils.parsing.convert_bool).
_TRUE = {"yes", "on", "1", "true", "y", "t"}
_FALSE = {"no", "off", "0", "false", "n", "f"}


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _scalar_type(annotation: Any) -> type | None:
    if annotation in (bool, int, float):
        return annotation
    for arg in get_args(annotation):
        found = _scalar_type(arg)
        if found is not None:
            return found
    return None


def _herd_vars() -> dict[str, tuple[DataPath, type | None]]:
    """``herd_*`` variable → (field path, scalar type to read a string as), from
    ``HostSpec`` itself, so a field added to herd's inventory is an Ansible variable too."""
    found: dict[str, tuple[DataPath, type | None]] = {}
    for name, info in HostSpec.model_fields.items():
        nested = _submodel(info.annotation)
        if nested is None:
            found[PREFIX + name] = ((name,), _scalar_type(info.annotation))
            continue
        for key, sub in nested.model_fields.items():
            found[f"{PREFIX}{name}_{key}"] = ((name, key), _scalar_type(sub.annotation))
    return found


HERD_VARS = _herd_vars()
_TYPES: dict[DataPath, type | None] = {path: kind for path, kind in HERD_VARS.values()}


@dataclass(frozen=True)
class Source:
    """The variable a field's value came from (none: the host's own name), for messages."""

    var: str
    line: int
    owner: str
    file: str | None = None
    """The vars file that holds it; ``None``: the inventory file."""

    @property
    def label(self) -> str:
        """``group hypervisors: herd_agent_dir``, ``host hv1``: where to look in the file."""
        return f"{self.owner}: {self.var}" if self.var else self.owner


@dataclass
class HostFields:
    """One Ansible host as herd's host item (``HostSpec`` input), with its sources."""

    item: dict[Hashable, Any]
    sources: dict[DataPath, Source]
    unknown: list[Source]
    """``herd_*`` variables herd has no field for."""


def host_fields(inventory_name: str, line: int, variables: dict[str, Var]) -> HostFields:
    """herd's fields for the host ``inventory_name`` whose resolved variables are these."""
    itself = Source("", line, f"host {inventory_name}")
    values: dict[DataPath, tuple[Any, Source]] = {
        ("name",): (inventory_name, itself),
        ("address",): (inventory_name, itself),
    }
    for path, names in ANSIBLE_VARS.items():
        for name in names:
            if name in variables:
                var = variables[name]
                values[path] = (var.value, Source(name, var.line, var.owner, var.file))
    unknown: list[Source] = []
    for name, var in variables.items():
        if not name.startswith(PREFIX):
            continue
        source = Source(name, var.line, var.owner, var.file)
        if name not in HERD_VARS:
            unknown.append(source)
            continue
        values[HERD_VARS[name][0]] = (var.value, source)
    item: dict[Hashable, Any] = {}
    sources: dict[DataPath, Source] = {}
    for path, (value, source) in values.items():
        target = item
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = _typed(value, _TYPES.get(path))
        sources[path] = source
    return HostFields(item, sources, unknown)


def _typed(value: Any, kind: type | None) -> Any:
    """A string read as the field's type would be by Ansible; anything else as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind is bool and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if kind is int and text.isascii() and text.isdigit():
        return int(text)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            return value
    return value
