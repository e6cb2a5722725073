"""The message loop and the directly answered calls, driven through byte streams."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import REPO, needs_virsh

from agent import PROTOCOL_VERSION, jobs
from agent.calls import Agent
from agent.errors import AgentError, BadRequest, LibvirtError, UnknownOp
from agent.protocol import MessageLoop

HERD_NS = "http://herd.local/xmlns/instance/1"
MANAGED = "aaaaaaaa-0000-0000-0000-000000000001"
UNMANAGED = "bbbbbbbb-0000-0000-0000-000000000002"
# A libvirt test-driver host with one herd domain (shut off) and one foreign one.
NODE_XML = f"""<node>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>herd-{MANAGED}</name>
    <uuid>{MANAGED}</uuid>
    <metadata>
      <herd:instance xmlns:herd="{HERD_NS}">
        <herd:uuid>{MANAGED}</herd:uuid>
        <herd:name>web &lt;1&gt;</herd:name>
      </herd:instance>
    </metadata>
    <memory>131072</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/var/lib/herd/volumes/{MANAGED}.qcow2'/>
        <target dev='vdc' bus='virtio'/>
      </disk>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test'>
    <name>other</name>
    <uuid>{UNMANAGED}</uuid>
    <memory>131072</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
"""


class LockedBuffer(io.BytesIO):
    """An output stream whose lines can be read while the loop still writes."""

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


def request(req_id: Any, op: str, args: Mapping[str, Any] | None = None, v: int = 1) -> bytes:
    return (json.dumps({"v": v, "id": req_id, "op": op, "args": args or {}}) + "\n").encode()


def serve(dispatch, *lines: bytes) -> list[dict[str, Any]]:
    out = LockedBuffer()
    MessageLoop(dispatch, out).serve(io.BytesIO(b"".join(lines)), drain_timeout=10)
    return out.lines()


def echo(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    if op == "slow":
        time.sleep(0.5)
    if op == "boom":
        raise RuntimeError("kaput")
    if op == "virsh":
        raise LibvirtError("virsh start: Failed to start domain 'x': internal error: no")
    return {"op": op, **args}


def test_a_slow_request_does_not_hold_up_a_fast_one() -> None:
    started = time.monotonic()
    answers = serve(echo, request(1, "slow"), request(2, "fast", {"n": 2}))
    assert [a["id"] for a in answers] == [2, 1]
    assert answers[0] == {"v": 1, "id": 2, "ok": True, "result": {"op": "fast", "n": 2}}
    assert time.monotonic() - started < 2


def test_many_concurrent_requests_are_each_answered_once_on_a_line_of_their_own() -> None:
    answers = serve(echo, *(request(i, "slow" if i % 2 else "fast", {"i": i}) for i in range(40)))
    assert sorted(a["id"] for a in answers) == list(range(40))
    assert all(a["result"]["i"] == a["id"] for a in answers)


@pytest.mark.parametrize(
    ("line", "req_id", "error_type"),
    [
        pytest.param(request(5, "fast", v=2), 5, "VersionMismatch", id="version-2"),
        pytest.param(b'{"id": 6, "op": "fast"}\n', 6, "VersionMismatch", id="no-version"),
        pytest.param(b"this is not json\n", None, "BadRequest", id="not-json"),
        pytest.param(b"[1, 2]\n", None, "BadRequest", id="not-an-object"),
        pytest.param(b'{"v": 1, "id": 7, "op": 3}\n', 7, "BadRequest", id="op-not-a-string"),
        pytest.param(
            b'{"v": 1, "id": 8, "op": "fast", "args": [1]}\n', 8, "BadRequest", id="args-list"
        ),
        pytest.param(b"\xff\xfe\n", None, "BadRequest", id="not-utf8"),
        pytest.param(request(9, "boom"), 9, "Internal", id="handler-bug"),
        pytest.param(request(10, "virsh"), 10, "LibvirtError", id="tool-failure"),
    ],
)
def test_malformed_or_failing_requests_get_typed_errors(
    line: bytes, req_id: Any, error_type: str
) -> None:
    (answer,) = serve(echo, line)
    assert answer["v"] == PROTOCOL_VERSION
    assert answer["id"] == req_id
    assert answer["ok"] is False
    assert answer["error"]["type"] == error_type
    assert "\n" not in answer["error"]["message"]


def test_blank_lines_are_ignored_and_eof_ends_the_loop() -> None:
    assert serve(echo, b"\n", b"   \n", request(1, "fast")) == [
        {"v": 1, "id": 1, "ok": True, "result": {"op": "fast"}}
    ]


def test_hello_runs_before_the_next_request_is_read() -> None:
    seen: list[str] = []
    barrier = threading.Event()

    def dispatch(op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if op == "hello":
            time.sleep(0.2)
            barrier.set()
        else:
            seen.append("configured" if barrier.is_set() else "too early")
        return {}

    serve(dispatch, request(1, "hello"), request(2, "facts"))
    assert seen == ["configured"]


def test_unknown_op_and_requests_before_hello_are_refused(state_dir: Path) -> None:
    agent = Agent()
    with pytest.raises(UnknownOp):
        agent.dispatch("reboot", {})
    with pytest.raises(BadRequest, match="hello must be the first request"):
        agent.dispatch("facts", {})
    answers = serve(agent.dispatch, request(1, "list"), request(2, "frobnicate"))
    assert {a["id"]: a["error"]["type"] for a in answers} == {1: "BadRequest", 2: "UnknownOp"}


@pytest.mark.parametrize(
    "args",
    [{"state_dir": "relative/path"}, {"libvirt_uri": "--help"}, {"domain_type": "xen"}],
    ids=["relative-state-dir", "uri-like-an-option", "unknown-domain-type"],
)
def test_hello_refuses_bad_session_settings(args: dict[str, Any], state_dir: Path) -> None:
    with pytest.raises(BadRequest):
        Agent().dispatch("hello", {"state_dir": str(state_dir), **args})


@needs_virsh
def test_hello_sets_up_the_state_dir_and_reports_facts(state_dir: Path) -> None:
    hello = Agent().dispatch(
        "hello",
        {"state_dir": str(state_dir), "libvirt_uri": "test:///default", "domain_type": "qemu"},
    )
    assert hello["protocol"] == 1
    assert {"hello", "ping", "facts", "list", "job_start", "job_wait", "build", "delete"} <= set(
        hello["capabilities"]
    )
    assert agent_ping(state_dir) == {}
    facts = hello["facts"]
    assert facts["libvirt"]["ok"] is True
    assert facts["libvirt"]["version"]
    assert facts["domain_type"] == "qemu"
    assert facts["kvm"]["usable"] is None  # forced: not probed
    assert facts["cpus"] == os.cpu_count()
    assert facts["memory_mb"] > 0
    assert facts["disk_gb"] >= facts["disk_free_gb"] >= 0
    assert facts["state_dir"] == str(state_dir)
    for sub in ("images", "instances", "jobs", "locks", "state"):
        assert (state_dir / sub).stat().st_mode & 0o777 == 0o755


@needs_virsh
def test_an_unreachable_libvirt_is_reported_not_raised(state_dir: Path) -> None:
    uri = f"qemu:///system?socket={state_dir}/no-such-socket"
    args = {"state_dir": str(state_dir), "libvirt_uri": uri, "domain_type": "qemu"}
    facts = Agent().dispatch("hello", args)["facts"]
    assert facts["libvirt"]["ok"] is False
    assert "no-such-socket" in facts["libvirt"]["error"]


@needs_virsh
def test_list_reports_herd_domains_and_with_all_the_others_too(state_dir: Path) -> None:
    node = state_dir / "node.xml"
    node.write_text(NODE_XML)
    agent = Agent()
    agent.dispatch(
        "hello",
        {"state_dir": str(state_dir), "libvirt_uri": f"test://{node}", "domain_type": "qemu"},
    )
    assert agent.dispatch("list", {})["domains"] == [
        {
            "uuid": MANAGED,
            "name": f"herd-{MANAGED}",
            "state": "shutoff",
            "managed": True,
            "instance_name": "web <1>",
            # Its file-backed disks, which reconcile matches with volumes.
            "disks": [{"file": f"/var/lib/herd/volumes/{MANAGED}.qcow2", "dev": "vdc"}],
        }
    ]
    everything = agent.dispatch("list", {"all": True})["domains"]
    assert {d["uuid"]: (d["managed"], d["state"]) for d in everything} == {
        MANAGED: (True, "shutoff"),
        UNMANAGED: (False, "running"),
    }


@needs_virsh
def test_job_wait_returns_a_running_job_when_its_timeout_elapses(state_dir: Path) -> None:
    agent = Agent()
    agent.dispatch(
        "hello",
        {"state_dir": str(state_dir), "libvirt_uri": "test:///default", "domain_type": "qemu"},
    )
    me = os.getpid()
    agent.session.journal.save(
        jobs.JobRecord("w1", "delete", {}, pid=me, pid_start=jobs.process_start_time(me))
    )
    started = time.monotonic()
    assert agent.dispatch("job_wait", {"job_id": "w1", "timeout": 0.3})["state"] == "running"
    assert 0.3 <= time.monotonic() - started < 1.5
    with pytest.raises(BadRequest):
        agent.dispatch("job_wait", {"job_id": "w1", "timeout": -1})
    assert [j["job_id"] for j in agent.dispatch("jobs", {})["jobs"]] == ["w1"]


def test_stdout_carries_protocol_messages_only() -> None:
    """Stray prints, ours or a child's, go to stderr once serve has claimed stdout."""
    code = (
        "import subprocess, sys\n"
        "from agent.__main__ import _claim_stdout\n"
        "out = _claim_stdout()\n"
        "print('stray print')\n"
        "subprocess.run(['echo', 'stray child'])\n"
        "out.write(b'{}\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=30, check=True
    )
    assert done.stdout == b"{}\n"
    assert b"stray print" in done.stderr and b"stray child" in done.stderr


