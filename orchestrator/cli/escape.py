"""Control characters shown as their escapes: the one text rule every output path needs.

Its own module, with nothing but ``re`` imported, so the entry point can report an
error in one safe line without loading rich (see ``orchestrator.cli.main``).
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (0x9b is a CSI on some
# terminals), lone surrogates (undecodable bytes kept by surrogateescape: they
# cannot even be written to a UTF-8 stream) and the bidi overrides that make text
# read differently from what it is.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: str) -> str:
    """``value`` with every control character shown as its escape (``\\x1b``), so
    nothing stored or sent by a host can move the cursor, retitle the terminal or
    hide what follows; tabs and newlines are kept."""
    return _CONTROL.sub(_escape, value)
