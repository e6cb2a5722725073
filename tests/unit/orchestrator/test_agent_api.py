"""The typed agent client: against the real agent over a pipe, and what it sends."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.calls import Agent
from agent.images import file_sha256
from orchestrator.errors import AgentError, HerdError
from orchestrator.rpc.agent_api import AgentAPI, Listening, PowerArgs
from orchestrator.rpc.ssh import HostTarget
from tests.unit.orchestrator.agentpipe import PipePool, pipe_agent

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
needs_virsh = pytest.mark.skipif(shutil.which("virsh") is None, reason="needs virsh")


@pytest.fixture
async def host() -> AsyncIterator[tuple[AgentAPI, HostTarget, Path]]:
    """The client, the host and its state directory, over a real agent process."""
    async for pool, target in pipe_agent():
        yield AgentAPI(pool), target, Path(target.agent_dir)


async def test_hello_over_the_pipe_configures_the_agent_from_the_target(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, state = host
    assert isinstance(api.pool, PipePool)
    hello = api.pool.pipe.hello
    assert hello["protocol"] == 1
    assert hello["capabilities"] == Agent().capabilities
    assert hello["facts"]["state_dir"] == target.agent_dir
    assert hello["facts"]["domain_type"] == "qemu"  # forced by the target, as asked
    assert sorted(p.name for p in state.iterdir()) == [
        "images", "instances", "jobs", "locks", "state",
    ]  # fmt: skip


async def test_ping_and_facts_answer_from_the_host(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, _ = host
    assert await api.ping(target) is None
    facts = await api.facts(target)
    assert facts["state_dir"] == target.agent_dir
    assert facts["cpus"] >= 1 and facts["memory_mb"] > 0


@needs_virsh
async def test_the_test_drivers_own_domain_is_not_listed_as_herds(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, _ = host
    assert await api.list_domains(target) == {"domains": []}


@needs_qemu_img
async def test_an_uploaded_image_is_committed_listed_and_removed(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, state = host
    upload = state / "images" / "incoming" / "blank.part"
    upload.parent.mkdir(exist_ok=True)
    upload.write_bytes(bytes(1 << 20))  # a raw disk of zeros
    sha = file_sha256(upload)
    assert (await api.image_status(target, sha))["present"] is False
    committed = await api.image_commit(target, sha, str(upload), "raw", timeout=60)
    assert committed["path"] == str(state / "images" / sha)
    assert (await api.image_status(target, sha))["present"] is True
    listed = await api.image_list(target)
    assert [i["sha256"] for i in listed["images"]] == [sha] and listed["unreadable"] == []
    assert await api.image_remove(target, sha) == {"removed": True}
    assert (await api.image_status(target, sha))["present"] is False


async def test_a_host_path_outside_the_source_dirs_is_refused_with_the_agents_reason(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, state = host
    with pytest.raises(AgentError, match=r"host pipe-1: image_fetch: .*source"):
        await api.image_fetch(target, str(state / "elsewhere.img"), None, "raw", timeout=30)


@needs_virsh
async def test_a_delete_run_to_its_end_says_whether_anything_was_there(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, state = host
    leftover = str(uuid.uuid4())
    (state / "instances" / leftover).mkdir()
    assert await api.delete(target, leftover, timeout=60) == {"existed": True}
    assert not (state / "instances" / leftover).exists()
    assert await api.delete(target, leftover, timeout=60) == {"existed": False}
    assert (await api.jobs(target))["jobs"] == []  # each run forgot its job


@needs_virsh
async def test_a_started_job_is_journalled_followed_and_forgotten_by_its_id(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, state = host
    job_id = f"delete-{uuid.uuid4()}"
    assert await api.delete(target, str(uuid.uuid4()), job_id=job_id) is None
    assert (state / "jobs" / f"{job_id}.json").exists()  # journalled before it runs
    record = await api.job_wait(target, job_id, 60)
    assert (record["op"], record["state"], record["result"]) == (
        "delete", "succeeded", {"existed": False},
    )  # fmt: skip
    assert await api.job_status(target, job_id) == record
    assert [j["job_id"] for j in (await api.jobs(target))["jobs"]] == [job_id]
    await api.job_forget(target, job_id)
    assert (await api.jobs(target))["jobs"] == []


@needs_virsh
async def test_a_power_action_on_a_server_the_host_lacks_fails_with_the_agents_message(
    host: tuple[AgentAPI, HostTarget, Path],
) -> None:
    api, target, _ = host
    missing = str(uuid.uuid4())
    args: PowerArgs = {"uuid": missing, "action": "stop", "timeout": 5}
    with pytest.raises(HerdError, match=f"^no domain for instance {missing} on this host$"):
        await api.power(target, args, timeout=60)


class Recorder:
    """A pool that records each request as it reached the transport."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers = answers or {}
        self.sent: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []

    async def call(self, target: HostTarget, op: str, args: dict[str, Any], **kw: Any) -> Any:
        self.sent.append(("call", op, args, kw))
        return self.answers.get(op, {})

    async def cast(self, target: HostTarget, op: str, args: dict[str, Any], job_id: str) -> None:
        self.sent.append(("cast", op, args, {"job_id": job_id}))

    async def run(
        self, target: HostTarget, op: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        self.sent.append(("run", op, args, {"timeout": timeout}))
        return self.answers.get(op, {})

    async def follow(self, target: HostTarget, job_id: str, timeout: float) -> dict[str, Any]:
        self.sent.append(("follow", job_id, {}, {"timeout": timeout}))
        return {"job_id": job_id, "state": "succeeded"}


TARGET = HostTarget(name="hv1", address="192.0.2.1")


async def test_a_call_without_a_timeout_leaves_the_pools_default() -> None:
    pool = Recorder()
    api = AgentAPI(pool)  # type: ignore[arg-type]
    await api.image_list(TARGET)
    await api.image_list(TARGET, timeout=60)
    await api.domain_power(TARGET, "u-1", "start", timeout=120)
    assert pool.sent == [
        ("call", "image_list", {}, {}),
        ("call", "image_list", {}, {"timeout": 60}),
        ("call", "domain_power", {"uuid": "u-1", "action": "start"}, {"timeout": 120}),
    ]


async def test_a_job_op_starts_under_the_given_id_or_runs_to_its_end() -> None:
    pool = Recorder({"resize_stash": {"disk": "/x/u-1.resize/disk"}})
    api = AgentAPI(pool)  # type: ignore[arg-type]
    args: PowerArgs = {"uuid": "u-1", "action": "stop", "timeout": 60}
    await api.power(TARGET, args, job_id="job-7")
    await api.power(TARGET, args, timeout=240)
    stash = await api.resize_stash(TARGET, "u-1", timeout=180)
    assert stash["disk"] == "/x/u-1.resize/disk"
    assert pool.sent == [
        ("cast", "power", dict(args), {"job_id": "job-7"}),
        ("run", "power", dict(args), {"timeout": 240}),
        ("run", "resize_stash", {"uuid": "u-1"}, {"timeout": 180}),
    ]
    with pytest.raises(TypeError, match="give job_id"):
        await api.build(TARGET, {})  # type: ignore[call-overload]


async def test_the_reach_check_sends_the_probes_ports_and_token_and_reads_each_knock() -> None:
    answer = {
        "libvirt": None,
        "ports": [{"port": 49160, "error": None}, {"port": 49161, "error": "refused"}],
    }
    pool = Recorder({"reach_check": answer})
    api = AgentAPI(pool)  # type: ignore[arg-type]
    listening = Listening("p1", "t" * 32, (49160, 49161), (49152, 49215))
    check = await api.reach_check(
        TARGET, socket="/s.sock", address="10.0.0.2", listening=listening,
        timeout=3.0, call_timeout=45.0,
    )  # fmt: skip
    assert pool.sent[0][2]["ports"] == [49160, 49161] and pool.sent[0][3] == {"timeout": 45.0}
    assert check.libvirt is None
    assert [(k.port, k.error) for k in check.knocks] == [(49160, None), (49161, "refused")]
