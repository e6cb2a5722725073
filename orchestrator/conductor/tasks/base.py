"""What every task is: one workflow on one server, run by ``execute()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from orchestrator.conductor.manager import Conductor
from orchestrator.conductor.outcomes import Outcome
from orchestrator.conductor.steps import Steps


class Task(ABC):
    """A workflow on one server. ``kind`` names it in the action log and the journal;
    ``execute()`` takes its steps in order and, when one fails, ``rollback()`` puts back
    what the steps before it did, so the server ends where it started or where it was
    sent, never in between."""

    kind: ClassVar[str]

    def __init__(self, conductor: Conductor) -> None:
        self.conductor = conductor
        self.steps = Steps(conductor)
        self.db = conductor.db
        self.agent = conductor.agent
        self.progress = conductor.progress

    @abstractmethod
    async def execute(self) -> Outcome: ...
