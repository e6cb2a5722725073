"""Ansible's YAML inventory format, as ``ansible/plugins/inventory/yaml.py`` reads it.

The top level maps group names to groups; a group has ``hosts`` (host pattern → its
variables, or null), ``children`` (group name → group) and ``vars``. The document comes
from herd's one YAML reader (``source.read_yaml``), so every value has its line and a
duplicate key is an error here too. Where Ansible only warns and skips (a group that is
not a mapping, a key other than hosts/children/vars), herd refuses: a mistyped
``host:`` would otherwise drop hosts without a word.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.inventory.ansible.groups import (
    OPAQUE,
    AnsibleInventory,
    AnsibleSyntaxError,
    Var,
    expand_hosts,
)
from orchestrator.inventory.problems import describe_value
from orchestrator.inventory.source import DataPath, Document

GROUP_KEYS = ("hosts", "children", "vars")


# Ansible's own YAML tags: an encrypted value, and a string Ansible never templates.
ANSIBLE_TAG = re.compile(r"tag '!(vault|unsafe)'")


def read_groups(doc: Document) -> tuple[AnsibleInventory, list[AnsibleSyntaxError]]:
    """The inventory a YAML document (a mapping, checked by the caller) describes.

    The document's issues are told as problems, but for values tagged ``!vault`` or
    ``!unsafe``, which herd does not read: they become ``OPAQUE``, a problem only if
    herd needs one of them.
    """
    reader = _Reader(doc)
    for issue in doc.issues:
        if ANSIBLE_TAG.search(issue.message):
            reader.opaque.add(issue.path)
        else:
            reader.problems.append(AnsibleSyntaxError(issue.line, issue.message))
    for name, data in doc.data.items():
        reader.group(name, data, (name,))
    reader.problems += reader.inventory.finish()
    return reader.inventory, sorted(reader.problems, key=lambda problem: problem.line)


class _Reader:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.inventory = AnsibleInventory()
        self.problems: list[AnsibleSyntaxError] = []
        self.opaque: set[DataPath] = set()

    def value(self, at: DataPath, value: Any) -> Any:
        return OPAQUE if at in self.opaque else value

    def group(self, name: Any, data: Any, at: DataPath) -> str | None:
        line = self.doc.line_of(at)
        if not isinstance(name, str):
            self._tell(at, f"a group name must be a string, not {describe_value(name)}")
            return None
        if data is not None and not isinstance(data, dict):
            self._tell(at, f"group {name!r} must be a mapping, not {describe_value(data)}")
            return None
        group = self.inventory.group(name, line)
        for key, value in (data or {}).items():
            here = (*at, key)
            if key not in GROUP_KEYS:
                self._tell(
                    here,
                    f"group {name!r}: unknown key {key!r} (a group has hosts, children, vars)",
                )
                continue
            if isinstance(value, str):  # Ansible reads `hosts: hv1` as `hosts: {hv1: null}`
                value = {value: None}
            if value is None:
                continue
            if not isinstance(value, dict):
                self._tell(here, f"group {name!r}: {key} must be a mapping, not a list")
                continue
            if key == "vars":
                for var, var_value in value.items():
                    line = self.doc.line_of((*here, var))
                    var_value = self.value((*here, var), var_value)
                    try:
                        group.set_var(str(var), Var(var_value, line, f"group {name}"))
                    except AnsibleSyntaxError as exc:
                        self.problems.append(exc)
            elif key == "children":
                for child, child_data in value.items():
                    added = self.group(child, child_data, (*here, child))
                    if added is not None:
                        self.inventory.add_child(name, added, self.doc.line_of((*here, child)))
            else:
                for pattern, host_vars in value.items():
                    self.hosts(name, pattern, host_vars, (*here, pattern))
        return name

    def hosts(self, group: str, pattern: Any, data: Any, at: DataPath) -> None:
        line = self.doc.line_of(at)
        if not isinstance(pattern, str):
            self._tell(
                at,
                f'host {describe_value(pattern)} must be a string (quote numbers: "10.0.0.1")',
            )
            return
        if data is not None and not isinstance(data, dict):
            self._tell(at, f"host {pattern!r}: its variables must be a mapping or nothing")
            return
        try:
            names, port = expand_hosts(pattern)
        except ValueError as exc:
            self._tell(at, str(exc))
            return
        variables = {}
        if port is not None:
            variables["ansible_port"] = Var(port, line, f"host {pattern}")
        for var, value in (data or {}).items():
            variables[str(var)] = Var(
                self.value((*at, var), value), self.doc.line_of((*at, var)), f"host {pattern}"
            )
        for name in names:
            self.inventory.add_host(name, line, group, variables)

    def _tell(self, at: DataPath, message: str) -> None:
        self.problems.append(AnsibleSyntaxError(self.doc.line_of(at), message))


def is_ansible_labels(path: DataPath) -> bool:
    """Whether ``path`` is a ``herd_labels`` mapping (group or host variable), whose
    unquoted values herd keeps as written, as in its own inventory (``ssd: yes``)."""
    return (
        len(path) >= 3 and path[-1] == "herd_labels" and (path[-2] == "vars" or path[-3] == "hosts")
    )
