"""Every validating pattern of the agent matches the whole value: `$` alone lets a
trailing newline through (``re.match("^[a-z]+$", "db\\n")`` matches)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_testlib import build_args

from agent import images, jobs, specs
from agent.calls import Agent
from agent.errors import BadRequest

UUID = "8a1f4c2e-3b5d-4e6f-9a7b-0c1d2e3f4a5b"
SHA = "ab" * 32
MAC = "02:68:64:0a:0b:0c"


def build_with_nic(nic: dict[str, Any]) -> Any:
    args = build_args(UUID)
    args["nics"] = [nic]
    return specs.BuildSpec.from_args(args)


def live_migrate(address: str) -> Any:
    args = {"uuid": UUID, "socket": "/srv/herd/migrate-0a.sock", "address": address}
    args.update(timeout=60, port=49152, disks_port=49153)
    return specs.LiveMigrateSpec.from_args(args)


# (id, check, a valid value): the check must take the value and refuse it with "\n" after.
VALIDATORS: list[tuple[str, Callable[[str], Any], str]] = [
    ("uuid", lambda v: specs.uuid({"uuid": v}, "uuid"), UUID),
    ("sha256", lambda v: specs.sha256({"sha256": v}, "sha256"), SHA),
    ("delete-uuid", lambda v: specs.DeleteSpec.from_args({"uuid": v}), UUID),
    ("power-uuid", lambda v: specs.PowerSpec.from_args({"uuid": v, "action": "start"}), UUID),
    ("build-image-sha256", lambda v: specs.BuildSpec.from_args(build_args(UUID, sha256=v)), SHA),
    ("build-instance-uuid", lambda v: specs.BuildSpec.from_args(build_args(v)), UUID),
    ("nic-mac", lambda v: build_with_nic({"mac": v, "kind": "user"}), MAC),
    (
        "nic-bridge",
        lambda v: build_with_nic({"mac": MAC, "kind": "bridge", "source": v}),
        "br0",
    ),
    (
        "nic-network",
        lambda v: build_with_nic({"mac": MAC, "kind": "network", "source": v}),
        "default",
    ),
    ("live-migrate-address", live_migrate, "192.0.2.7"),
    ("job-id", jobs.check_job_id, "build-1:2"),
    ("state-dir", specs.check_state_dir, "/srv/herd"),
    ("cmdline", specs.check_cmdline, "console=ttyS0"),
    ("libvirt-uri", specs.check_libvirt_uri, "qemu:///system"),
]


@pytest.mark.parametrize(
    ("check", "valid"), [pytest.param(check, valid, id=name) for name, check, valid in VALIDATORS]
)
@pytest.mark.parametrize("tail", ["\n", "\r\n", "\nx"], ids=["newline", "crlf", "second-line"])
def test_a_value_with_a_line_break_is_refused(
    check: Callable[[str], Any], valid: str, tail: str
) -> None:
    check(valid)
    with pytest.raises((BadRequest, ValueError)):
        check(valid + tail)


def test_hello_refuses_a_libvirt_uri_with_a_trailing_newline(state_dir: Path) -> None:
    args = {"state_dir": str(state_dir), "libvirt_uri": "test:///default\n", "domain_type": "qemu"}
    with pytest.raises(BadRequest, match="libvirt_uri must be a libvirt URI"):
        Agent().dispatch("hello", args)


def test_the_image_cache_ignores_a_file_whose_name_ends_in_a_newline(state_dir: Path) -> None:
    cache = state_dir / "images"
    cache.mkdir()
    (cache / SHA).write_bytes(b"disk")
    (cache / f"{'cd' * 32}\n").write_bytes(b"not a cache entry")
    entries, _ = images.list_cached(state_dir)
    assert [entry["sha256"] for entry in entries] == [SHA]


def test_the_journal_ignores_a_record_whose_name_ends_in_a_newline(state_dir: Path) -> None:
    journal = jobs.Journal.of(state_dir)
    journal.save(jobs.JobRecord("good", "delete", {}))
    (journal.dir / "bad\n.json").write_text("{}")
    assert journal.job_ids() == ["good"]
