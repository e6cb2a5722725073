"""A daemon that fails to start is explained by the last lines of its log."""

from __future__ import annotations

from orchestrator.lab.daemons import log_tail

STAMP = "2026-11-24 18:11:35.517+0000: 17750:"
LIBVIRTD_LOG = "\n".join(
    [
        f"{STAMP} info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)",
        f"{STAMP} info : hostname: lab-1",
        f"{STAMP} error : dnsmasqCapsNewFromBinary:673 : Unable to find 'dnsmasq' binary",
        f"{STAMP} warning : networkStateInitialize:658 : DBus not available",
        f"{STAMP} error : virGetGroupID:840 : invalid argument: Failed to parse group 'x'",
        f"{STAMP} error : daemonRunStateInit:616 : Driver state initialization failed",
        "",
        "",
    ]
)


def test_libvirt_logs_give_their_last_errors_without_timestamps() -> None:
    assert log_tail(LIBVIRTD_LOG) == (
        "invalid argument: Failed to parse group 'x' / Driver state initialization failed"
    )


def test_other_logs_give_their_last_lines() -> None:
    sshd_log = (
        "Server listening on 127.0.100.1 port 2222.\n"
        "Bind to port 2222 on 127.0.100.2 failed: Address already in use.\n"
        "Cannot bind any address.\n\n"
    )
    assert log_tail(sshd_log) == (
        "Bind to port 2222 on 127.0.100.2 failed: Address already in use. / "
        "Cannot bind any address."
    )


def test_an_empty_log_gives_nothing() -> None:
    assert log_tail("\n\n") == ""


def test_a_long_tail_is_cut_to_stay_one_readable_line() -> None:
    tail = log_tail("x" * 1000)
    assert len(tail) == 400 and tail.endswith("...")
