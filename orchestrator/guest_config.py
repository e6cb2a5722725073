"""Everything a build job carries about the guest: flavor, images, NICs, NoCloud seed.

Read from the DB in one place so a first build, a reschedule and (later) a rebuild or
evacuation give the guest exactly the same identity, addresses and user data.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from orchestrator import cloudinit
from orchestrator.db.models import Flavor, Image, Instance, Volume, VolumeStatus
from orchestrator.errors import HerdError
from orchestrator.networking import PortView, ports_of

KERNEL_PROPERTY = "kernel_id"
RAMDISK_PROPERTY = "ramdisk_id"
CMDLINE_PROPERTY = "os_command_line"
DEFAULT_CMDLINE = "console=ttyS0"
ROOT_DEVICE = "vda"  # a server booted from a volume has it attached as vda
BOOT_VOLUME = "boot_volume"  # in its request spec: {"size_gb", "delete_on_termination"}


@dataclass(frozen=True)
class GuestConfig:
    image: Image
    kernel: Image | None
    ramdisk: Image | None
    flavor: dict[str, Any]
    ports: list[PortView]
    documents: dict[str, str]  # the NoCloud files; the ISO is made off the event loop
    # The volumes attached to it: a rebuild or a move defines the domain with them.
    volumes: tuple[Volume, ...] = ()
    # Booted from a volume: that volume is its vda (attached as device vda).
    root_volume: Volume | None = None

    @property
    def images(self) -> list[Image]:
        """Every image the host must have cached before the build (not the image of a
        server booted from a volume: the volume holds its disk already)."""
        image = self.image if self.root_volume is None else None
        return [i for i in (image, self.kernel, self.ramdisk) if i is not None]

    def build_args(
        self, instance: Instance, domain_type: str, seed: bytes, volume_dir: str | None = None
    ) -> dict[str, Any]:
        """The build job's arguments; ``volume_dir``: where the building host keeps
        volumes (its inventory's storage path; None: its agent_dir's)."""
        image = self.image
        args: dict[str, Any] = {
            "instance": {
                "uuid": instance.uuid,
                "name": instance.name,
                "hostname": instance.hostname or instance.name,
            },
            "flavor": self.flavor,
            "image": {
                "name": image.name,
                "sha256": image.sha256,
                "format": image.format,
                "properties": image.properties,
            },
            "domain_type": domain_type,
            "nics": [p.to_agent() for p in self.ports],
            "seed": base64.b64encode(seed).decode("ascii"),
        }
        if self.kernel is not None:
            args["boot"] = {
                "kernel": self.kernel.sha256,
                "ramdisk": self.ramdisk.sha256 if self.ramdisk else None,
                "cmdline": image.properties.get(CMDLINE_PROPERTY, DEFAULT_CMDLINE),
            }
        if self.root_volume is not None:
            root = self.root_volume
            args["root_volume"] = {"volume": root.uuid, "format": root.format} | (
                {"dir": volume_dir} if volume_dir else {}
            )
        if self.volumes:
            args["volumes"] = [
                {"volume": v.uuid, "format": v.format, "device": v.device}
                | ({"dir": volume_dir} if volume_dir else {})
                for v in self.volumes
            ]
        return args


async def _image_named(db: AsyncSession, name: str, owner: Image, key: str) -> Image:
    row = (await db.exec(select(Image).where(Image.name == name))).first()
    if row is None:
        raise HerdError(f"image {owner.name!r}: its {key} {name!r} does not exist")
    return row


async def boot_images(db: AsyncSession, image: Image) -> tuple[Image | None, Image | None]:
    """The kernel and ramdisk a direct-kernel-boot image names (None, None: it boots
    from its disk)."""
    kernel = ramdisk = None
    if KERNEL_PROPERTY in image.properties:
        kernel = await _image_named(db, image.properties[KERNEL_PROPERTY], image, KERNEL_PROPERTY)
        if RAMDISK_PROPERTY in image.properties:
            ramdisk = await _image_named(
                db, image.properties[RAMDISK_PROPERTY], image, RAMDISK_PROPERTY
            )
    return kernel, ramdisk


async def load_guest_config(db: AsyncSession, instance: Instance) -> GuestConfig:
    image = await db.get(Image, instance.image_id) if instance.image_id else None
    if image is None:
        raise HerdError(f"image {instance.image_name!r} no longer exists")
    flavor = (await db.exec(select(Flavor).where(Flavor.name == instance.flavor_name))).first()
    kernel, ramdisk = await boot_images(db, image)
    ports = await ports_of(db, instance.uuid)
    volumes = (
        await db.exec(
            select(Volume)
            .where(Volume.instance_uuid == instance.uuid, Volume.status == VolumeStatus.IN_USE)
            .order_by(col(Volume.device))
        )
    ).all()
    documents = cloudinit.render(
        cloudinit.SeedInstance(instance.uuid, instance.hostname or instance.name),
        ports,
        [instance.key_data] if instance.key_data else [],
        instance.user_data,
    )
    return GuestConfig(
        image=image,
        kernel=kernel,
        ramdisk=ramdisk,
        flavor={
            "name": instance.flavor_name,
            "vcpus": instance.vcpus,
            "ram_mb": instance.ram_mb,
            "disk_gb": instance.disk_gb,
            "extra_specs": dict(flavor.extra_specs) if flavor else {},
        },
        ports=ports,
        documents=documents,
        volumes=tuple(v for v in volumes if v.device != ROOT_DEVICE),
        root_volume=next((v for v in volumes if v.device == ROOT_DEVICE), None),
    )
