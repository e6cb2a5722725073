"""An Ansible inventory as Ansible itself reads it: groups, hosts, their variables, lines.

Both readers (``ini`` and ``yamlfile``) fill one ``AnsibleInventory``; what a host's
variables are is then decided here, by Ansible's rules (``ansible.inventory.helpers.
get_group_vars``): the host's groups and all their ancestors are merged from the
shallowest to the deepest (``all`` first, then its children...), equal depths ordered by
``ansible_group_priority`` then by name, and the host's own variables win over all of
them. A value replaces the one under it whole, mappings too (Ansible's default
``hash_behaviour = replace``). Every value keeps the line it was written on, so herd can
point at it.

Host patterns (``hv[01:03]``, ``db-[a:c]``, ``host:2222``) expand as Ansible's do.
"""

from __future__ import annotations

import ast
import re
import string
import warnings
from dataclasses import dataclass, field
from typing import Any

ALL = "all"
UNGROUPED = "ungrouped"
PRIORITY_VAR = "ansible_group_priority"
MAX_HOSTS_PER_PATTERN = 10_000
"""A pattern such as ``hv[0:99999999]`` is a typo, not a fleet: refused past this."""


class AnsibleSyntaxError(Exception):
    """What the file gets wrong, on ``line`` (1-based); the reader goes on to the next line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class Opaque:
    """A value herd does not read (``!vault``-encrypted, ``!unsafe``): fine where herd
    does not need it."""

    def __repr__(self) -> str:
        return "<a !vault or !unsafe value>"


OPAQUE = Opaque()


@dataclass(frozen=True)
class Var:
    """A variable's value, the line it is written on, and whose it is as written there
    (``host hv[01:03]``, ``group hypervisors``): what an operator searches the file for."""

    value: Any
    line: int
    owner: str
    file: str | None = None
    """The vars file it is written in (``group_vars/hv.yml``); ``None``: the inventory."""


@dataclass
class Group:
    """A group as written: its own variables, child groups and hosts (not inherited ones)."""

    name: str
    line: int
    vars: dict[str, Var] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    file_vars: dict[str, Var] = field(default_factory=dict)
    """From ``group_vars/NAME``: above every inventory group's variables."""
    priority: int = 1
    """``ansible_group_priority``: orders groups of one depth (higher wins); Ansible
    takes it out of the group's variables."""

    def set_var(self, name: str, var: Var) -> None:
        """Set a variable written in the group, as Ansible's ``Group.set_variable``."""
        if name != PRIORITY_VAR:
            self.vars[name] = var
            return
        try:
            self.priority = int(var.value)
        except (TypeError, ValueError):
            raise AnsibleSyntaxError(
                var.line, f"{PRIORITY_VAR} must be a whole number, not {var.value!r}"
            ) from None


@dataclass
class AnsibleInventory:
    """Every group and host of one file, with their own variables."""

    groups: dict[str, Group] = field(default_factory=dict)
    host_vars: dict[str, dict[str, Var]] = field(default_factory=dict)
    host_file_vars: dict[str, dict[str, Var]] = field(default_factory=dict)
    """From ``host_vars/NAME``: above everything else."""
    host_lines: dict[str, int] = field(default_factory=dict)
    """The line each host is first written on: where herd sends the operator."""
    _depth: dict[str, int] = field(default_factory=dict)

    def group(self, name: str, line: int) -> Group:
        """The group ``name``, made on first mention."""
        if name not in self.groups:
            self.groups[name] = Group(name, line)
        return self.groups[name]

    def add_host(self, name: str, line: int, group: str, variables: dict[str, Var]) -> None:
        """Put ``name`` in ``group``; a variable set again later replaces the earlier one."""
        self.host_lines.setdefault(name, line)
        self.host_vars.setdefault(name, {}).update(variables)
        members = self.group(group, line).hosts
        if name not in members:
            members.append(name)

    def add_child(self, parent: str, child: str, line: int) -> None:
        """Make ``child`` a child of ``parent``, refusing a loop as Ansible does."""
        if child == parent or parent in self._descendants(child):
            raise AnsibleSyntaxError(
                line, f"group {child!r} as a child of {parent!r} makes a loop of groups"
            )
        children = self.group(parent, line).children
        if child not in children:
            children.append(child)

    def finish(self) -> None:
        """What Ansible does once a file is read: every group without a parent is a child
        of ``all``, every host in no other group is in ``ungrouped``."""
        everyone = self.group(ALL, 1)
        self.group(UNGROUPED, 1)
        parented = {child for group in self.groups.values() for child in group.children}
        for name in self.groups:
            if name != ALL and name not in parented:
                everyone.children.append(name)
        grouped = {
            host for name, group in self.groups.items() if name != ALL for host in group.hosts
        }
        for host in self.host_vars:
            if host not in grouped:
                self.groups[UNGROUPED].hosts.append(host)
        self._depth = self._depths()

    def members(self, group: str) -> list[str]:
        """The hosts of ``group`` and of its descendants, in the order they are written."""
        names = {group, *self._descendants(group)}
        wanted = {host for name in names for host in self.groups[name].hosts}
        if group == ALL:
            wanted = set(self.host_vars)
        return [host for host in self.host_vars if host in wanted]

    def vars_of(self, host: str) -> dict[str, Var]:
        """The host's variables as Ansible resolves them (see the module docstring)."""
        direct = [name for name, group in self.groups.items() if host in group.hosts]
        mine = set(direct)
        for name in direct:
            mine |= self._ancestors(name)
        mine.add(ALL)
        depth = self._depth or self._depths()
        ordered = sorted(mine, key=lambda g: (depth[g], self.groups[g].priority, g))
        resolved: dict[str, Var] = {}
        for name in ordered:
            resolved.update(self.groups[name].vars)
        for name in ordered:
            resolved.update(self.groups[name].file_vars)
        resolved.update(self.host_vars[host])
        resolved.update(self.host_file_vars.get(host, {}))
        return resolved

    def _depths(self) -> dict[str, int]:
        """How far below ``all`` each group sits, by its longest path (Ansible's depth)."""
        depth = {name: 0 for name in self.groups}

        def lower(name: str, at: int) -> None:
            for child in self.groups[name].children:
                if depth[child] < at + 1:
                    depth[child] = at + 1
                    lower(child, at + 1)

        lower(ALL, 0)
        return depth

    def _descendants(self, group: str) -> set[str]:
        found: set[str] = set()
        todo = list(self.groups[group].children) if group in self.groups else []
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo += self.groups[name].children
        return found

    def _ancestors(self, group: str) -> set[str]:
        return {name for name in self.groups if group in self._descendants(name)}


