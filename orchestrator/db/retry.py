"""Retrying a transaction that lost a race: a stale generation, PostgreSQL's
serialization failure (40001) or deadlock (40P01).

Each of these means "someone else committed first; your work is still valid, do it
again on a fresh read". Retrying at once makes the losers collide again at the same
instant, so every retry waits an exponentially growing, fully jittered delay (the
AWS "full jitter" scheme): concurrent losers spread out and, one by one, win.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
RETRYABLE_SQLSTATES = frozenset({SERIALIZATION_FAILURE, DEADLOCK_DETECTED})

ATTEMPTS = 30
BASE_DELAY = 0.005  # seconds: the first retry waits up to this
MAX_DELAY = 0.5  # no single wait is longer, however many tries came before


class StaleGeneration(Exception):
    """A row's generation moved since it was read: re-read and decide again."""


class RetriesExhausted(Exception):
    """Every attempt lost its race; ``last`` is the final loss."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} tries: {last}")
        self.attempts = attempts
        self.last = last


def is_retryable(exc: BaseException) -> bool:
    """A stale generation, or a database error whose sqlstate says "run it again"."""
    if isinstance(exc, StaleGeneration):
        return True
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """The wait before retry ``attempt`` (1-based): uniform in [0, min(cap, base·2^n))."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = ATTEMPTS,
    rng: random.Random | None = None,
) -> T:
    """Run ``operation`` (a whole transaction, begun anew each time) until it does not
    lose a race; raises RetriesExhausted after ``attempts`` losses. Any other error
    propagates at once."""
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt == attempts:
                raise RetriesExhausted(attempts, exc) from exc
            await asyncio.sleep(backoff(attempt, rng))
    raise AssertionError("unreachable")
