"""`herd inventory apply` never changes or removes what live servers use.

Each case applies a base inventory, puts a server on it (as a boot would have left it),
then applies a changed file: the change is refused with exit 4, naming the server, and
the database is exactly as before (one transaction, all or nothing).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import (
    Allocation,
    Flavor,
    Host,
    Image,
    Instance,
    Migration,
    MigrationStatus,
    Network,
    Port,
    VmState,
)
from orchestrator.errors import Conflict
from orchestrator.inventory import load_inventory
from orchestrator.inventory.apply import apply_inventory

BASE = """\
hosts:
  - name: hv1
    address: 127.0.0.1
    agent_dir: /var/lib/herd
  - name: hv2
    address: 127.0.0.2
flavors:
  - name: small
    vcpus: 1
    ram_mb: 512
    disk_gb: 1
  - name: big
    vcpus: 2
    ram_mb: 1024
    disk_gb: 2
images:
  - name: k
    source: vmlinuz
    format: aki
  - name: disk
    source: disk.qcow2
networks:
  - name: lab
    type: user
    subnet: 10.0.2.0/24
    gateway: 10.0.2.2
    allocation_pool: {start: 10.0.2.10, end: 10.0.2.50}
    default: true
"""


def load(tmp_path: Path, text: str, name: str) -> Any:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_inventory(path)


@pytest.fixture
async def fleet(db: Database, tmp_path: Path) -> Database:
    """The base inventory applied, and server web-1 on hv1 with flavor small, booted
    from image disk, with a port at 10.0.2.20 on network lab."""
    (tmp_path / "vmlinuz").write_bytes(b"vmlinuz")
    for name in ("disk.qcow2", "disk2.qcow2"):  # an empty qcow2 v3 header, then unique bytes
        (tmp_path / name).write_bytes(b"QFI\xfb\0\0\0\x03".ljust(512, b"\0") + name.encode())
    await apply_inventory(db, load(tmp_path, BASE, "base.yaml"))
    async with db.session() as session:
        hv1 = (await session.exec(select(Host).where(Host.name == "hv1"))).one()
        disk = (await session.exec(select(Image).where(Image.name == "disk"))).one()
        lab = (await session.exec(select(Network).where(Network.name == "lab"))).one()
        session.add(
            Instance(
                uuid="u-web-1", name="web-1", flavor_name="small", vcpus=1, ram_mb=512,
                disk_gb=1, image_name="disk", image_id=disk.id, host_id=hv1.id,
                vm_state=VmState.ERROR,  # not deleted: error servers still use what they had
            )
        )  # fmt: skip
        session.add(Allocation(instance_uuid="u-web-1", host_id=hv1.id, vcpus=1, ram_mb=512,
                               disk_gb=1))  # fmt: skip
        session.add(
            Port(
                instance_uuid="u-web-1", network_id=lab.id, mac="02:68:64:00:00:01", ip="10.0.2.20"
            )
        )
    return db


async def snapshot(db: Database) -> dict[str, list[tuple]]:
    """Every inventory-owned row as plain values, to prove nothing changed."""
    out: dict[str, list[tuple]] = {}
    async with db.session() as session:
        for model in (Host, Flavor, Image, Network):
            rows = (await session.exec(select(model).order_by(model.name))).all()
            out[model.__name__] = [tuple(sorted(r.model_dump().items())) for r in rows]
    return out


def changed(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


REFUSED = [
    pytest.param(
        changed(BASE, "  - name: small\n    vcpus: 1\n    ram_mb: 512\n    disk_gb: 1\n", ""),
        r"flavor small is not in the inventory but servers still use it \(web-1\)",
        id="flavor-in-use-removed",
    ),
    pytest.param(
        changed(BASE, "vcpus: 1\n    ram_mb: 512", "vcpus: 1\n    ram_mb: 768"),
        r"flavor small: ram_mb cannot change while servers use it \(web-1\)",
        id="flavor-in-use-resized",
    ),
    pytest.param(
        changed(BASE, "subnet: 10.0.2.0/24", "subnet: 10.0.3.0/24")
        .replace("gateway: 10.0.2.2", "gateway: 10.0.3.2")
        .replace("{start: 10.0.2.10, end: 10.0.2.50}", "{start: 10.0.3.10, end: 10.0.3.50}"),
        r"network lab: subnet, gateway, allocation_pool cannot change while servers have ports on it "
        r"\(web-1\)",
        id="network-subnet-changed",
    ),
    pytest.param(
        changed(BASE, "type: user", "type: bridge\n    bridge: br0"),
        r"network lab: type, bridge cannot change while servers have ports on it \(web-1\)",
        id="network-type-changed",
    ),
    pytest.param(
        changed(BASE, "{start: 10.0.2.10, end: 10.0.2.50}", "{start: 10.0.2.30, end: 10.0.2.50}"),
        r"network lab: the new allocation pool 10.0.2.30-10.0.2.50 leaves out the "
        r"addresses of web-1 \(10.0.2.20\)",
        id="network-pool-shrunk-past-a-port",
    ),
    pytest.param(
        changed(BASE, "    agent_dir: /var/lib/herd\n", "    agent_dir: /srv/herd\n"),
        r"host hv1: agent_dir cannot change while servers are on it \(web-1\)",
        id="host-agent-dir-changed",
    ),
    pytest.param(
        changed(
            BASE,
            "    address: 127.0.0.1\n",
            "    address: 127.0.0.1\n    libvirt_uri: qemu:///session\n",
        ),
        r"host hv1: libvirt_uri cannot change while servers are on it \(web-1\)",
        id="host-libvirt-uri-changed",
    ),
    pytest.param(
        changed(BASE, "source: disk.qcow2", "source: disk2.qcow2"),
        r"image disk: its data \(sha256\) cannot change while servers use it \(web-1\)",
        id="image-in-use-new-bytes",
    ),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
async def test_a_change_under_a_live_server_is_refused_and_nothing_is_applied(
    fleet: Database, tmp_path: Path, text: str, message: str
) -> None:
    before = await snapshot(fleet)
    # Something harmless in the same file must not be applied either.
    text = text.replace("  - name: big\n", "  - name: new\n    vcpus: 1\n    ram_mb: 64\n"
                        "    disk_gb: 1\n  - name: big\n")  # fmt: skip
    with pytest.raises(Conflict, match=message):
        await apply_inventory(fleet, load(tmp_path, text, "changed.yaml"))
    assert await snapshot(fleet) == before
    with pytest.raises(Conflict, match=message):  # validate says so too
        await apply_inventory(fleet, load(tmp_path, text, "changed.yaml"), dry_run=True)


async def test_every_refusal_is_told_at_once_one_line_each(fleet: Database, tmp_path: Path) -> None:
    text = changed(BASE, "vcpus: 1\n    ram_mb: 512", "vcpus: 2\n    ram_mb: 512")
    text = changed(text, "    agent_dir: /var/lib/herd\n", "    agent_dir: /srv/herd\n")
    with pytest.raises(Conflict) as raised:
        await apply_inventory(fleet, load(tmp_path, text, "two.yaml"))
    lines = str(raised.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("host hv1: agent_dir cannot change")
    assert lines[1].startswith("flavor small: vcpus cannot change")


async def test_a_kernel_named_by_another_image_is_not_removed(
    fleet: Database, tmp_path: Path
) -> None:
    async with fleet.session() as session:
        session.add(
            Image(name="mine", source="/dev/null", managed_by="cli", properties={"kernel_id": "k"})
        )
    before = await snapshot(fleet)
    text = changed(BASE, "  - name: k\n    source: vmlinuz\n    format: aki\n", "")
    with pytest.raises(
        Conflict,
        match=r"image k is not in the inventory but images still name it: mine \(kernel_id\)",
    ):
        await apply_inventory(fleet, load(tmp_path, text, "nokernel.yaml"))
    assert await snapshot(fleet) == before


async def test_a_flavor_an_open_resize_may_revert_to_is_in_use(
    fleet: Database, tmp_path: Path
) -> None:
    """web-1 was resized from big to small and waits for --confirm: big is still its."""
    async with fleet.session() as session:
        session.add(
            Migration(
                uuid="m-1", instance_uuid="u-web-1", kind="resize",
                status=MigrationStatus.FINISHED, old_vm_state=VmState.ACTIVE,
                old_flavor={"name": "big", "vcpus": 2, "ram_mb": 1024, "disk_gb": 2},
                new_flavor={"name": "small", "vcpus": 1, "ram_mb": 512, "disk_gb": 1},
            )
        )  # fmt: skip
    text = changed(BASE, "  - name: big\n    vcpus: 2\n    ram_mb: 1024\n    disk_gb: 2\n", "")
    with pytest.raises(Conflict, match=r"flavor big is not in the inventory but .*\(web-1\)"):
        await apply_inventory(fleet, load(tmp_path, text, "nobig.yaml"))


SAFE = [
    pytest.param(
        changed(BASE, "    disk_gb: 1\n", "    disk_gb: 1\n    extra_specs: {ssd: 'true'}\n"),
        id="flavor-extra-specs",  # Nova's flavor extra specs are editable: new boots only
    ),
    pytest.param(
        changed(BASE, "{start: 10.0.2.10, end: 10.0.2.50}", "{start: 10.0.2.10, end: 10.0.2.90}"),
        id="network-pool-grown",
    ),
    pytest.param(
        changed(BASE, "    default: true\n", "    default: true\n    dns: [10.0.2.3]\n"),
        id="network-dns",
    ),
    pytest.param(changed(BASE, "address: 127.0.0.1", "address: 127.0.0.9"), id="host-address"),
    pytest.param(
        changed(BASE, "    source: disk.qcow2\n", "    source: disk.qcow2\n    min_ram_mb: 64\n"),
        id="image-min-ram",
    ),
    pytest.param(
        changed(BASE, "  - name: big\n    vcpus: 2\n    ram_mb: 1024\n    disk_gb: 2\n", ""),
        id="unused-flavor-removed",
    ),
    pytest.param(
        changed(BASE, "  - name: hv2\n    address: 127.0.0.2\n", ""), id="unused-host-removed"
    ),
    pytest.param(
        changed(
            BASE, "    address: 127.0.0.2\n", "    address: 127.0.0.2\n    agent_dir: /srv/h\n"
        ),
        id="unused-host-agent-dir",
    ),
]


@pytest.mark.parametrize("text", SAFE)
async def test_changes_that_leave_live_servers_as_they_are_apply(
    fleet: Database, tmp_path: Path, text: str
) -> None:
    before = await snapshot(fleet)
    changes = await apply_inventory(fleet, load(tmp_path, text, "safe.yaml"))
    assert any(c.verb != "unchanged" for c in changes)
    assert await snapshot(fleet) != before


async def test_a_host_where_an_open_resize_keeps_a_claim_is_in_use(
    fleet: Database, tmp_path: Path
) -> None:
    """web-1 was resized from hv2 to hv1: hv2 keeps its disk and old claim until
    --confirm, under the migration's UUID, so hv2 cannot go or move its agent_dir."""
    async with fleet.session() as session:
        hv2 = (await session.exec(select(Host).where(Host.name == "hv2"))).one()
        session.add(
            Migration(
                uuid="m-2", instance_uuid="u-web-1", kind="resize", source_host_id=hv2.id,
                status=MigrationStatus.FINISHED, old_vm_state=VmState.ACTIVE,
                old_flavor={"name": "small"}, new_flavor={"name": "small"},
            )
        )  # fmt: skip
        session.add(Allocation(instance_uuid="m-2", host_id=hv2.id, vcpus=1, ram_mb=1, disk_gb=1))
    gone = changed(BASE, "  - name: hv2\n    address: 127.0.0.2\n", "")
    with pytest.raises(Conflict, match=r"host hv2 is not in the inventory but still has .*web-1"):
        await apply_inventory(fleet, load(tmp_path, gone, "gone.yaml"))
    moved = changed(
        BASE, "    address: 127.0.0.2\n", "    address: 127.0.0.2\n    agent_dir: /srv/herd-2\n"
    )
    with pytest.raises(Conflict, match=r"host hv2: agent_dir cannot change .*\(web-1\)"):
        await apply_inventory(fleet, load(tmp_path, moved, "moved.yaml"))


async def test_an_image_taken_before_a_stricter_inspector_does_not_block_later_applies(
    fleet: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes, already accepted, are not inspected again: otherwise one image
    in use that today's inspector refuses would block every apply (and could never be
    removed while servers use it). Changed bytes are inspected as new ones."""
    import orchestrator.inventory.apply as apply_module

    monkeypatch.setattr(apply_module, "unsafe_local_image", lambda path, fmt: "stricter now")
    await apply_inventory(fleet, load(tmp_path, BASE, "again.yaml"))

    (tmp_path / "disk.qcow2").write_bytes(b"QFI\xfb\0\0\0\x03".ljust(512, b"\0") + b"new")
    before = await snapshot(fleet)
    with pytest.raises(Exception, match=r"images \(disk\)\.source: .* was refused: stricter now"):
        await apply_inventory(fleet, load(tmp_path, BASE, "changed.yaml"))
    assert await snapshot(fleet) == before
