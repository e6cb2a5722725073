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
    members: set[str] = field(default_factory=set, repr=False)
    """``hosts`` as a set, to add a host in constant time."""
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
    _parents: dict[str, list[str]] = field(default_factory=dict)
    _groups_of: dict[str, list[str]] = field(default_factory=dict)
    """Host → the groups it is written in, after ``finish``."""
    _edge_lines: dict[tuple[str, str], int] = field(default_factory=dict)
    _layers: dict[tuple[str, ...], dict[str, Var]] = field(default_factory=dict)

    def group(self, name: str, line: int) -> Group:
        """The group ``name``, made on first mention."""
        if name not in self.groups:
            self.groups[name] = Group(name, line)
        return self.groups[name]

    def add_host(self, name: str, line: int, group: str, variables: dict[str, Var]) -> None:
        """Put ``name`` in ``group``; a variable set again later replaces the earlier one."""
        self.host_lines.setdefault(name, line)
        self.host_vars.setdefault(name, {}).update(variables)
        target = self.group(group, line)
        if name not in target.members:
            target.members.add(name)
            target.hosts.append(name)

    def add_child(self, parent: str, child: str, line: int) -> None:
        """Make ``child`` a child of ``parent`` (a loop is refused by ``finish``)."""
        children = self.group(parent, line).children
        if child not in children:
            children.append(child)
            self._edge_lines.setdefault((parent, child), line)

    def finish(self) -> list[AnsibleSyntaxError]:
        """What Ansible does once a file is read: every group without a parent is a child
        of ``all``, every host in no other group is in ``ungrouped``; and how deep each
        group sits. Returns the loops of groups found (Ansible refuses them too)."""
        everyone = self.group(ALL, 1)
        self.group(UNGROUPED, 1)
        parented = {child for group in self.groups.values() for child in group.children}
        for name in self.groups:
            if name != ALL and name not in parented:
                everyone.children.append(name)
        for name, group in self.groups.items():
            for host in group.hosts:
                self._groups_of.setdefault(host, []).append(name)
            for child in group.children:
                self._parents.setdefault(child, []).append(name)
        for host in self.host_vars:
            if not any(name != ALL for name in self._groups_of.get(host, [])):
                self.groups[UNGROUPED].hosts.append(host)
                self._groups_of.setdefault(host, []).append(UNGROUPED)
        return self._order()

    def _order(self) -> list[AnsibleSyntaxError]:
        """Each group's depth: its longest path from ``all`` (Kahn's topological order,
        without recursion: a file may chain thousands of groups)."""
        waiting = {name: len(self._parents.get(name, [])) for name in self.groups}
        self._depth = {name: 0 for name in self.groups}
        ready = [name for name, count in waiting.items() if count == 0]
        while ready:
            name = ready.pop()
            for child in self.groups[name].children:
                self._depth[child] = max(self._depth[child], self._depth[name] + 1)
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        looped = {name for name, count in waiting.items() if count > 0}
        if not looped:
            return []
        # Walk parent to child inside the loop until a group comes back: that edge closes it.
        path = [min(looped)]
        while True:
            child = next(c for c in self.groups[path[-1]].children if c in looped)
            if child in path:
                cycle = [*path[path.index(child) :], child]
                break
            path.append(child)
        line = self._edge_lines.get((cycle[-2], cycle[-1]), self.groups[cycle[-1]].line)
        return [AnsibleSyntaxError(line, f"groups in a loop: {' -> '.join(cycle)}")]

    def members(self, group: str) -> list[str]:
        """The hosts of ``group`` and of its descendants, in the order they are written."""
        if group == ALL:
            return list(self.host_vars)
        names = {group, *self._descendants(group)}
        return [
            host
            for host in self.host_vars
            if any(name in names for name in self._groups_of.get(host, []))
        ]

    def vars_of(self, host: str) -> dict[str, Var]:
        """The host's variables as Ansible resolves them (see the module docstring)."""
        resolved = dict(self._group_layer(tuple(sorted(self._groups_of.get(host, [])))))
        resolved.update(self.host_vars[host])
        resolved.update(self.host_file_vars.get(host, {}))
        return resolved

    def _group_layer(self, direct: tuple[str, ...]) -> dict[str, Var]:
        """The variables that hosts written in the groups ``direct`` get from groups:
        the same for all of them, so worked out once (a thousand hosts of one rack)."""
        cached = self._layers.get(direct)
        if cached is not None:
            return cached
        mine = {ALL}
        todo = list(direct)
        while todo:
            name = todo.pop()
            if name not in mine:
                mine.add(name)
                todo += self._parents.get(name, [])
        depth = self._depth
        ordered = sorted(mine, key=lambda g: (depth.get(g, 0), self.groups[g].priority, g))
        layer: dict[str, Var] = {}
        for name in ordered:
            layer.update(self.groups[name].vars)
        for name in ordered:
            layer.update(self.groups[name].file_vars)
        self._layers[direct] = layer
        return layer

    def _descendants(self, group: str) -> set[str]:
        found: set[str] = set()
        todo = list(self.groups[group].children) if group in self.groups else []
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo += self.groups[name].children
        return found


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
