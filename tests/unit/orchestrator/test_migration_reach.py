"""A live migration's reachability verdict: one line naming the pair, address and ports."""

from __future__ import annotations

import pytest

from orchestrator.conductor.migration_reach import refusal
from orchestrator.rpc.agent_api import Knock, Listening, ReachCheck

LISTENING = Listening("0" * 16, "0" * 32, (49170, 49201), (49152, 49215))
BOTH = frozenset({49170, 49201})


def verdict(check: ReachCheck, heard: frozenset[int] = BOTH) -> str | None:
    return refusal("lab-1", "lab-2", "127.0.0.12", LISTENING, check, heard)


def test_a_pair_whose_ports_and_libvirt_answer_is_not_refused() -> None:
    assert verdict(ReachCheck(None, (Knock(49170, None), Knock(49201, None)))) is None


@pytest.mark.parametrize(
    ("knocks", "heard", "expected"),
    [
        (
            (Knock(49170, "timed out after 3 s"), Knock(49201, "timed out after 3 s")),
            frozenset(),
            "lab-1 cannot reach lab-2 at 127.0.0.12 on migration ports 49170, 49201 (of "
            "49152-49215, where QEMU streams memory and disk): timed out after 3 s (dropped "
            "on the way: a firewall?)",
        ),
        (
            (Knock(49170, None), Knock(49201, "refused")),
            frozenset({49170}),
            "lab-1 cannot reach lab-2 at 127.0.0.12 on migration port 49201 (of 49152-49215, "
            "where QEMU streams memory and disk): refused (rejected on the way: a firewall?)",
        ),
        (
            (Knock(49170, "no route to host"), Knock(49201, "refused")),
            frozenset(),
            "ports 49170, 49201 (of 49152-49215, where QEMU streams memory and disk): 49170 no "
            "route to host (the source has no route there); 49201 refused (rejected",
        ),
        (
            (Knock(49170, None), Knock(49201, None)),
            frozenset({49170}),
            "port 49201 (of 49152-49215, where QEMU streams memory and disk): answered, but "
            "not by the destination's listener (another host answers at that address?)",
        ),
    ],
    ids=["dropped", "one-rejected", "mixed", "not-heard-by-the-destination"],
)
def test_ports_the_source_cannot_reach_are_named_with_what_the_knock_met(
    knocks: tuple[Knock, ...], heard: frozenset[int], expected: str
) -> None:
    said = verdict(ReachCheck(None, knocks), heard)
    assert said is not None and expected in said and "\n" not in said


def test_a_libvirtd_that_does_not_answer_through_the_tunnel_is_named() -> None:
    said = verdict(ReachCheck("virsh version: End of file while reading data", ()), frozenset())
    assert said == (
        "lab-2's libvirtd does not answer lab-1 through herd's SSH tunnel (libvirt's own "
        "connection needs no port): virsh version: End of file while reading data"
    )


def test_every_reason_is_given_not_only_the_first() -> None:
    knocks = (Knock(49170, "refused"), Knock(49201, None))
    said = verdict(ReachCheck("virsh version: boom", knocks), BOTH)
    assert said is not None and "\n" not in said
    assert said.startswith("lab-2's libvirtd does not answer lab-1")
    assert said.endswith("; and lab-1 cannot reach lab-2 at 127.0.0.12 on migration port 49170 "
                         "(of 49152-49215, where QEMU streams memory and disk): refused "
                         "(rejected on the way: a firewall?)")  # fmt: skip
