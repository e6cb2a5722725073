"""A request line that cannot be answered as asked gets an error, and the agent lives on:
through the real MessageLoop, and through a real `python -m agent serve` process."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import REPO, needs_virsh

from agent import protocol
from agent.protocol import MessageLoop

GOOD = b'{"v": 1, "id": "after", "op": "echo", "args": {"n": 1}}\n'


def strict_json(line: bytes) -> Any:
    """What the orchestrator reads: JSON proper, so no NaN or Infinity either."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in an answer")

    return json.loads(line, parse_constant=refuse)


def echo(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return {"op": op, **args}


def serve(dispatch: Any, *lines: bytes) -> list[Any]:
    out = io.BytesIO()
    MessageLoop(dispatch, out, inline_ops=("hello",)).serve(
        io.BytesIO(b"".join(lines)), drain_timeout=10
    )
    return [strict_json(line) for line in out.getvalue().splitlines()]


def request(req_id: str, op: str = "echo", args: str = "{}") -> bytes:
    return f'{{"v": 1, "id": {req_id}, "op": "{op}", "args": {args}}}\n'.encode()


HOSTILE = [
    pytest.param(b"[" * 200_000 + b"\n", None, "BadRequest", id="200k-nested-brackets"),
    pytest.param(b"{" * 100_000 + b"\n", None, "BadRequest", id="100k-nested-braces"),
    pytest.param(
        request("1", args='{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"),
        None,
        "BadRequest",
        id="nested-args",
    ),
    pytest.param(request("2", args='{"t": NaN}'), None, "BadRequest", id="nan-literal"),
    pytest.param(request("3", args='{"t": -Infinity}'), None, "BadRequest", id="infinity-literal"),
    pytest.param(request("4", args='{"t": 1e999}'), None, "BadRequest", id="float-overflow"),
    pytest.param(request("9" * 5000), None, "BadRequest", id="5000-digit-id"),
    pytest.param(request("5", args='{"n": ' + "7" * 200 + "}"), None, "BadRequest", id="long-int"),
]


@pytest.mark.parametrize(("line", "req_id", "error_type"), HOSTILE)
def test_a_line_that_cannot_be_read_is_refused_and_the_next_is_answered(
    line: bytes, req_id: Any, error_type: str
) -> None:
    refused, answered = serve(echo, line, GOOD)
    assert (refused["id"], refused["ok"], refused["error"]["type"]) == (req_id, False, error_type)
    assert "\n" not in refused["error"]["message"]
    assert answered == {"v": 1, "id": "after", "ok": True, "result": {"op": "echo", "n": 1}}


ODD_BUT_ANSWERABLE = [
    pytest.param(r'"\ud800"', "\ud800", id="lone-surrogate-id"),
    pytest.param(r'"\udfff-\ud800x"', "\udfff-\ud800x", id="two-lone-surrogates"),
    pytest.param('{"a": [1]}', {"a": [1]}, id="unhashable-id"),
    pytest.param("9" * 60, int("9" * 60), id="60-digit-id"),
    pytest.param("[" * 500 + "]" * 500, json.loads("[" * 500 + "]" * 500), id="nested-id"),
]


@pytest.mark.parametrize("op", ["echo", "hello"], ids=["on-a-thread", "inline"])
@pytest.mark.parametrize(("raw_id", "req_id"), ODD_BUT_ANSWERABLE)
def test_an_odd_id_is_answered_with_that_id_and_the_loop_goes_on(
    raw_id: str, req_id: Any, op: str
) -> None:
    answers = serve(echo, request(raw_id, op), GOOD)
    first, answered = sorted(answers, key=lambda a: a["id"] == "after")
    assert first == {"v": 1, "id": req_id, "ok": True, "result": {"op": op}}
    assert answered["id"] == "after" and answered["ok"] is True


def test_a_lone_surrogate_in_the_op_or_args_is_answered() -> None:
    answers = serve(echo, request('"s"', op=r"\udc00"), request('"t"', args=r'{"x": "\ud83d"}'))
    assert {a["id"]: a["result"] for a in answers} == {
        "s": {"op": "\udc00"},
        "t": {"op": "echo", "x": "\ud83d"},
    }


RESULTS = [
    pytest.param({"load": math.nan}, "ValueError", id="nan"),
    pytest.param({"load": math.inf}, "ValueError", id="infinity"),
    pytest.param({"what": object()}, "TypeError", id="unserialisable"),
    pytest.param({"deep": json.loads("[" * 500 + "]" * 500)}, None, id="deep-but-fine"),
]


@pytest.mark.parametrize("op", ["odd", "hello"], ids=["on-a-thread", "inline"])
@pytest.mark.parametrize(("result", "error"), RESULTS)
def test_a_result_that_is_not_json_is_an_internal_error_never_a_dead_agent(
    result: dict[str, Any], error: str | None, op: str
) -> None:
    answers = serve(lambda o, a: result if o == op else echo(o, a), request("1", op), GOOD)
    first, answered = sorted(answers, key=lambda a: a["id"] != 1)  # threads answer in any order
    if error is None:
        assert first["ok"] is True
    else:
        assert first["ok"] is False and first["error"]["type"] == "Internal"
        assert first["error"]["message"].startswith(error)
    assert answered["ok"] is True


def test_a_result_too_deep_to_write_is_an_internal_error() -> None:
    deep: list[Any] = []
    for _ in range(sys.getrecursionlimit() * 2):
        deep = [deep]
    answers = serve(
        lambda o, a: {"deep": deep} if o == "deep" else echo(o, a), request("1", "deep"), GOOD
    )
    first, answered = sorted(answers, key=lambda a: a["id"] != 1)
    assert (first["id"], first["ok"], first["error"]["type"]) == (1, False, "Internal")
    assert answered["ok"] is True


def test_a_request_without_a_thread_to_run_on_is_refused_and_its_slot_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_start = threading.Thread.start
    calls = {"n": 0}

    def start_once_fails(self: threading.Thread) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start_once_fails)
    out = io.BytesIO()
    loop = MessageLoop(echo, out, max_in_flight=1)
    lines = io.BytesIO(request("1") + GOOD)
    runner = threading.Thread(target=loop.serve, args=(lines, 10), daemon=True)
    real_start(runner)
    runner.join(30)
    assert not runner.is_alive(), "the failed request kept its slot: the loop is stuck"
    first, answered = [strict_json(line) for line in out.getvalue().splitlines()]
    assert (first["id"], first["ok"], first["error"]["type"]) == (1, False, "Busy")
    assert answered["id"] == "after" and answered["ok"] is True  # the one slot came back


def test_anything_else_a_line_raises_is_answered_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: MessageLoop, line: bytes) -> None:
        raise MemoryError()

    monkeypatch.setattr(MessageLoop, "_parse", broken)
    out = io.BytesIO()
    MessageLoop(echo, out).serve(io.BytesIO(request("1") + request("2")), drain_timeout=10)
    answers = [strict_json(line) for line in out.getvalue().splitlines()]
    assert [(a["id"], a["error"]["type"]) for a in answers] == [(None, "Internal")] * 2
    assert "MemoryError" in caplog.text


@needs_virsh
def test_the_agent_process_survives_hostile_lines_and_answers_hello_and_ping(
    state_dir: Path,
) -> None:
    hello = json.dumps(
        {"state_dir": str(state_dir), "libvirt_uri": "test:///default", "domain_type": "qemu"}
    )
    lines = [
        b"[" * 200_000 + b"\n",
        request(r'"\ud800"', "hello", hello),  # answered: a lone surrogate id is still an id
        request('"nan"', "ping", '{"t": NaN}'),
        b"\xff\xfe\n",
        request("9" * 5000, "ping"),
        request('"hello"', "hello", hello),
        request('"ping"', "ping"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "agent", "serve"],
        input=b"".join(lines),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    answers = [strict_json(line) for line in done.stdout.splitlines()]
    assert [(a["id"], a["ok"]) for a in answers] == [
        (None, False),
        ("\ud800", True),
        (None, False),
        (None, False),
        (None, False),
        ("hello", True),
        ("ping", True),
    ]
    assert answers[-1]["result"] == {}
    assert b"Traceback" not in done.stderr


def test_the_digit_limit_leaves_room_for_every_number_herd_sends() -> None:
    assert len(str(2**63)) <= protocol.MAX_DIGITS