@needs_virsh
def test_serve_answers_on_stdout_and_exits_at_eof(state_dir: Path) -> None:
    hello = {"state_dir": str(state_dir), "libvirt_uri": "test:///default", "domain_type": "qemu"}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "serve"],
        input=request(1, "hello", hello) + request(2, "facts"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
        check=True,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(a["id"], a["ok"]) for a in answers] == [(1, True), (2, True)]
    assert b"serving" in done.stderr


def agent_ping(state_dir: Path) -> dict[str, Any]:
    agent = Agent()
    with pytest.raises(BadRequest, match="hello must be the first request"):
        agent.dispatch("ping", {})
    agent.dispatch("hello", {"state_dir": str(state_dir), "domain_type": "qemu"})
    return agent.dispatch("ping", {})


@pytest.mark.parametrize(
    "args",
    [
        {"image_source_dirs": "/srv/images"},
        {"image_source_dirs": ["relative"]},
        {"image_source_dirs": ["/srv/../etc"]},
        {"image_source_dirs": ["/"]},
        {"image_source_dirs": ["/dev/shm"]},
        {"max_image_bytes": 0},
        {"max_image_bytes": True},
    ],
    ids=["not-a-list", "relative", "dot-dot", "root", "under-dev", "zero-size", "bool-size"],
)
def test_hello_refuses_bad_image_settings(args: dict[str, Any], state_dir: Path) -> None:
    with pytest.raises(BadRequest, match=r"image_source_dirs|max_image_bytes"):
        Agent().dispatch("hello", {"state_dir": str(state_dir), "domain_type": "qemu", **args})


