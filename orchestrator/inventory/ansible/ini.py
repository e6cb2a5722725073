"""Ansible's INI inventory format, read line by line as ``ansible/plugins/inventory/ini.py``.

Hand-written because no small, maintained library reads this format, and ansible-core
(40 MB, a plugin system) is not a dependency herd should have; tests compare this
reader with ``ansible-inventory --list`` on the same files.

The format: ``[group]`` sections of host lines (``hv1 ansible_host=192.0.2.10
ansible_port=2222``, or a pattern ``hv[01:03]``), ``[group:vars]`` sections of
``key=value`` lines and ``[group:children]`` sections of group names; lines before any
section are hosts in ``ungrouped``; ``#`` and ``;`` start comments. Values are Python
literals when they parse as one (``2222`` is a number, ``'a b'`` a string), else text
(``false`` is the string "false"), in host lines and ``:vars`` sections alike.
"""

from __future__ import annotations

import re
import shlex

from orchestrator.inventory.ansible.groups import (
    ALL,
    UNGROUPED,
    AnsibleInventory,
    AnsibleSyntaxError,
    Var,
    expand_hosts,
    parse_value,
)

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
_COMMENT = ("#", ";")


def read_ini(text: str) -> tuple[AnsibleInventory, list[AnsibleSyntaxError]]:
    """The inventory ``text`` describes, and every line it could not read."""
    inventory = AnsibleInventory()
    problems: list[AnsibleSyntaxError] = []
    group, state = UNGROUPED, "hosts"
    declared = {ALL, UNGROUPED}
    vars_sections: dict[str, int] = {}
    children: list[tuple[str, str, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(_COMMENT):
            continue
        try:
            section = _SECTION.match(line)
            if section:
                group, state = section.group(1), section.group(2) or "hosts"
                if state not in ("hosts", "children", "vars"):
                    kind, state = state, "unknown"  # its lines are not read as anything
                    raise AnsibleSyntaxError(
                        number,
                        f"section [{group}:{kind}] has unknown type {kind!r} "
                        "(use [NAME], [NAME:vars] or [NAME:children])",
                    )
                inventory.group(group, number)
                if state == "vars":
                    vars_sections.setdefault(group, number)
                else:
                    declared.add(group)
            elif line.startswith("[") and line.endswith("]"):
                raise AnsibleSyntaxError(
                    number, f"invalid section {line!r} (no spaces or other ':' in a section name)"
                )
            elif state == "hosts":
                _host_line(inventory, group, line, number)
            elif state == "vars":
                key, equals, value = line.partition("=")
                if not equals:
                    raise AnsibleSyntaxError(number, f"expected key=value, got {line!r}")
                inventory.group(group, number).set_var(
                    key.strip(), Var(parse_value(value.strip()), number, f"group {group}")
                )
            elif state == "children":
                name = _GROUP_NAME.match(line)
                if not name:
                    raise AnsibleSyntaxError(number, f"expected a group name, got {line!r}")
                children.append((group, name.group(1), number))
        except AnsibleSyntaxError as exc:
            problems.append(exc)
    for parent, child, number in children:
        if child not in declared:
            problems.append(
                AnsibleSyntaxError(
                    number, f"[{parent}:children] names {child!r}, a group defined nowhere"
                )
            )
            continue
        inventory.add_child(parent, child, number)
    for name, number in vars_sections.items():
        if name not in declared:
            problems.append(
                AnsibleSyntaxError(
                    number, f"[{name}:vars] is for {name!r}, a group defined nowhere"
                )
            )
    problems += inventory.finish()
    return inventory, sorted(problems, key=lambda problem: problem.line)


def _host_line(inventory: AnsibleInventory, group: str, line: str, number: int) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise AnsibleSyntaxError(number, f"cannot read host line: {exc}") from None
    if not tokens:
        return
    if "=" in tokens[0]:
        # Ansible would take `ansible_host=192.0.2.1` for a host of that name.
        raise AnsibleSyntaxError(
            number, f"a host line starts with the host's name, not with {tokens[0]!r}"
        )
    try:
        names, port = expand_hosts(tokens[0])
    except ValueError as exc:
        raise AnsibleSyntaxError(number, str(exc)) from None
    variables: dict[str, Var] = {}
    if port is not None:
        variables["ansible_port"] = Var(port, number, f"host {tokens[0]}")
    for token in tokens[1:]:
        key, equals, value = token.partition("=")
        if not equals:
            raise AnsibleSyntaxError(
                number, f"expected key=value after the host name, got {token!r}"
            )
        variables[key] = Var(parse_value(value), number, f"host {tokens[0]}")
    for name in names:
        inventory.add_host(name, number, group, variables)
