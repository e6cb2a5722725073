"""One Ansible inventory file to herd's host specs, or its problems as ``file:line`` lines.

Which hosts herd takes: every host of the file, or with ``group`` (``herd inventory
apply --group hypervisors``) those of that group and its child groups, for an Ansible
inventory that also lists web servers and databases. Only the variables of the hosts
taken are looked at: a typo in the web servers' variables is not herd's to report.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from orchestrator.inventory.ansible.groups import (
    ALL,
    OPAQUE,
    AnsibleInventory,
    AnsibleSyntaxError,
)
from orchestrator.inventory.ansible.hostvars import HERD_VARS, HostFields, Source, host_fields
from orchestrator.inventory.ansible.ini import read_ini
from orchestrator.inventory.ansible.varsdirs import add_vars_dirs
from orchestrator.inventory.models import HostSpec, validation_context
from orchestrator.inventory.problems import InventoryProblem, validation_message
from orchestrator.inventory.source import DataPath


@dataclass(frozen=True)
class HostName:
    """A host's herd name and where it is written, to find the same host in two files."""

    name: str
    line: int
    field: str


@dataclass
class AnsibleHosts:
    """What one Ansible file gives herd."""

    file: str
    specs: list[HostSpec] = field(default_factory=list)
    names: list[HostName] = field(default_factory=list)
    problems: list[InventoryProblem] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    """The file's groups, to say which exist when ``--group`` names none of them."""

    def tell(self, line: int | None, field: str, message: str, file: str | None = None) -> None:
        problem = InventoryProblem(file or self.file, line, field, message)
        if problem not in self.problems:  # a group variable is wrong for all its hosts
            self.problems.append(problem)


def read_ini_file(source: bytes) -> tuple[AnsibleInventory, list[AnsibleSyntaxError]]:
    """``read_ini`` of a file's bytes, which must be UTF-8 (as Ansible's are)."""
    try:
        text = source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = source[: exc.start].count(b"\n") + 1
        raise AnsibleSyntaxError(line, f"not UTF-8 text (byte {exc.start})") from None
    return read_ini(text)


def ansible_hosts(
    file: str,
    base_dir: Path,
    inventory: AnsibleInventory,
    syntax: list[AnsibleSyntaxError],
    group: str | None,
) -> AnsibleHosts:
    """The hosts of ``inventory`` (of ``group``, if given) as validated ``HostSpec``\\ s."""
    found = AnsibleHosts(file, groups=sorted(inventory.groups))
    syntax = [*syntax, *add_vars_dirs(inventory, Path(file))]
    for problem in syntax:
        found.tell(problem.line, "", problem.message, getattr(problem, "file", None))
    if group is not None and group not in inventory.groups:
        return found
    for host in inventory.members(group or ALL):
        fields = host_fields(host, inventory.host_lines[host], inventory.vars_of(host))
        _check(found, fields, base_dir)
    return found


def _check(found: AnsibleHosts, fields: HostFields, base_dir: Path) -> None:
    for source in fields.unknown:
        close = difflib.get_close_matches(source.var, list(HERD_VARS), n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]!r}?)" if close else " (herd_ is herd's prefix)"
        found.tell(
            source.line, source.owner, f"unknown herd variable {source.var!r}{hint}", source.file
        )
    opaque = [source for path, source in fields.sources.items() if _at(fields, path) is OPAQUE]
    for source in opaque:
        found.tell(
            source.line,
            source.label,
            "herd cannot read a !vault or !unsafe value: give herd this one in plain text",
            source.file,
        )
    name = fields.sources[("name",)]
    if isinstance(fields.item.get("name"), str):
        found.names.append(HostName(fields.item["name"], name.line, name.label))
    if opaque:
        return
    context = validation_context(base_dir, f"{found.file}:{name.line}")
    try:
        spec = HostSpec.model_validate(fields.item, context=context)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc: DataPath = tuple(part for part in error["loc"] if part != "[key]")
            source, rest = _source_of(fields.sources, loc)
            message = validation_message(error)
            if loc == ("name",) and not source.var:
                message += " (set herd_name to give herd another name for it)"
            elif loc == ("address",) and not source.var:
                message += " (set ansible_host to the address herd should connect to)"
            found.tell(source.line, source.label + _suffix(rest), message, source.file)
        return
    if not fields.unknown:
        found.specs.append(spec)


def _at(fields: HostFields, path: DataPath) -> object:
    value: object = fields.item
    for part in path:
        value = value[part] if isinstance(value, dict) else None
    return value


def _source_of(sources: dict[DataPath, Source], loc: DataPath) -> tuple[Source, DataPath]:
    """The variable that wrote the field at ``loc`` (or holds it), and the part below it."""
    for end in range(len(loc), 0, -1):
        source = sources.get(loc[:end])
        if source is not None:
            return source, loc[end:]
    return sources[("name",)], loc


def _suffix(rest: DataPath) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)
