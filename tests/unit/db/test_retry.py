"""The retry helper: losers of a race try again after a growing, jittered wait; any
other error is not retried; a race lost every time ends in RetriesExhausted."""

from __future__ import annotations

import random

import pytest

from orchestrator.db import retry
from orchestrator.db.retry import RetriesExhausted, StaleGeneration, backoff, retrying


class FakeDriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


class FakeDBAPIError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.orig = FakeDriverError(sqlstate)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry.asyncio, "sleep", sleep)
    return waits


@pytest.mark.parametrize(
    "loss", [StaleGeneration("moved"), FakeDBAPIError("40001"), FakeDBAPIError("40P01")]
)
async def test_a_lost_race_is_run_again_until_it_wins(loss: Exception, no_waiting) -> None:
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise loss
        return "won"

    assert await retrying(operation) == "won"
    assert calls == 4 and len(no_waiting) == 3


async def test_any_other_error_is_not_retried() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise FakeDBAPIError("23505")

    with pytest.raises(FakeDBAPIError):
        await retrying(operation)
    assert calls == 1


async def test_losing_every_time_ends_in_retries_exhausted(no_waiting) -> None:
    async def operation() -> None:
        raise StaleGeneration("moved")

    with pytest.raises(RetriesExhausted) as caught:
        await retrying(operation, attempts=5)
    assert caught.value.attempts == 5 and isinstance(caught.value.last, StaleGeneration)
    assert len(no_waiting) == 4


def test_the_wait_grows_exponentially_is_jittered_and_capped() -> None:
    rng = random.Random(1)
    for attempt in range(1, 40):
        ceiling = min(retry.MAX_DELAY, retry.BASE_DELAY * 2 ** (attempt - 1))
        waits = [backoff(attempt, rng) for _ in range(50)]
        assert all(0 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1  # jittered, not one fixed delay
    assert max(backoff(1, rng) for _ in range(100)) <= retry.BASE_DELAY
