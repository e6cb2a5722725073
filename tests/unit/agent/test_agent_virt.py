"""virsh output parsing, and the wrapper against libvirt's in-process test driver."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_testlib import needs_virsh

from agent import virt
from agent.errors import LibvirtError

STOPPED = "aaaaaaaa-0000-0000-0000-000000000001"
NODE_XML = f"""<node>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>herd-{STOPPED}</name>
    <uuid>{STOPPED}</uuid>
    <memory>131072</memory>
    <os><type>hvm</type></os>
    <test:runstate>5</test:runstate>
  </domain>
</node>
"""


def test_virsh_errors_fold_into_libvirts_one_line_message() -> None:
    stderr = (
        "error: Failed to start domain 'herd-x'\n"
        "error: internal error: qemu unexpectedly closed the monitor\n\n"
    )
    assert virt.fold_virsh(stderr) == (
        "Failed to start domain 'herd-x': internal error: qemu unexpectedly closed the monitor"
    )


@pytest.mark.parametrize(
    ("virsh_says", "we_say"),
    [
        ("running", "running"),
        ("shut off", "shutoff"),
        ("in shutdown", "shutdown"),
        ("paused\n", "paused"),
        ("pmsuspended", "pmsuspended"),
        ("something new", "something-new"),
    ],
)
def test_domain_states_are_one_word(virsh_says: str, we_say: str) -> None:
    assert virt.normalise_state(virsh_says) == we_say


def test_a_domain_that_vanished_mid_batch_is_skipped() -> None:
    a, b = STOPPED, "bbbbbbbb-0000-0000-0000-000000000002"
    text = (
        f"@@herd-domain {a} @@"  # virsh -q: echo without a newline; domstate failed
        f"@@herd-domain {b} @@running\n"
        f"<domain type='kvm'><name>herd-{b}</name><uuid>{b}</uuid></domain>\n"
    )
    (only,) = virt.parse_batch(text)
    assert (only.uuid, only.state, only.managed) == (b, "running", False)


@needs_virsh
def test_dominfo_of_a_missing_domain_is_none() -> None:
    assert virt.Virsh("test:///default").dominfo(STOPPED) is None


@needs_virsh
def test_undefine_drops_flags_the_driver_does_not_support() -> None:
    """The test driver rejects --nvram and friends: undefine still succeeds."""
    virt.Virsh("test:///default").undefine("test")


@needs_virsh
def test_destroying_a_stopped_domain_is_not_an_error(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    vm = virt.Virsh(f"test://{node}")
    assert vm.dominfo(STOPPED).state == "shutoff"
    assert vm.destroy(f"herd-{STOPPED}") is False


@needs_virsh
def test_a_failing_call_raises_libvirts_message() -> None:
    with pytest.raises(LibvirtError, match=r"^virsh start: failed to get domain 'nope'$"):
        virt.Virsh("test:///default").start("nope")
