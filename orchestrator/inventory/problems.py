"""What goes wrong in an inventory, said the way an operator can fix it.

The contract with operators is one line per problem naming the file, the line and the
field, never a traceback: an inventory with five typos should be fixed in one edit, not
in five runs, so the loader collects every problem it can before raising.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