@needs_virsh
def test_one_unreadable_file_is_reported_and_the_rest_still_answers(state_dir: Path) -> None:
    """A corrupt journal or images.json must not fail `jobs` or `image_list` whole:
    reconcile would take the host for down."""
    agent = Agent()
    agent.dispatch(
        "hello",
        {"state_dir": str(state_dir), "libvirt_uri": "test:///default", "domain_type": "qemu"},
    )
    agent.session.journal.save(jobs.JobRecord("good", "delete", {}, state="succeeded"))
    (state_dir / "jobs" / "bad.json").write_text('{"job_id": "bad", "op":')
    (state_dir / "instances" / "x").mkdir()
    (state_dir / "instances" / "x" / "images.json").write_bytes(b"\xff")
    answer = agent.dispatch("jobs", {})
    assert [j["job_id"] for j in answer["jobs"]] == ["good"]
    assert [u["file"] for u in answer["unreadable"]] == [str(state_dir / "jobs" / "bad.json")]
    cache = agent.dispatch("image_list", {})
    assert cache["images"] == []
    assert [u["file"] for u in cache["unreadable"]] == [
        str(state_dir / "instances" / "x" / "images.json")
    ]
    with pytest.raises(AgentError, match=r"bad\.json is unreadable") as raised:
        agent.dispatch("job_status", {"job_id": "bad"})
    assert raised.value.to_wire()["type"] == "Unreadable"


def test_image_calls_need_a_known_format(state_dir: Path) -> None:
    agent = Agent()
    agent.dispatch("hello", {"state_dir": str(state_dir), "domain_type": "qemu"})
    upload = {"sha256": "a" * 64, "upload": f"{state_dir}/images/incoming/x"}
    for op, args in (("image_commit", upload), ("image_fetch", {"source": "/srv/x"})):
        for bad in ({}, {"format": "vmdk"}):
            with pytest.raises(BadRequest, match="format must be one of qcow2, raw, aki, ari"):
                agent.dispatch(op, {**args, **bad})
