"""YAML text to plain data, remembering the line every value came from.

``yaml.safe_load`` throws positions away and quietly keeps the last of two equal keys, so
an operator whose ``ram_mb`` is set twice gets the second value and no warning. Here the
document is *composed* (PyYAML's node tree keeps its marks) and built into dicts, lists
and scalars by hand, which lets us record ``data path -> line`` for every key and list
item and report duplicate keys instead of hiding them.

This module knows YAML, not the inventory schema; the one schema hint it takes is
``verbatim``, the paths of string-to-string maps whose unquoted scalars are kept as
written (``ssd: yes`` stays ``"yes"``, ``version: 1.10`` stays ``"1.10"``) rather than
turned into a bool or a float and back. herd's own config.yaml is read here too: every
YAML file an operator hands herd goes through ``read_yaml``.

Two limits keep a hostile or mistaken file from taking the machine down, since an
anchored node is built once per alias: nine lines of nested aliases ("billion laughs")
would expand to 387 million values. A file is read up to ``MAX_FILE_BYTES`` and no
further, and building stops past ``MAX_VALUES`` values, aliases expanded (Go's yaml.v3
refuses "excessive aliasing" for the same reason). Both are far above any real fleet:
a thousand hosts written out in full are 300 KiB and 35,000 values, and half a
million values built take about 100 MB.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.files import FileTooLarge, read_bounded

DataPath = tuple[Hashable, ...]
"""Where a value sits in the document: mapping keys and list indices from the top."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_VALUES = 500_000


class UnreadableYaml(Exception):
    """The bytes are not a YAML document; ``line`` is 1-based, ``None`` if unknown."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Issue:
    """Something the YAML itself gets wrong (a duplicate key), found while building."""

    line: int
    path: DataPath
    message: str


@dataclass
class Document:
    """The built data, the line of every key and list item, and the issues found."""

    data: Any
    lines: dict[DataPath, int] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def line_of(self, path: DataPath) -> int:
        """The line of ``path`` or of its nearest recorded ancestor.

        A missing key has no line of its own; the mapping that lacks it is the best place
        to send the operator.
        """
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return self.lines.get((), 1)


def read_source(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes, reading at most ``limit`` + 1 of them (``/dev/zero``, or a 3 GB
    file given by mistake, costs no more than that); raise ``UnreadableYaml`` past the
    limit, ``OSError`` as ``open`` does (and for a FIFO or a device, which never end)."""
    try:
        return read_bounded(path, limit)
    except FileTooLarge:
        raise UnreadableYaml(
            None, f"larger than {limit // (1024 * 1024)} MiB, the most herd reads of a YAML file"
        ) from None


def read_yaml(path: Path, verbatim: Callable[[DataPath], bool] = lambda _: False) -> Document:
    """``parse`` of a file read with ``read_source``: both limits, one call."""
    return parse(read_source(path), verbatim)


def parse(
    source: bytes, verbatim: Callable[[DataPath], bool], *, max_values: int = MAX_VALUES
) -> Document:
    """Build ``source`` (one YAML document) into data with lines; raise ``UnreadableYaml``.

    PyYAML decodes the bytes itself, honouring UTF-8 and UTF-16 byte order marks.
    An empty document (nothing but comments) builds to ``None``.
    """
    try:
        loader = yaml.SafeLoader(source)  # decodes the start of the text already
        try:
            node = loader.get_single_node()
            if node is None:
                return Document(data=None, lines={(): 1})
            builder = _Builder(loader, verbatim, max_values)
            data = builder.child(node, (), _line(node), raw=False)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, source) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, source) from None
    except RecursionError:
        raise UnreadableYaml(None, "nested too deeply") from None
    return Document(data=data, lines=builder.lines, issues=builder.issues)


