"""The agent against a real libvirtd and QEMU, driven over its stdin/stdout.

The test starts its own libvirtd + virtlogd in a private mount namespace (see
libvirt_sandbox.py), runs the agent there from a zipapp built like the real bundle,
and walks an instance through build, list, rebuild and delete. Needs root.
Set HERD_AGENT_TEST_PYTHON to run the agent under another interpreter (e.g. 3.9).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testlib import AgentClient, build_args, build_bundle

from agent import images

SANDBOX = Path(__file__).with_name("libvirt_sandbox.py")
TOOLS = ("unshare", "mount", "libvirtd", "virtlogd", "virsh", "qemu-img", "qemu-system-x86_64")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private libvirtd"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"
    ),
]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Not pytest's tmp_path: its parents are 0700, and QEMU runs as libvirt-qemu."""
    path = Path(tempfile.mkdtemp(prefix="herd-agent-e2e-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(workdir: Path) -> Iterator[AgentClient]:
    bundle = build_bundle(workdir / "agent.pyz")
    python = os.environ.get("HERD_AGENT_TEST_PYTHON", sys.executable)
    command = [python, str(bundle), "serve"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HERD_TEMPLATES_DIR")}
    with open(workdir / "agent.log", "wb") as stderr:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable, str(SANDBOX),
             str(workdir), "--", *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )  # fmt: skip
    client = AgentClient(proc)
    yield client
    assert client.close() == 0, (workdir / "agent.log").read_text()
    assert b"leftover domain" not in (workdir / "agent.log").read_bytes()


@pytest.fixture(scope="module")
def hello(agent: AgentClient, workdir: Path) -> dict:
    args = {
        "orchestrator_version": "0.1.0",
        "state_dir": str(workdir / "state"),
        "libvirt_uri": "qemu:///system",
        "domain_type": "auto",
    }
    # libvirtd's first start probes QEMU's capabilities; the KVM probe takes ~3 s.
    return agent.result("hello", args, timeout=120)


@pytest.fixture(scope="module")
def image_sha(agent: AgentClient, hello: dict, workdir: Path) -> str:
    """A blank 64 MiB qcow2, uploaded as the orchestrator would and committed."""
    blank = workdir / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M"], check=True)
    sha = images.file_sha256(blank)
    upload = workdir / "state" / "images" / "incoming" / f"{sha}.part"
    upload.parent.mkdir(exist_ok=True)
    shutil.copyfile(blank, upload)
    assert agent.result("image_status", {"sha256": sha})["present"] is False
    committed = agent.result(
        "image_commit", {"sha256": sha, "upload": str(upload), "format": "qcow2"}
    )
    assert committed["size"] == blank.stat().st_size
    assert agent.result("image_status", {"sha256": sha})["present"] is True
    return sha


def run_job(agent: AgentClient, op: str, args: dict) -> dict:
    job_id = f"{op}-{uuid.uuid4()}"
    start = {"job_id": job_id, "op": op, "args": args}
    assert agent.result("job_start", start)["job_id"] == job_id
    record = agent.result("job_wait", {"job_id": job_id, "timeout": 120}, timeout=150)
    assert record["state"] != "running", "job did not finish in time"
    return record


def test_hello_reports_a_working_libvirt_and_a_domain_type(hello: dict) -> None:
    facts = hello["facts"]
    assert facts["libvirt"]["ok"] is True, facts["libvirt"]["error"]
    assert facts["libvirt"]["version"]
    assert facts["domain_type"] in ("kvm", "qemu")
    assert facts["kvm"]["usable"] is (facts["domain_type"] == "kvm")
    assert facts["tools"] == {"qemu_img": True, "virsh": True, "qemu_system": True}


def test_build_list_rebuild_delete(agent: AgentClient, hello: dict, image_sha: str) -> None:
    instance = str(uuid.uuid4())
    args = build_args(
        instance, name="e2e <&> 'one'", sha256=image_sha, domain_type=hello["facts"]["domain_type"]
    )

    started = time.monotonic()
    built = run_job(agent, "build", args)
    assert built["state"] == "succeeded", built["error"]
    print(f"build took {time.monotonic() - started:.2f} s")
    disk = Path(built["result"]["disk_path"])
    assert built["result"]["domain"] == f"herd-{instance}"
    assert built["result"]["state"] == "running"
    assert disk.exists()

    (listed,) = agent.result("list")["domains"]
    assert {"file": str(disk), "dev": "vda"} in listed.pop("disks")
    assert listed == {
        "uuid": instance,
        "name": f"herd-{instance}",
        "state": "running",
        "managed": True,
        "instance_name": "e2e <&> 'one'",
    }

    again = run_job(agent, "build", args)
    assert again["state"] == "succeeded", again["error"]
    assert again["result"] == built["result"]
    assert len(agent.result("list")["domains"]) == 1

    deleted = run_job(agent, "delete", {"uuid": instance})
    assert (deleted["state"], deleted["result"]) == ("succeeded", {"existed": True})
    assert agent.result("list", {"all": True})["domains"] == []
    assert not disk.exists()
    assert not disk.parent.exists()

    deleted_again = run_job(agent, "delete", {"uuid": instance})
    assert (deleted_again["state"], deleted_again["result"]) == ("succeeded", {"existed": False})


def test_a_failed_build_leaves_nothing_behind(
    agent: AgentClient, hello: dict, image_sha: str, workdir: Path
) -> None:
    instance = str(uuid.uuid4())
    args = build_args(instance, sha256=image_sha, vcpus=1024)  # above the pc machine's limit
    failed = run_job(agent, "build", args)
    assert failed["state"] == "failed"
    assert failed["error"]["type"] == "LibvirtError"
    assert "Maximum CPUs greater than specified machine type limit" in failed["error"]["message"]
    assert agent.result("list", {"all": True})["domains"] == []
    assert not (workdir / "state" / "instances" / instance).exists()


def test_finished_jobs_are_listed_and_can_be_forgotten(agent: AgentClient, hello: dict) -> None:
    records = agent.result("jobs")["jobs"]
    assert records and all(r["state"] != "running" for r in records)
    for record in records:
        assert agent.result("job_forget", {"job_id": record["job_id"]}) == {}
    assert agent.result("jobs")["jobs"] == []
    assert agent.call("job_status", {"job_id": records[0]["job_id"]})["error"]["type"] == "NotFound"
