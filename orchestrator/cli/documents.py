"""The JSON documents `--json` prints for servers, hosts and groups: one shape per
resource, shared by every command that shows one, built from what api/ returns."""

from __future__ import annotations

from typing import Any

from orchestrator.api.groups import GroupView
from orchestrator.api.hosts import HostView, host_status
from orchestrator.api.servers import ServerView


def server_dict(view: ServerView) -> dict[str, Any]:
    i = view.instance
    return {
        "uuid": i.uuid,
        "name": i.name,
        "host": view.host,
        "vm_state": i.vm_state,
        "task_state": i.task_state,
        "power_state": i.power_state,
        "flavor": i.flavor_name,
        "image": i.image_name,
        "vcpus": i.vcpus,
        "ram_mb": i.ram_mb,
        "disk_gb": i.disk_gb,
        "group": view.group,
        "hostname": i.hostname,
        "key_name": i.key_name,
        "addresses": [p.to_dict() for p in view.ports],
        "request_spec": i.request_spec,
        "created_at": i.created_at.isoformat() if i.created_at else None,
        "launched_at": i.launched_at.isoformat() if i.launched_at else None,
        "deleted_at": i.deleted_at.isoformat() if i.deleted_at else None,
    }


def host_dict(view: HostView) -> dict[str, Any]:
    h = view.host
    return {
        "name": h.name,
        "address": h.address,
        "port": h.ssh_port,
        "status": host_status(h),
        "enabled": h.enabled,
        "disabled_reason": None if h.enabled else h.disabled_reason,
        "availability_zone": h.availability_zone,
        "labels": h.labels,
        "domain_type": h.domain_type,
        "vcpus": {
            "total": h.total_vcpus,
            "ratio": h.cpu_ratio,
            "reserved": h.reserved_vcpus,
            "used": view.used_vcpus,
        },
        "ram_mb": {
            "total": h.total_ram_mb,
            "ratio": h.ram_ratio,
            "reserved": h.reserved_ram_mb,
            "used": view.used_ram_mb,
        },
        "disk_gb": {
            "total": h.total_disk_gb,
            "ratio": h.disk_ratio,
            "reserved": h.reserved_disk_gb,
            "used": view.used_disk_gb,
        },
        "instances": view.instances,
        "libvirt_ok": h.libvirt_ok,
        "libvirt_error": h.libvirt_error,
        "agent_version": h.agent_version,
        "last_seen_at": h.last_seen_at.isoformat() if h.last_seen_at else None,
        "last_error": h.last_error,
    }


def group_dict(view: GroupView) -> dict[str, Any]:
    return {
        "name": view.group.name,
        "policy": view.group.policy,
        "members": [{"server": s, "host": h} for s, h in view.members],
        "created_at": view.group.created_at,
    }
