"""Inventory files to an ``Inventory``, or every problem in them, one line each.

Three steps per file, each keeping line numbers: ``source.parse`` builds the YAML into
data and a ``data path -> line`` map; the sections are checked by hand (what is a list,
what is a mapping) and each host has its file's ``defaults`` merged under it while we
note where every merged value came from; pydantic validates each entry. A pydantic
error's ``loc`` is then walked back to the key that was written (in the host or in
``defaults``) and its line. Names must be unique per kind across all the files.

``defaults`` apply to the hosts of the file they are written in, so a file reads on its
own; split a fleet into several files to give racks different defaults.

A file may also be an Ansible inventory (INI or YAML), which gives hosts only:
``orchestrator.inventory.ansible`` reads it and says how its format is told.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import InvalidInput
from orchestrator.inventory.ansible import (
    YAML_SUFFIXES,
    AnsibleInventory,
    AnsibleSyntaxError,
    read_groups,
    yaml_kind,
)
from orchestrator.inventory.ansible.load import ansible_hosts, read_ini_file
from orchestrator.inventory.ansible.yamlfile import is_ansible_labels
from orchestrator.inventory.models import (
    HOST_IDENTITY,
    FlavorSpec,
    HostDefaults,
    HostSpec,
    ImageSpec,
    Inventory,
    NetworkSpec,
    validation_context,
)
from orchestrator.inventory.problems import (
    InventoryError,
    InventoryProblem,
    describe_value,
    validation_message,
)
from orchestrator.inventory.source import (
    DataPath,
    Document,
    UnreadableYaml,
    read_source,
    read_yaml,
)

_SECTIONS = ("defaults", "hosts", "flavors", "images", "networks")
_KINDS: dict[str, type[BaseModel]] = {
    "hosts": HostSpec,
    "flavors": FlavorSpec,
    "images": ImageSpec,
    "networks": NetworkSpec,
}
_SINGULAR = {"hosts": "host", "flavors": "flavor", "images": "image", "networks": "network"}
_STRING_MAPS = {"hosts": "labels", "flavors": "extra_specs", "images": "properties"}
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def load_inventory(*paths: Path, group: str | None = None) -> Inventory:
    """Read, merge and validate inventory files; raise ``InventoryError`` listing every problem.

    An empty file, or one with only comments, is a valid empty inventory. Ansible
    inventories give hosts only (all of them, or ``group``'s); a ``group`` that none of
    them has is refused, as a typo would otherwise apply no hosts and remove the rest.
    """
    problems: list[InventoryProblem] = []
    specs: dict[str, list[Any]] = {kind: [] for kind in _KINDS}
    first_seen: dict[tuple[str, str], tuple[str, int]] = {}
    ansible_groups: dict[str, list[str]] = {}
    for path in paths:
        loaded = _FileLoader(Path(path))
        loaded.load(group)
        if loaded.ansible:
            ansible_groups[loaded.file] = loaded.groups
        for name in loaded.names:
            file, line = first_seen.setdefault((name.kind, name.name), (loaded.file, name.line))
            if (file, line) != (loaded.file, name.line):
                first = f"line {line}" if file == loaded.file else f"{file}:{line}"
                loaded.tell(
                    InventoryProblem(
                        loaded.file,
                        name.line,
                        name.field,
                        f"duplicate {_SINGULAR[name.kind]} name {name.name!r} (first on {first})",
                    )
                )
        problems += sorted(loaded.problems, key=lambda problem: problem.line or 0)
        for kind, entries in loaded.specs.items():
            specs[kind] += entries
    if problems:
        raise InventoryError(problems)
    if group is not None:
        _check_group(group, ansible_groups)
    return Inventory(**specs)


def _check_group(group: str, ansible_groups: dict[str, list[str]]) -> None:
    if not ansible_groups:
        raise InvalidInput(f"--group {group}: none of the files is an Ansible inventory")
    if not any(group in groups for groups in ansible_groups.values()):
        known = sorted({name for groups in ansible_groups.values() for name in groups})
        close = difflib.get_close_matches(group, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidInput(
            f"--group {group}: no Ansible inventory has that group ({hint}groups: "
            f"{', '.join(known)})"
        )


@dataclass(frozen=True)
class _Name:
    """A name as written, kept even when its entry is invalid, to find duplicates."""

    kind: str
    name: str
    line: int
    field: str


class _FileLoader:
    """Everything one file holds: its valid specs, its names, its problems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = str(path)
        # Relative paths in the file are relative to the file; symlinks are not resolved
        # so they mean what the operator sees.
        self.base_dir = Path(os.path.abspath(path)).parent
        self.doc = Document(data=None)
        self.problems: list[InventoryProblem] = []
        self._told: set[InventoryProblem] = set()
        self.specs: dict[str, list[Any]] = {kind: [] for kind in _KINDS}
        self.names: list[_Name] = []
        self.ansible = False
        """Whether the file is an Ansible inventory; ``groups`` are then its groups."""
        self.groups: list[str] = []

    def tell(self, problem: InventoryProblem) -> None:
        """Record ``problem`` once: a bad value in ``defaults`` fails every host it reaches."""
        if problem not in self._told:
            self._told.add(problem)
            self.problems.append(problem)

    def load(self, group: str | None = None) -> None:
        """Read the file as herd's YAML or an Ansible inventory (``orchestrator.inventory.
        ansible`` says how the format is told); ``group`` selects an Ansible file's hosts."""
        yaml_suffix = self.path.suffix.lower() in YAML_SUFFIXES
        try:
            if self.path.suffix.lower() == ".ini":
                self._ansible(*read_ini_file(read_source(self.path)), group)
                return
            self.doc = read_yaml(self.path, _verbatim)
        except OSError as exc:
            self.tell(InventoryProblem(self.file, None, "", f"cannot read: {_reason(exc)}"))
            return
        except AnsibleSyntaxError as exc:
            self.tell(InventoryProblem(self.file, exc.line, "", exc.message))
            return
        except UnreadableYaml as exc:
            if yaml_suffix or exc.line is None:
                self.tell(InventoryProblem(self.file, exc.line, "", exc.message))
            else:  # not YAML, no YAML suffix: Ansible would read it as INI next
                self._ini_after_yaml(group)
            return
        data = self.doc.data
        if data is not None and not isinstance(data, dict) and not yaml_suffix:
            self._ini_after_yaml(group)
            return
        if isinstance(data, dict):
            try:
                kind = yaml_kind(data)
            except ValueError as exc:
                self._problem((), str(exc), field="")
                return
            if kind == "ansible":  # read_groups tells the document's issues itself
                self._ansible(*read_groups(self.doc), group)
                return
        for issue in self.doc.issues:
            self._problem(issue.path, issue.message, line=issue.line)
        if data is None:
            return
        if not isinstance(data, dict):
            self._problem(
                (),
                f"the top level must be a mapping with keys {', '.join(_SECTIONS)}, "
                f"not {describe_value(data)}",
            )
            return
        for key in data:
            if key not in _SECTIONS:
                self._problem((key,), _unknown_key(key, _SECTIONS, "top-level key"), field="")
        defaults = self._defaults(data.get("defaults"))
        for kind in _KINDS:
            self._section(kind, data.get(kind), defaults)

    def _ini_after_yaml(self, group: str | None) -> None:
        try:
            self._ansible(*read_ini_file(read_source(self.path)), group)
        except (OSError, UnreadableYaml, AnsibleSyntaxError) as exc:
            line = getattr(exc, "line", None)
            message = exc.message if hasattr(exc, "message") else f"cannot read: {_reason(exc)}"
            self.tell(InventoryProblem(self.file, line, "", message))

    def _ansible(
        self, inventory: AnsibleInventory, syntax: list[AnsibleSyntaxError], group: str | None
    ) -> None:
        self.ansible = True
        found = ansible_hosts(self.file, self.base_dir, inventory, syntax, group)
        self.groups = found.groups
        for problem in found.problems:
            self.tell(problem)
        self.specs["hosts"] += found.specs
        self.names += [_Name("hosts", n.name, n.line, n.field) for n in found.names]

    def _defaults(self, raw: Any) -> dict[Hashable, Any]:
        """``defaults`` if valid on its own, else nothing (its problems are told once here)."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self._problem(
                ("defaults",), f"must be a mapping of host settings, not {describe_value(raw)}"
            )
            return {}
        try:
            HostDefaults.model_validate(raw, context=validation_context(self.base_dir))
        except ValidationError as exc:
            self._validation_problems(exc, HostDefaults, lambda loc: ("defaults", *loc))
            return {}
        return raw

    def _section(self, kind: str, raw: Any, defaults: dict[Hashable, Any]) -> None:
        if raw is None:  # `hosts:` with every entry commented out
            return
        if not isinstance(raw, list):
            self._problem((kind,), f"must be a list of {kind}, not {describe_value(raw)}")
            return
        model = _KINDS[kind]
        for index, item in enumerate(raw):
            at = (kind, index)
            if not isinstance(item, dict):
                self._problem(at, f"must be a mapping, not {describe_value(item)}")
                continue
            if isinstance(item.get("name"), str):
                name_at = (*at, "name")
                self.names.append(
                    _Name(kind, item["name"], self.doc.line_of(name_at), self._field(name_at))
                )
            origin_of: dict[DataPath, DataPath] = {(): at}
            if kind == "hosts":
                item = _merge(defaults, item, ("defaults",), at, (), origin_of)
            context = validation_context(self.base_dir, f"{self.file}:{self.doc.line_of(at)}")
            try:
                self.specs[kind].append(model.model_validate(item, context=context))
            except ValidationError as exc:
                self._validation_problems(exc, model, partial(_written_at, origin_of))

    def _validation_problems(
        self,
        exc: ValidationError,
        model: type[BaseModel],
        written_at: Callable[[DataPath], DataPath],
    ) -> None:
        """Turn pydantic errors into problems at the path, and line, where the value is written."""
        for error in exc.errors(include_url=False):
            loc: DataPath = tuple(part for part in error["loc"] if part != "[key]")
            at = written_at(loc)
            if error["type"] in ("extra_forbidden", "invalid_key") or "[key]" in error["loc"]:
                # A problem with a key is told about its mapping, on the key's line.
                message = _key_message(error, model, loc)
                self._problem(at[:-1], message, line=self.doc.line_of(at))
            else:
                self._problem(at, validation_message(error))

    def _problem(
        self, at: DataPath, message: str, *, line: int | None = None, field: str | None = None
    ) -> None:
        self.tell(
            InventoryProblem(
                self.file,
                self.doc.line_of(at) if line is None else line,
                self._field(at) if field is None else field,
                message,
            )
        )

    def _field(self, at: DataPath) -> str:
        """``hosts[1] (hv2).ssh.port``: the path, with the entry's name to find it by."""
        text = ""
        for depth, part in enumerate(at):
            if isinstance(part, int) and not isinstance(part, bool):
                text += f"[{part}]"
            elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
                text += f".{part}" if text else part
            else:
                text += f"[{part!r}]"
            if depth == 1 and at[0] in _KINDS:
                name = _name_of(self.doc.data, at[:2])
                if name:
                    # A control character in a name would break the one-line promise.
                    text += f" ({name})" if name.isprintable() else f" ({name!r})"
        return text


def _verbatim(path: DataPath) -> bool:
    """Whether ``path`` is a string-to-string map, whose unquoted values stay as written."""
    if is_ansible_labels(path):
        return True
    match path:
        case ("defaults", "labels"):
            return True
        case (str() as kind, int(), str() as key):
            return _STRING_MAPS.get(kind) == key
    return False


def _merge(
    under: dict[Hashable, Any],
    over: dict[Hashable, Any],
    under_at: DataPath,
    over_at: DataPath,
    merged_at: DataPath,
    origin_of: dict[DataPath, DataPath],
) -> dict[Hashable, Any]:
    """Merge defaults (``under``) and a host (``over``), noting where each value is written.

    The host wins; a mapping on both sides (``ssh``, ``labels``...) merges key by key, so
    a host can change its SSH port and keep the default key.
    """
    merged: dict[Hashable, Any] = {}
    for key in {**under, **over}:
        here = (*merged_at, key)
        if isinstance(under.get(key), dict) and isinstance(over.get(key), dict):
            origin_of[here] = (*over_at, key)
            merged[key] = _merge(
                under[key], over[key], (*under_at, key), (*over_at, key), here, origin_of
            )
        elif key in over:
            origin_of[here] = (*over_at, key)
            merged[key] = over[key]
        else:
            origin_of[here] = (*under_at, key)
            merged[key] = under[key]
    return merged


def _written_at(origin_of: dict[DataPath, DataPath], loc: DataPath) -> DataPath:
    """The document path of a merged value; a missing key goes with its nearest parent."""
    for end in range(len(loc), 0, -1):
        written = origin_of.get(loc[:end])
        if written is not None:
            return (*written, *loc[end:])
    return (*origin_of[()], *loc)


def _key_message(error: ErrorDetails, model: type[BaseModel], loc: DataPath) -> str:
    key = loc[-1]
    if error["type"] == "extra_forbidden":
        if model is HostDefaults and key in HOST_IDENTITY:
            return f"unknown key {key!r} (each host needs its own {key})"
        return _unknown_key(key, _keys_at(model, loc[:-1]))
    if error["type"] == "invalid_key":  # YAML read the key as a number or null
        return f"unknown key {describe_value(error['input'])}"
    return f"a key {validation_message(error)}"


def _keys_at(model: type[BaseModel], loc: DataPath) -> list[str]:
    """The keys the model accepts at ``loc``, to suggest one for a typo."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = next(
            (arg for arg in (field.annotation, *get_args(field.annotation)) if _is_model(arg)),
            None,
        )
    return list(current.model_fields) if _is_model(current) else []


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _unknown_key(key: Hashable, known: Any, what: str = "key") -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f"unknown {what} {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _name_of(data: Any, at: DataPath) -> str | None:
    kind, index = at
    try:
        name = data[kind][index]["name"]
    except (KeyError, IndexError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)
