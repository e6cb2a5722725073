"""Reconcile's drift rules, as data: a DB snapshot and host surveys in, findings out."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from orchestrator.db.models import AgentJob, Allocation, Host, Instance, PowerState, VmState
from orchestrator.reconcile.config import ReconcileConfig
from orchestrator.reconcile.drift import Snapshot, detect
from orchestrator.reconcile.survey import HostSurvey

H1 = Host(id=1, name="hv1", address="a")
H2 = Host(id=2, name="hv2", address="b")


def server(name: str, uuid: str, host: Host | None = H1, **kw: object) -> Instance:
    fields: dict[str, object] = {
        "vm_state": VmState.ACTIVE,
        "task_state": None,
        "power_state": PowerState.RUNNING,
        "updated_at": datetime.now(UTC),
    }
    fields.update(kw)
    return Instance(
        uuid=uuid, name=name, flavor_name="f", vcpus=1, ram_mb=64, disk_gb=1,
        image_name="i", host_id=host.id if host else None, **fields,
    )  # fmt: skip


def claim(instance: Instance, host: Host = H1) -> Allocation:
    return Allocation(instance_uuid=instance.uuid, host_id=host.id, vcpus=1, ram_mb=64, disk_gb=1)


def survey(
    host: Host,
    domains: dict[str, str] | None = None,
    jobs: dict | None = None,
    error: str | None = None,
) -> HostSurvey:
    return HostSurvey(
        host,
        error=error,
        domains={
            u: {"uuid": u, "name": f"herd-{u}", "state": s, "instance_name": "x"}
            for u, s in (domains or {}).items()
        },
        jobs=jobs or {},
    )


def findings(
    instances, surveys, allocations=(), jobs=(), config=ReconcileConfig(), hosts=(H1, H2),
    migrations=frozenset(),
):  # fmt: skip
    snapshot = Snapshot(
        {h.id: h for h in hosts}, instances, list(allocations), list(jobs), {}, now=time.time(),
        migration_claims=migrations,
    )  # fmt: skip
    return [
        (f.kind, f.server or f.uuid or f.host, f.policy)
        for f in detect(snapshot, surveys, config)
        if not f.data.get("quiet")
    ]


def test_all_in_agreement_finds_nothing() -> None:
    a = server("a", "u-a")
    assert findings([a], [survey(H1, {"u-a": "running"}), survey(H2)], [claim(a)]) == []


def test_a_domain_shut_off_behind_herds_back_is_power_drift() -> None:
    a = server("a", "u-a")
    assert findings([a], [survey(H1, {"u-a": "shutoff"}), survey(H2)], [claim(a)]) == [
        ("power_state", "a", "record")
    ]


def test_a_stopped_server_whose_domain_runs_is_power_drift_unless_an_action_is_in_flight() -> None:
    b = server("b", "u-b", vm_state=VmState.STOPPED, power_state=PowerState.SHUTDOWN)
    assert findings([b], [survey(H1, {"u-b": "running"})], [claim(b)], hosts=(H1,)) == [
        ("power_state", "b", "record")
    ]
    b.task_state = "powering-on"
    assert findings([b], [survey(H1, {"u-b": "running"})], [claim(b)], hosts=(H1,)) == []


def test_orphans_stale_and_unknown_domains_follow_their_own_policies() -> None:
    gone = server("gone", "u-gone", vm_state=VmState.DELETED)
    moved = server("moved", "u-moved", host=H2)
    assert findings(
        [gone, moved],
        [
            survey(H1, {"u-gone": "running", "u-moved": "running", "u-unknown": "running"}),
            survey(H2, {"u-moved": "running"}),
        ],
        [claim(moved, H2)],
    ) == [
        ("deleted_running", "gone", "reap"),
        ("deleted_running", "moved", "reap"),
        ("unknown_domain", "u-unknown", "log"),
    ]
    quiet = ReconcileConfig(unknown_domains="noop", deleted_running="shutdown")
    assert findings(
        [gone], [survey(H1, {"u-gone": "running", "u-x": "shutoff"})], config=quiet, hosts=(H1,)
    ) == [("deleted_running", "gone", "shutdown")]


def test_a_missing_domain_on_a_live_host_is_found_but_not_on_an_unreachable_one() -> None:
    a = server("a", "u-a")
    assert findings([a], [survey(H1)], [claim(a)], hosts=(H1,)) == [("missing_domain", "a", "fix")]
    assert findings([a], [survey(H1, error="down")], [claim(a)], hosts=(H1,)) == [
        ("host_unreachable", "hv1", "report")
    ]


def build_cast_minutes_ago(minutes: int) -> tuple[Instance, AgentJob]:
    """A server building on hv1 and the build job cast to it ``minutes`` ago."""
    building = server(
        "b", "u-b", vm_state=VmState.BUILDING, task_state="spawning", power_state=PowerState.NOSTATE
    )
    job = AgentJob(
        id="j1",
        host_id=1,
        instance_uuid="u-b",
        op="build",
        state="running",
        created_at=datetime.now(UTC) - timedelta(minutes=minutes),
    )
    return building, job


def test_a_finished_job_nobody_collected_is_applied_and_shields_its_server() -> None:
    building, job = build_cast_minutes_ago(5)
    done = {"j1": {"job_id": "j1", "state": "succeeded", "result": {}}}
    assert findings(
        [building], [survey(H1, {"u-b": "running"}, done)], [claim(building)], [job], hosts=(H1,)
    ) == [("finished_job", "b", "fix")]
    running = {"j1": {"job_id": "j1", "state": "running"}}
    assert (
        findings([building], [survey(H1, {}, running)], [claim(building)], [job], hosts=(H1,)) == []
    )


def test_a_job_the_host_never_received_fails_after_a_grace_period() -> None:
    b = server("b", "u-b", vm_state=VmState.BUILDING, task_state="spawning")
    fresh = AgentJob(
        id="j", host_id=1, instance_uuid="u-b", op="build", created_at=datetime.now(UTC)
    )
    assert findings([b], [survey(H1)], [claim(b)], [fresh], hosts=(H1,)) == []
    old = AgentJob(
        id="j",
        host_id=1,
        instance_uuid="u-b",
        op="build",
        created_at=datetime.now(UTC) - timedelta(minutes=5),
    )
    assert findings([b], [survey(H1)], [claim(b)], [old], hosts=(H1,)) == [
        ("finished_job", "b", "fix")
    ]


def test_a_build_with_no_job_past_the_timeout_is_stuck() -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    b = server(
        "b", "u-b", vm_state=VmState.BUILDING, task_state="scheduling", host=None, updated_at=old
    )
    assert findings([b], [survey(H1)], hosts=(H1,)) == [("stuck_build", "b", "fix")]
    assert (
        findings([b], [survey(H1)], hosts=(H1,), config=ReconcileConfig(build_timeout=3 * 3600))
        == []
    )


def test_an_abandoned_task_is_cleared_after_the_timeout_but_a_fresh_one_is_left() -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    moving = server("m", "u-m", task_state="migrating", updated_at=old)
    assert findings([moving], [survey(H1, {"u-m": "running"})], [claim(moving)], hosts=(H1,)) == [
        ("stuck_task", "m", "fix")
    ]
    moving.updated_at = datetime.now(UTC)
    assert findings([moving], [survey(H1, {"u-m": "running"})], [claim(moving)], hosts=(H1,)) == []


def test_claims_that_disagree_with_the_servers_are_found() -> None:
    a = server("a", "u-a")
    gone = server("gone", "u-gone", vm_state=VmState.DELETED, host=None)
    moved = server("moved", "u-moved", host=H2)
    result = findings(
        [a, gone, moved],
        [survey(H1, {"u-a": "running"}), survey(H2, {"u-moved": "running"})],
        [claim(gone), claim(moved, H1)],
    )
    assert sorted(result) == [
        ("claim", "a", "fix"),
        ("claim", "gone", "fix"),
        ("claim", "moved", "fix"),
    ]


def test_a_waiting_resize_holds_two_claims_and_neither_is_drift() -> None:
    """The new size on the destination (the server's), the old on the source (the
    migration's, until confirm or revert): the rules must not release either."""
    r = server("r", "u-r", host=H2, vm_state=VmState.RESIZED)
    old = Allocation(instance_uuid="m-1", host_id=H1.id, vcpus=1, ram_mb=64, disk_gb=1)
    surveys = [survey(H1), survey(H2, {"u-r": "running"})]
    assert findings([r], surveys, [claim(r, H2), old], migrations=frozenset({"m-1"})) == []
    # Once the migration is closed, a claim still held by it is a leak.
    assert findings([r], surveys, [claim(r, H2), old]) == [("claim", "m-1", "fix")]


def test_a_server_mid_move_may_have_a_domain_on_its_destination() -> None:
    """A migration, resize or live migration defines the destination's domain before the
    DB moves the server there: reaping it would kill the move (or, live, the guest)."""
    moving = server("m", "u-m", task_state="migrating")
    surveys = [survey(H1, {"u-m": "running"}), survey(H2, {"u-m": "paused"})]
    assert findings([moving], surveys, [claim(moving)]) == []
    moving.task_state = None  # the move is over and the DB says hv1: hv2's copy is stale
    assert findings([moving], surveys, [claim(moving)]) == [("deleted_running", "m", "reap")]


def test_hosts_go_down_after_n_missed_surveys_and_up_when_they_answer() -> None:
    flaky = Host(id=1, name="hv1", address="a", missed_surveys=1)
    config = ReconcileConfig(down_after=3)
    assert findings([], [survey(flaky, error="x")], hosts=(flaky,), config=config) == [
        ("host_unreachable", "hv1", "report")
    ]
    flaky.missed_surveys = 2
    assert findings([], [survey(flaky, error="x")], hosts=(flaky,), config=config) == [
        ("host_down", "hv1", "fix")
    ]
    flaky.marked_down = True
    assert findings([], [survey(flaky)], hosts=(flaky,), config=config) == [
        ("host_up", "hv1", "fix")
    ]


def test_cached_images_unused_past_the_age_are_removed_only_when_configured() -> None:
    hour = 3600
    now = time.time()
    cached = survey(H1)
    cached.cache = [
        {"sha256": "a" * 64, "size": 1, "last_used": now - 30 * hour, "instances": []},
        {"sha256": "b" * 64, "size": 1, "last_used": now - 30 * hour, "instances": ["u-x"]},
        {"sha256": "c" * 64, "size": 1, "last_used": now - 1 * hour, "instances": []},
    ]
    snapshot = Snapshot({1: H1}, [], [], [], {"a" * 64: ["old-image"]}, now=now)
    found = detect(snapshot, [cached], ReconcileConfig(image_cache_max_age_hours=24))
    assert [(f.kind, f.data["sha256"][0], f.detail) for f in found] == [
        ("stale_image", "a", "cached image old-image unused for 30.0 h: removed")
    ]
    assert detect(snapshot, [cached], ReconcileConfig()) == []  # off by default


def test_a_job_whose_journal_the_host_cannot_read_is_unknown_not_lost() -> None:
    """The host answered and has a record of the job; only the file is damaged. The
    server is left alone (the survey warns), never failed as a cast that never came."""
    b = server("b", "u-b", vm_state=VmState.BUILDING, task_state="spawning")
    old = AgentJob(
        id="j",
        host_id=1,
        instance_uuid="u-b",
        op="build",
        created_at=datetime.now(UTC) - timedelta(minutes=5),
    )
    damaged = survey(H1)
    damaged.unreadable_jobs = {"j"}
    assert findings([b], [damaged], [claim(b)], [old], hosts=(H1,)) == []


def test_a_job_that_just_finished_is_left_to_the_command_collecting_it() -> None:
    """Cast 5 minutes ago and ran 4m50s by the host's account: finished 10 s ago, so
    the command that cast it is collecting it (a reconcile during the boots); the host's
    clock, an hour off, does not matter. Nothing else may touch the server meanwhile."""
    building, job = build_cast_minutes_ago(5)
    skewed = time.time() + 3600
    record = {"job_id": "j1", "state": "succeeded", "result": {}}
    just = {"j1": {**record, "started_at": skewed - 300, "finished_at": skewed - 10}}
    assert findings([building], [survey(H1, {}, just)], [claim(building)], [job], hosts=(H1,)) == []
    long_ago = {"j1": {**record, "started_at": skewed - 300, "finished_at": skewed - 280}}
    assert findings(
        [building], [survey(H1, {}, long_ago)], [claim(building)], [job], hosts=(H1,)
    ) == [("finished_job", "b", "fix")]
    assert findings(
        [building],
        [survey(H1, {}, just)],
        [claim(building)],
        [job],
        hosts=(H1,),
        config=ReconcileConfig(collect_grace=0),
    ) == [("finished_job", "b", "fix")]
