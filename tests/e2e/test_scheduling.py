"""The scheduler on real hosts: groups spread for real, and a host whose libvirt
fails the build makes herd reschedule to an alternate."""

from __future__ import annotations

import pytest

from tests.e2e.herdcli import HerdCli, assert_one_line_error, domain_state

pytestmark = [pytest.mark.e2e, pytest.mark.engine_postgresql]

QEMU = "/usr/bin/qemu-system-x86_64"


def test_an_anti_affinity_group_of_three_lands_on_three_hosts(herd: HerdCli, lab) -> None:
    herd.ok("group", "create", "apart", "--policy", "anti-affinity")
    created = herd.ok(
        "server", "create", "apart", "--flavor", "m1.nano", "--image", "blank",
        "--count", "3", "--group", "apart", "--json",
    ).json()  # fmt: skip
    assert {c["vm_state"] for c in created} == {"active"}
    assert len({c["host"] for c in created}) == 3
    for c in created:
        assert domain_state(lab, c["host"], c["uuid"]) == "running"
    (group,) = herd.ok("group", "list", "--json").json()
    assert sorted(m["host"] for m in group["members"]) == sorted(h.name for h in lab.hosts)

    # A fourth member has nowhere to go, and the error says why for every host.
    refused = herd.run(
        "server", "create", "apart-4", "--flavor", "m1.nano", "--image", "blank",
        "--group", "apart", "--json",
    )  # fmt: skip
    assert_one_line_error(refused, code=5, contains="0/3 hosts fit: 3 anti_affinity")


def test_an_affinity_group_stays_on_one_host(herd: HerdCli, lab) -> None:
    herd.ok("group", "create", "together", "--policy", "affinity")
    created = herd.ok(
        "server", "create", "together", "--flavor", "m1.nano", "--image", "blank",
        "--count", "3", "--group", "together", "--json",
    ).json()  # fmt: skip
    assert {c["vm_state"] for c in created} == {"active"}
    assert len({c["host"] for c in created}) == 1


def test_a_failing_host_makes_the_build_reschedule_to_an_alternate(herd: HerdCli, lab) -> None:
    broken, *healthy = (h.name for h in lab.hosts)
    # Make the broken host the most attractive: the healthy ones each run a server.
    for host in healthy:
        herd.ok("server", "create", f"load-{host}", "--flavor", "m1.nano", "--image", "blank",
                "--host", host)  # fmt: skip
    plan = herd.ok(
        "server", "create", "moved", "--flavor", "m1.nano", "--image", "blank",
        "--dry-run", "--json",
    ).json()  # fmt: skip
    assert plan["placements"][0]["host"] == broken
    assert set(plan["placements"][0]["alternates"]) == set(healthy)

    # Its QEMU now fails for real: libvirt cannot start (or even probe) the binary.
    lab.exec_in(broken, ["mount", "--bind", "/bin/false", QEMU], check=True)
    try:
        (created,) = herd.ok(
            "server", "create", "moved", "--flavor", "m1.nano", "--image", "blank", "--json"
        ).json()
    finally:
        lab.exec_in(broken, ["umount", QEMU], check=True)
        lab.stop_service(broken, "libvirtd")  # forget the capabilities it probed meanwhile
        lab.start_service(broken, "libvirtd")

    assert created["vm_state"] == "active" and created["host"] in healthy
    assert domain_state(lab, created["host"], created["uuid"]) == "running"
    assert domain_state(lab, broken, created["uuid"]) is None

    shown = herd.server("moved")
    (fault,) = shown["faults"]
    assert fault["host"] == broken and "(rescheduling)" in fault["message"]
    (create,) = herd.ok("server", "actions", "moved", "--json").json()
    steps = [(e["event"], e["host"], e["result"]) for e in create["events"]]
    assert steps == [
        ("schedule", broken, "success"),
        ("image", broken, "success"),
        ("build", broken, "error"),
        ("schedule", created["host"], "success"),
        ("image", created["host"], "success"),
        ("build", created["host"], "success"),
    ]
    hosts = {h["name"]: h for h in herd.ok("host", "list", "--json").json()}
    assert hosts[broken]["instances"] == 0  # the failed attempt gave its claim back