class _Builder:
    """Turns a composed node tree into plain data; one instance per document."""

    def __init__(
        self, loader: yaml.SafeLoader, verbatim: Callable[[DataPath], bool], max_values: int
    ) -> None:
        self.loader = loader
        self.verbatim = verbatim
        self.lines: dict[DataPath, int] = {}
        self.issues: list[Issue] = []
        # An anchored node is built once per alias; these stop a self-referencing alias
        # from recursing forever and the anchor's own issues from being told twice.
        self._building: set[int] = set()
        self._told: set[tuple[int, str]] = set()
        # ... and these stop aliases of aliases from expanding without end: every value
        # built counts, and the line of the outermost alias being expanded is kept to
        # name where the document blew up.
        self._left = max_values
        self._max_values = max_values
        self._built: set[int] = set()
        self._alias_line: int | None = None

    def child(self, node: Node, path: DataPath, line: int, *, raw: bool) -> Any:
        """Build the value at ``path``, whose key or list item is on ``line``."""
        self.lines[path] = line
        return self._expand(node, path, line, raw=raw)

    def _expand(self, node: Node, path: DataPath, line: int, *, raw: bool) -> Any:
        """``_value``, noting where the alias is when the node was built before.

        PyYAML hands an alias over as its anchored node, marks and all, so an alias in a
        list has no line of its own: the list's key names it then.
        """
        if id(node) not in self._built or self._alias_line is not None:
            return self._value(node, path, raw=raw)
        self._alias_line = self.lines.get(path[:-1], line) if line == _line(node) else line
        try:
            return self._value(node, path, raw=raw)
        finally:
            self._alias_line = None

    def _value(self, node: Node, path: DataPath, *, raw: bool) -> Any:
        self._left -= 1
        if self._left < 0:
            raise UnreadableYaml(
                self._alias_line or _line(node),
                f"aliases expand to more than {self._max_values:,} values (a YAML alias "
                "bomb?): write the values out, or alias less",
            )
        self._built.add(id(node))
        if isinstance(node, ScalarNode):
            return self._scalar(node, path, raw=raw)
        if id(node) in self._building:
            self._tell(_line(node), path, "an alias refers to its own anchor (recursive data)")
            return None
        if node.tag not in (_MAP_TAG, _SEQ_TAG):
            self._tell(_line(node), path, f"unsupported YAML tag {node.tag!r}")
            return None
        self._building.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            return [
                self.child(item, (*path, index), _line(item), raw=False)
                for index, item in enumerate(node.value)
            ]
        finally:
            self._building.discard(id(node))

    def _mapping(self, node: MappingNode, path: DataPath) -> dict[Hashable, Any]:
        raw = self.verbatim(path)
        result: dict[Hashable, Any] = {}
        merged: set[Hashable] = set()
        own = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
        merges = [(k, v) for k, v in node.value if k.tag == _MERGE_TAG]
        for key_node, value_node in merges:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            # YAML merge keys: an earlier source wins over a later one, so apply in reverse.
            for source in reversed(sources):
                if not isinstance(source, MappingNode):
                    self._tell(_line(source), path, "'<<' can only merge mappings")
                    continue
                part = self._expand(source, path, _line(key_node), raw=False)
                if isinstance(part, dict):
                    result.update(part)
                    merged.update(part)
        first_line: dict[Hashable, int] = {}
        for key_node, value_node in own:
            line = _line(key_node)
            key = self._key(key_node, path, raw=raw)
            if key is _NO_KEY:
                continue
            if key in first_line:
                self._tell(line, path, f"duplicate key {key!r} (first on line {first_line[key]})")
                continue
            first_line[key] = line
            if key in merged:
                self._forget((*path, key))
            result[key] = self.child(value_node, (*path, key), line, raw=raw)
        return result

    def _key(self, node: Node, path: DataPath, *, raw: bool) -> Any:
        if not isinstance(node, ScalarNode):
            self._tell(_line(node), path, "a mapping key must be a plain value, not a collection")
            return _NO_KEY
        key = self._scalar(node, path, raw=raw)
        if not isinstance(key, Hashable):
            self._tell(_line(node), path, f"{key!r} cannot be a mapping key")
            return _NO_KEY
        return key

    def _scalar(self, node: ScalarNode, path: DataPath, *, raw: bool) -> Any:
        if raw and node.tag not in (_STR_TAG, _NULL_TAG):
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            # e.g. a !!python/object tag, or a timestamp such as 2024-13-45
            problem = getattr(exc, "problem", None) or str(exc)
            self._tell(_line(node), path, f"cannot read {node.value!r}: {problem}")
            return None

    def _forget(self, path: DataPath) -> None:
        """Drop the lines a merged value left under ``path``: an own key replaced it."""
        for known in [p for p in self.lines if p[: len(path)] == path]:
            del self.lines[known]

    def _tell(self, line: int, path: DataPath, message: str) -> None:
        if (line, message) not in self._told:
            self._told.add((line, message))
            self.issues.append(Issue(line, path, message))


_NO_KEY = object()


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _reader_error(exc: yaml.reader.ReaderError, source: bytes) -> UnreadableYaml:
    if exc.encoding == "unicode":
        # Decoded fine, but holds a control character; the position counts characters.
        text = source.decode("utf-8", errors="replace")
        return UnreadableYaml(
            text[: exc.position].count("\n") + 1,
            f"YAML syntax error: character #x{exc.character:02x} is not allowed "
            "(write it as an escape inside double quotes)",
        )
    return UnreadableYaml(
        source[: exc.position].count(b"\n") + 1,
        f"not {exc.encoding.upper()} text ({exc.reason} at byte {exc.position})",
    )


def _syntax_error(exc: yaml.MarkedYAMLError, source: bytes) -> UnreadableYaml:
    """One line from PyYAML's multi-line message: the problem, where, and while doing what."""
    # The end of the stream sits on the line after a final newline: name the last line.
    last_line = max(1, source.count(b"\n") + (0 if source.endswith(b"\n") else 1))
    mark = exc.problem_mark or exc.context_mark
    line = None if mark is None else min(mark.line + 1, last_line)
    problem = exc.problem or exc.context or "invalid YAML"
    details = []
    if mark is not None:
        details.append(f"column {mark.column + 1}" if line == mark.line + 1 else "end of file")
    if exc.problem and exc.context:
        if exc.problem.startswith("but "):
            # The composer splits one sentence: "expected a single document", "but found..."
            problem = f"{exc.context}, {exc.problem}"
        else:
            context = exc.context
            if exc.context_mark is not None:
                context_line = min(exc.context_mark.line + 1, last_line)
                if context_line != line:
                    context += f" started on line {context_line}"
            details.append(context)
    return UnreadableYaml(line, f"YAML syntax error: {problem} ({', '.join(details)})")
