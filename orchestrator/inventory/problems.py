"""What goes wrong in an inventory, said the way an operator can fix it.

The contract with operators is one line per problem naming the file, the line and the
field, never a traceback: an inventory with five typos should be fixed in one edit, not
in five runs, so the loader collects every problem it can before raising.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import InvalidInput


@dataclass(frozen=True)
class InventoryProblem:
    """One thing wrong with one inventory file.

    ``line`` is 1-based and ``None`` only when the file could not be read at all;
    ``field`` is empty when the problem is not about a field (a YAML syntax error).
    """

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class InventoryError(InvalidInput):
    """The inventory is not usable; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Iterable[InventoryProblem]) -> None:
        self.problems: list[InventoryProblem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def describe_value(value: Any) -> str:
    """A value as the operator wrote it in YAML, for 'must be X, not Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_TYPE_MESSAGES = {
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "path_type": "must be a path",
}


def validation_message(error: ErrorDetails) -> str:
    """Pydantic's message, reworded the way the rest of herd speaks: a validator's own
    words without pydantic's "Value error, " in front, "must be ..." for the rest.
    Every place that shows a pydantic error to an operator goes through here."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, not {describe_value(error['input'])}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, not {describe_value(error['input'])}"
    if kind in ("value_error", "assertion_error"):  # not "Value error, ..."
        return str(ctx["error"])
    if kind == "missing":
        return "is required"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx['gt'])}"
    if kind == "greater_than_equal":
        return f"must be at least {_number(ctx['ge'])}"
    if kind == "less_than_equal":
        return f"must be at most {_number(ctx['le'])}"
    if kind == "finite_number":
        return "must be a finite number"
    message = error["msg"]
    return message[:1].lower() + message[1:]


def first_validation_problem(exc: ValidationError) -> str:
    """``field.path: message`` for the first error, ``(+N more)`` for the rest: the
    one line a CLI option or a settings file gets (an inventory lists them all)."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {validation_message(first)}{more}"
