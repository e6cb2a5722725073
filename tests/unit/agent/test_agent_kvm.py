"""The KVM probe, with stand-in QEMU binaries: banner, silence, failure, cache."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from agent import kvm


def fake_qemu(tmp_path: Path, body: str) -> str:
    path = tmp_path / "qemu-system-fake"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def probe_with(qemu: str) -> kvm.Verdict:
    return kvm.boot_test_kernel(qemu, "/boot/vmlinuz-test", "pc", "ttyS0")


def test_a_kernel_banner_means_kvm_works(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "echo 'early noise'; echo 'Linux version 6.1.0'; exec sleep 30")
    started = time.monotonic()
    verdict = probe_with(qemu)
    assert verdict.usable is True
    assert time.monotonic() - started < 2  # stopped at the banner, not at the deadline


def test_a_silent_kernel_means_nested_kvm_is_not_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvm, "PROBE_SECONDS", 0.5)
    qemu = fake_qemu(tmp_path, "echo 'qemu: warning: host lacks pni' >&2; exec sleep 30")
    assert probe_with(qemu) == kvm.Verdict(False, kvm.NO_PROGRESS)


def test_qemu_refusing_kvm_gives_its_own_message(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "echo 'failed to initialize kvm: Permission denied' >&2; exit 1")
    verdict = probe_with(qemu)
    assert verdict.usable is False
    assert "failed to initialize kvm: Permission denied" in verdict.reason


def test_a_kvm_internal_error_ends_the_probe_early(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "echo 'KVM internal error. Suberror: 1' >&2; exec sleep 30")
    started = time.monotonic()
    verdict = probe_with(qemu)
    assert verdict.usable is False and "KVM internal error" in verdict.reason
    assert time.monotonic() - started < kvm.PROBE_SECONDS


def test_the_verdict_is_cached_per_boot_and_qemu_binary(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def fake_probe() -> kvm.Verdict:
        calls.append(1)
        return kvm.Verdict(False, kvm.NO_PROGRESS)

    monkeypatch.setattr(kvm, "probe", fake_probe)
    assert kvm.cached_probe(state_dir) == kvm.Verdict(False, kvm.NO_PROGRESS)
    assert kvm.cached_probe(state_dir) == kvm.Verdict(False, kvm.NO_PROGRESS)
    assert len(calls) == 1
    assert (state_dir / "state" / "kvm-probe.json").exists()
    monkeypatch.setattr(kvm, "boot_id", lambda: "a-new-boot")
    kvm.cached_probe(state_dir)
    assert len(calls) == 2


def test_an_inaccessible_device_is_reported_without_booting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kvm, "KVM_DEVICE", "/nonexistent/kvm")
    verdict = kvm.probe()
    assert verdict.usable is False
    assert "/nonexistent/kvm is not accessible" in verdict.reason


def test_background_probe_result_is_none_until_done(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvm, "cached_probe", lambda _: time.sleep(0.5) or kvm.Verdict(True, "ok"))
    probe = kvm.BackgroundProbe(state_dir)
    assert probe.result(0.01) is None
    assert probe.result(5) == kvm.Verdict(True, "ok")


def test_qemu_user_comes_from_qemu_conf(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "nobody"\nuser = "+0"\n')
    assert kvm.qemu_user(str(conf)) == "0"
    conf.write_text('user = "nobody"\n')
    assert kvm.qemu_user(str(conf)) == "nobody"


@pytest.mark.parametrize(
    ("mode", "usable"),
    [(0o600, False), (0o660, False), (0o666, True)],
)
def test_a_device_only_root_can_open_is_not_usable_by_qemu(
    tmp_path: Path, mode: int, usable: bool
) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    device.chmod(mode)  # owned by root:root here, so only "other" bits reach nobody
    assert kvm.user_can_use(str(device), "nobody") is usable
    assert kvm.user_can_use(str(device), "root") is True


@pytest.mark.parametrize("damage", [b"{not json", b"\xff", b'{"key": 1}', b"[]"])
def test_a_damaged_probe_cache_is_probed_again(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, damage: bytes
) -> None:
    monkeypatch.setattr(kvm, "probe", lambda: kvm.Verdict(True, "a kernel banner"))
    cache = state_dir / "state" / "kvm-probe.json"
    cache.parent.mkdir()
    cache.write_bytes(damage)
    assert kvm.cached_probe(state_dir) == kvm.Verdict(True, "a kernel banner")
