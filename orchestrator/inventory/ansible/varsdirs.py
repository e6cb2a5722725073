"""``group_vars/`` and ``host_vars/`` beside an inventory file, as Ansible reads them.

Most Ansible fleets keep their variables there rather than in the inventory itself, so
herd reads them too (Ansible's ``host_group_vars`` plugin): for a group or host NAME,
the first of ``NAME``, ``NAME.yml``, ``NAME.yaml``, ``NAME.json`` that exists; a
directory is read whole, its files in name order (hidden files and ``*~`` backups
skipped, subdirectories too). A file encrypted whole with ansible-vault is skipped:
herd cannot read it, and it usually holds secrets herd has no use for.

Their variables sit above the inventory file's in Ansible's order: inventory ``all``,
inventory groups, ``group_vars/all``, ``group_vars/GROUP``, inventory host,
``host_vars/HOST`` (``AnsibleInventory.vars_of``).
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.inventory.ansible.groups import OPAQUE, AnsibleInventory, AnsibleSyntaxError, Var
from orchestrator.inventory.ansible.yamlfile import ANSIBLE_TAG, is_ansible_labels
from orchestrator.inventory.problems import describe_value
from orchestrator.inventory.source import UnreadableYaml, parse, read_source

EXTENSIONS = ("", ".yml", ".yaml", ".json")
_VAULT_HEADER = b"$ANSIBLE_VAULT;"


class VarsFileError(AnsibleSyntaxError):
    """A problem in a vars file, which names that file rather than the inventory."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(line, message)
        self.file = file


def add_vars_dirs(inventory: AnsibleInventory, inventory_file: Path) -> list[VarsFileError]:
    """Read the vars files beside ``inventory_file`` into ``inventory``; their problems."""
    problems: list[VarsFileError] = []
    base = inventory_file.parent
    for name, group in inventory.groups.items():
        for path in _files(base / "group_vars", name):
            group.file_vars.update(_read(path, f"group {name}", problems))
    for host in inventory.host_vars:
        for path in _files(base / "host_vars", host):
            inventory.host_file_vars.setdefault(host, {}).update(
                _read(path, f"host {host}", problems)
            )
    return problems


def _files(directory: Path, name: str) -> list[Path]:
    """Ansible's ``DataLoader.find_vars_files``: the first match, a directory expanded."""
    if not directory.is_dir() or "/" in name or name in (".", ".."):
        return []
    for extension in EXTENSIONS:
        path = directory / f"{name}{extension}"
        if path.is_dir():
            return _dir_files(path)
        if path.exists():
            return [path]
    return []


def _dir_files(directory: Path) -> list[Path]:
    found: list[Path] = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith(".") or entry.endswith("~"):
            continue
        path = directory / entry
        extension = os.path.splitext(entry)[1]
        if path.is_dir() and not extension:
            found += _dir_files(path)
        elif path.is_file() and extension in EXTENSIONS:
            found.append(path)
    return found


def _read(path: Path, owner: str, problems: list[VarsFileError]) -> dict[str, Var]:
    file = str(path)
    try:
        source = read_source(path)
        if source.lstrip().startswith(_VAULT_HEADER):
            return {}
        doc = parse(source, is_ansible_labels_in_vars_file)
    except OSError as exc:
        problems.append(VarsFileError(file, 1, f"cannot read: {exc.strerror or exc}"))
        return {}
    except UnreadableYaml as exc:
        problems.append(VarsFileError(file, exc.line or 1, exc.message))
        return {}
    opaque = set()
    for issue in doc.issues:
        if ANSIBLE_TAG.search(issue.message):
            opaque.add(issue.path)
        else:
            problems.append(VarsFileError(file, issue.line, issue.message))
    if doc.data is None:
        return {}
    if not isinstance(doc.data, dict):
        problems.append(
            VarsFileError(
                file, 1, f"must be a mapping of variables, not {describe_value(doc.data)}"
            )
        )
        return {}
    return {
        str(key): Var(OPAQUE if (key,) in opaque else value, doc.line_of((key,)), owner, file)
        for key, value in doc.data.items()
    }


def is_ansible_labels_in_vars_file(path: tuple[object, ...]) -> bool:
    """``herd_labels`` at a vars file's top level keeps its values as written."""
    return path == ("herd_labels",) or is_ansible_labels(path)