def parse_value(text: str) -> Any:
    """An INI value as Ansible reads it: a Python literal (``2222``, ``True``, ``'x'``,
    ``{'a': 1}``) when it is one, else the text itself (``false`` stays a string)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _as_ansible_keeps(value)


def _as_ansible_keeps(value: Any) -> Any:
    """Ansible turns tuples and sets into lists, bytes into text, and keeps complex
    numbers and ``...`` as the text they were written as."""
    if isinstance(value, (list, tuple, set)):
        return [_as_ansible_keeps(item) for item in value]
    if isinstance(value, dict):
        return {_as_ansible_keeps(k): _as_ansible_keeps(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is ... or isinstance(value, complex):
        return str(value) if value is not ... else "..."
    return value


# Ansible's parse_address: a port is a ':NN' after a name or IPv4 address, or after a
# bracketed IPv6 address ([2001:db8::1]:2222); an unbracketed IPv6 address has none.
_BRACKETED_PORT = re.compile(r"^\[(.+)\]:(\d+)$")
_HOST_PORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])+):(\d+)$")


def expand_hosts(pattern: str) -> tuple[list[str], int | None]:
    """The host names a pattern stands for, and the port it gives them (or ``None``).

    Raises ``ValueError`` with Ansible's reason for a pattern it refuses.
    """
    port: int | None = None
    for regex in (_BRACKETED_PORT, _HOST_PORT):
        match = regex.match(pattern)
        if match:
            pattern, port = match.group(1), int(match.group(2))
            break
    if pattern.endswith(":") and port is None:
        raise ValueError(f"host {pattern!r} ends in ':', which is kept for a port")
    if "[" not in pattern or _is_ipv6(pattern):
        return [pattern], port
    names = _expand_range(pattern)
    return names, port


def _is_ipv6(text: str) -> bool:
    return text.count(":") >= 2 and "[" not in text


def _expand_range(pattern: str) -> list[str]:
    """``hv[01:03]-x`` → hv01-x, hv02-x, hv03-x; ``[a:c]`` letters; ``[1:9:2]`` a step."""
    head, bracket, rest = pattern.partition("[")
    inner, closed, tail = rest.partition("]")
    if not bracket or not closed:
        raise ValueError(f"host range in {pattern!r} is not closed with ']'")
    bounds = inner.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError(f"host range [{inner}] must be [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise ValueError(f"host range [{inner}] must give an end")
    try:
        step = int(step_text)
    except ValueError:
        raise ValueError(f"host range [{inner}]: the step must be a whole number") from None
    if step < 1:
        raise ValueError(f"host range [{inner}]: the step must be at least 1")
    width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
    if width and len(end) != width:
        raise ValueError(f"host range [{inner}] must give begin and end with equal widths")
    if begin in string.ascii_letters and end in string.ascii_letters:
        first, last = string.ascii_letters.index(begin), string.ascii_letters.index(end)
        if first > last:
            raise ValueError(f"host range [{inner}] must have begin <= end")
        steps: list[str] = list(string.ascii_letters[first : last + 1 : step])
    else:
        try:
            low, high = int(begin), int(end)
        except ValueError:
            raise ValueError(f"host range [{inner}] must be numbers or single letters") from None
        if (high - low) // step + 1 > MAX_HOSTS_PER_PATTERN:
            raise ValueError(
                f"host range [{inner}] makes more than {MAX_HOSTS_PER_PATTERN:,} hosts"
            )
        steps = [str(n).zfill(width) for n in range(low, high + 1, step)]
    names: list[str] = []
    for part in steps:
        name = f"{head}{part}{tail}"
        names += _expand_range(name) if "[" in name else [name]
        if len(names) > MAX_HOSTS_PER_PATTERN:
            raise ValueError(f"{pattern!r} makes more than {MAX_HOSTS_PER_PATTERN:,} hosts")
    return names
