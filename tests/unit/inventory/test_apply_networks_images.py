"""`herd inventory apply` for networks and images: all or nothing, never losing what is used."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlmodel import select

from orchestrator.db.engine import Database
from orchestrator.db.models import Image, Network, Port
from orchestrator.errors import Conflict, InvalidInput
from orchestrator.inventory import load_inventory
from orchestrator.inventory.apply import apply_inventory

NETWORKS = """\
networks:
  - name: lab
    type: user
    subnet: 10.0.2.0/24
    gateway: 10.0.2.2
    default: true
  - name: br
    type: bridge
    bridge: br0
"""


def inventory(tmp_path: Path, text: str, name: str = "inv.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_inventory(path)


async def rows(db: Database, model: type) -> dict[str, object]:
    async with db.session() as session:
        return {r.name: r for r in (await session.exec(select(model))).all()}


async def test_networks_are_created_with_a_default_pool_that_skips_the_gateway(
    db: Database, tmp_path: Path
) -> None:
    await apply_inventory(db, inventory(tmp_path, NETWORKS))
    nets = await rows(db, Network)
    lab, br = nets["lab"], nets["br"]
    assert (lab.kind, lab.cidr, lab.gateway, lab.is_default) == (
        "user",
        "10.0.2.0/24",
        "10.0.2.2",
        True,
    )
    assert (lab.pool_start, lab.pool_end) == ("10.0.2.1", "10.0.2.254")
    assert (br.kind, br.source, br.cidr, br.pool_start) == ("bridge", "br0", None, None)


async def test_two_default_networks_are_refused_naming_both(db: Database, tmp_path: Path) -> None:
    text = NETWORKS.replace("    bridge: br0\n", "    bridge: br0\n    default: true\n")
    with pytest.raises(
        InvalidInput, match=r"inv.yaml:7: networks \(br\).default: only one .*lab is"
    ):
        await apply_inventory(db, inventory(tmp_path, text))
    assert await rows(db, Network) == {}


async def test_a_network_with_ports_is_not_removed(db: Database, tmp_path: Path) -> None:
    await apply_inventory(db, inventory(tmp_path, NETWORKS))
    async with db.session() as session:
        lab = (await session.exec(select(Network).where(Network.name == "lab"))).one()
        session.add(
            Port(instance_uuid="u", network_id=lab.id, mac="02:68:64:00:00:01", ip="10.0.2.9")
        )
    with pytest.raises(Conflict, match="network lab is not in the inventory but 1 server port"):
        await apply_inventory(db, inventory(tmp_path, "networks: []\n"))
    assert set(await rows(db, Network)) == {"lab", "br"}


IMAGES = """\
images:
  - name: k
    source: {k}
    format: aki
  - name: disk
    source: {disk}
    properties: {{kernel_id: k}}
"""


async def test_a_kernel_reference_must_name_an_aki_image(db: Database, tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"a kernel")
    (tmp_path / "disk.qcow2").write_bytes(b"QFI\xfb\0\0\0\x03".ljust(512, b"\0"))
    text = IMAGES.format(k=tmp_path / "vmlinuz", disk=tmp_path / "disk.qcow2")
    await apply_inventory(db, inventory(tmp_path, text))
    assert set(await rows(db, Image)) == {"k", "disk"}
    wrong = text.replace("format: aki", "format: raw")
    with pytest.raises(
        InvalidInput, match=r"properties.kernel_id: 'k' is a raw image; .* format aki"
    ):
        await apply_inventory(db, inventory(tmp_path, wrong, "wrong.yaml"))
    missing = text.replace("kernel_id: k", "kernel_id: nope")
    with pytest.raises(InvalidInput, match="'nope' is not in the inventory"):
        await apply_inventory(db, inventory(tmp_path, missing, "missing.yaml"))


async def test_images_made_with_the_cli_survive_an_apply_and_url_checksums_are_kept(
    db: Database, tmp_path: Path
) -> None:
    async with db.session() as session:
        session.add(Image(name="mine", source="https://example.invalid/x.img", managed_by="cli"))
    text = "images:\n  - name: web\n    source: https://example.invalid/web.img\n"
    await apply_inventory(db, inventory(tmp_path, text))
    async with db.session() as session:
        web = (await session.exec(select(Image).where(Image.name == "web"))).one()
        web.sha256, web.size = "a" * 64, 10  # what the first host's fetch recorded
        session.add(web)
    await apply_inventory(db, inventory(tmp_path, text))  # the same file again
    images = await rows(db, Image)
    assert set(images) == {"mine", "web"}
    assert images["web"].sha256 == "a" * 64  # not forgotten
    moved = text.replace("web.img", "web2.img")
    await apply_inventory(db, inventory(tmp_path, moved, "moved.yaml"))
    assert (await rows(db, Image))["web"].sha256 is None  # learnt for the old URL only
