"""The message loop: newline-delimited JSON requests in, responses out.

Each request runs on a thread of its own and is answered when it finishes, so a
slow ``job_wait`` never holds up a quick ``facts`` (the orchestrator matches
answers to requests by id). Responses are written whole, one per line, under a
lock. ``hello`` runs on the reading thread itself: it configures the session, and
every request after it must see that.

Nothing a line holds may stop the loop: a line too deep for the parser, a number no
protocol value needs, a lone surrogate that UTF-8 cannot encode back, a result that
is not JSON. Each costs its own request an error answer, and the next line is read.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional, Set, Tuple

from agent import PROTOCOL_VERSION
from agent.errors import AgentError, BadRequest, Busy, VersionMismatch, internal

log = logging.getLogger(__name__)

Dispatch = Callable[[str, Mapping[str, Any]], Dict[str, Any]]

MAX_LINE = 64 * 1024 * 1024
# No protocol number needs more (an int64 has 19 digits); Python before 3.11 turns a
# digit string into an int in quadratic time, on the reading thread.
MAX_DIGITS = 100
MAX_IN_FLIGHT = 128  # past this the loop stops reading until a request finishes
DRAIN_TIMEOUT = 5.0


class MessageLoop:
    def __init__(
        self,
        dispatch: Dispatch,
        out: BinaryIO,
        inline_ops: Tuple[str, ...] = ("hello",),
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.dispatch = dispatch
        self.out = out
        self.inline_ops = inline_ops
        self._write_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._threads: Set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self.closed = False

    def serve(self, inp: BinaryIO, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Answer requests until EOF, then give in-flight ones a moment to finish.

        EOF means the orchestrator went away; durable jobs are separate processes
        and carry on regardless.
        """
        while not self.closed:
            line = inp.readline(MAX_LINE)
            if not line:
                break
            if not line.endswith(b"\n") and len(line) >= MAX_LINE:
                self._skip_rest_of_line(inp)
                self._reject(None, BadRequest(f"request longer than {MAX_LINE} bytes"))
                continue
            if line.strip():
                self.handle_line(line)
        self.drain(drain_timeout)

    def drain(self, timeout: float) -> None:
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def handle_line(self, line: bytes) -> None:
        """Answer one request line, or start the thread that will; never raises."""
        try:
            parsed = self._parse(line)
            if parsed is None:
                return
            req_id, op, args = parsed
            if op in self.inline_ops:
                self._run(req_id, op, args, slot=False)
                return
            self._start(req_id, op, args)
        except Exception as exc:  # a bug reached by a line: answer it, read the next
            log.exception("request line could not be handled")
            self._respond(None, error=internal(exc))

    def _start(self, req_id: Any, op: str, args: Mapping[str, Any]) -> None:
        self._slots.acquire()
        thread = threading.Thread(
            target=self._run,
            args=(req_id, op, args),
            name=f"req-{op[:32]}",
            daemon=True,
        )
        with self._threads_lock:
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            with self._threads_lock:
                self._threads.discard(thread)
            self._slots.release()
            self._reject(req_id, Busy(f"the agent cannot start a thread for {op!r}: {exc}"))

    def _parse(self, line: bytes) -> Optional[Tuple[Any, str, Mapping[str, Any]]]:
        """(id, op, args) of a well-formed request; anything else is answered here."""
        try:
            msg = json.loads(
                line.decode("utf-8"),
                parse_int=_bounded_int,
                parse_float=_finite_float,
                parse_constant=_no_constant,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            self._reject(None, BadRequest(f"not a JSON request: {exc}"))
            return None
        except RecursionError:
            self._reject(None, BadRequest("not a JSON request: nested too deeply"))
            return None
        if not isinstance(msg, dict):
            self._reject(None, BadRequest("a request must be a JSON object"))
            return None
        req_id = msg.get("id")
        if msg.get("v") != PROTOCOL_VERSION:
            error = VersionMismatch(
                f"agent speaks protocol {PROTOCOL_VERSION}, request is {msg.get('v')!r}"
            )
            self._reject(req_id, error)
            return None
        op, args = msg.get("op"), msg.get("args", {})
        if not isinstance(op, str):
            self._reject(req_id, BadRequest("op must be a string"))
            return None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            self._reject(req_id, BadRequest("args must be an object"))
            return None
        return req_id, op, args

    def _run(self, req_id: Any, op: str, args: Mapping[str, Any], slot: bool = True) -> None:
        try:
            try:
                result = self.dispatch(op, args)
            except AgentError as exc:
                log.info("request %s (%s) failed: %s: %s", req_id, op, exc.type, exc)
                self._respond(req_id, error=exc.to_wire())
            except Exception as exc:
                log.exception("request %s (%s) failed", req_id, op)
                self._respond(req_id, error=internal(exc))
            else:
                self._respond(req_id, result=result)
        finally:
            if slot:
                self._slots.release()
                with self._threads_lock:
                    self._threads.discard(threading.current_thread())

    def _respond(
        self,
        req_id: Any,
        result: Optional[Dict[str, Any]] = None,
        error: Optional[Dict[str, str]] = None,
    ) -> None:
        msg: Dict[str, Any] = {"v": PROTOCOL_VERSION, "id": req_id}
        if error is not None:
            msg.update(ok=False, error=error)
        else:
            msg.update(ok=True, result=result if result is not None else {})
        try:
            data = _encode(msg)
        except _NOT_JSON as exc:
            log.error("request %r: the result is not JSON: %s", req_id, exc)
            failure = {"v": PROTOCOL_VERSION, "id": req_id, "ok": False, "error": internal(exc)}
            try:
                data = _encode(failure)
            except _NOT_JSON:  # the id itself, nested past the recursion limit
                data = _encode({**failure, "id": None})
        with self._write_lock:
            if self.closed:
                return
            try:
                self.out.write(data + b"\n")
                self.out.flush()
            except (BrokenPipeError, OSError) as exc:
                log.warning("cannot write to the orchestrator (%s); stopping", exc)
                self.closed = True

    def _reject(self, req_id: Any, error: AgentError) -> None:
        self._respond(req_id, error=error.to_wire())

    @staticmethod
    def _skip_rest_of_line(inp: BinaryIO) -> None:
        while True:
            chunk = inp.readline(MAX_LINE)
            if not chunk or chunk.endswith(b"\n"):
                return


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number of {len(text)} digits (at most {MAX_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# What json.dumps raises for NaN, a foreign object, or nesting past the recursion limit.
_NOT_JSON = (TypeError, ValueError, RecursionError)


def _encode(msg: Dict[str, Any]) -> bytes:
    """One protocol line; raises one of ``_NOT_JSON`` when ``msg`` cannot be JSON.

    UTF-8 as is, except text with a lone surrogate (a JSON ``\\ud800`` escape read
    back): UTF-8 cannot encode it, so that message is written with ASCII escapes and
    the orchestrator reads back the very same string.
    """
    text = json.dumps(msg, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(msg, allow_nan=False, separators=(",", ":")).encode("ascii")
