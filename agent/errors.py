"""The agent's errors, each carrying the ``error.type`` string the protocol names.

One hierarchy, so the message loop and the job runner turn any of them into the same
``{"type", "message"}`` pair; anything that is not an ``AgentError`` is a bug and is
reported as ``Internal``.
"""

from __future__ import annotations


class AgentError(Exception):
    """An error the orchestrator can act on; ``type`` goes on the wire verbatim."""

    type = "Internal"

    def to_wire(self) -> dict:
        return {"type": self.type, "message": one_line(str(self))}


class VersionMismatch(AgentError):
    type = "VersionMismatch"


class UnknownOp(AgentError):
    type = "UnknownOp"


class BadRequest(AgentError):
    type = "BadRequest"


class NotFound(AgentError):
    """The named job (or other object) does not exist on this host."""

    type = "NotFound"


class Busy(AgentError):
    """Another job held the instance lock for longer than we were willing to wait."""

    type = "Busy"


class CommandError(AgentError):
    """A host tool (qemu-img, qemu) failed or timed out; the message is the tool's own."""

    type = "CommandError"


class LibvirtError(CommandError):
    """virsh failed or timed out; the message is libvirt's own, folded onto one line."""

    type = "LibvirtError"


def one_line(text: str) -> str:
    """Fold a multi-line tool message into one line, the form the orchestrator shows."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def internal(exc: BaseException) -> dict:
    """Wire form of an unexpected exception: its class name helps whoever reads the log."""
    return {"type": "Internal", "message": one_line(f"{type(exc).__name__}: {exc}")}
