"""Host facts: what the scheduler needs to place instances here, read fresh each call.

Cheap reads only (/proc, statvfs, one ``virsh version``), except the KVM verdict,
which comes from the per-boot probe in kvm.py.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from agent.errors import LibvirtError
from agent.jobs import boot_id
from agent.kvm import BackgroundProbe, Verdict, qemu_binary
from agent.virt import Virsh

PROBE_WAIT = 5.0  # a cold probe takes ~3 s; a cached one answers at once
_GIB = 1024**3


def memory_mb() -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def disk(state_dir: Path) -> Dict[str, Optional[int]]:
    """Size and free space (whole GiB, rounded down) of the filesystem holding state_dir."""
    try:
        st = os.statvfs(state_dir)
    except OSError:
        return {"disk_gb": None, "disk_free_gb": None}
    return {
        "disk_gb": st.f_blocks * st.f_frsize // _GIB,
        "disk_free_gb": st.f_bavail * st.f_frsize // _GIB,
    }


def libvirt(uri: str) -> Dict[str, Any]:
    try:
        version = Virsh(uri).version()
    except LibvirtError as exc:
        return {"ok": False, "uri": uri, "version": None, "hypervisor": None, "error": str(exc)}
    return {"ok": True, "uri": uri, "error": None, **version}


def kvm_and_domain_type(
    mode: str, probe: Optional[BackgroundProbe]
) -> Tuple[Dict[str, Any], Optional[str]]:
    """The KVM verdict and the domain type builds here should use.

    "kvm" or "qemu" from the orchestrator is taken as is, without probing; "auto"
    takes the probe's verdict (null while it has not finished, so nothing is
    scheduled on a guess).
    """
    if mode != "auto" or probe is None:
        reason = f"not probed: the orchestrator set domain_type to {mode}"
        return {"usable": None, "reason": reason}, mode if mode != "auto" else None
    verdict: Optional[Verdict] = probe.result(PROBE_WAIT)
    if verdict is None:
        return {"usable": None, "reason": "the KVM probe is still running"}, None
    return verdict.to_wire(), "kvm" if verdict.usable else "qemu"


def gather(
    state_dir: Path, libvirt_uri: str, mode: str, probe: Optional[BackgroundProbe]
) -> Dict[str, Any]:
    kvm, domain_type = kvm_and_domain_type(mode, probe)
    if qemu_binary() is None:
        domain_type = None  # nothing can run here, whatever was asked
    return {
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_mb": memory_mb(),
        **disk(state_dir),
        "boot_id": boot_id(),
        "libvirt": libvirt(libvirt_uri),
        "domain_type": domain_type,
        "kvm": kvm,
        "tools": {
            "qemu_img": shutil.which("qemu-img") is not None,
            "virsh": shutil.which("virsh") is not None,
            "qemu_system": qemu_binary() is not None,
        },
        "state_dir": str(state_dir),
    }
