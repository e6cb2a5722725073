"""Images: `herd image create/list/show/delete` and the hosts' image caches (`herd image cache`).

Images made here are ``managed_by="cli"``: `herd inventory apply` leaves them alone.
Cache entries are keyed by sha256 on each host; this module maps them back to image
names and decides what is safe to prune: only entries no instance on that host uses
(the agent refuses the rest anyway) and, with ``older_than``, not used lately.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlmodel import select

from orchestrator.conductor.hosts import target_of
from orchestrator.db.duplicates import duplicates_conflict
from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Image, Instance, utcnow
from orchestrator.errors import Conflict, HerdError, InvalidInput, NotFound
from orchestrator.image_delivery import unsafe_local_image
from orchestrator.inventory.apply import IMAGE_REFERENCES, servers_using_image
from orchestrator.inventory.models import ImageSpec, validation_context
from orchestrator.inventory.problems import first_validation_problem
from orchestrator.local_files import sha256_of

if TYPE_CHECKING:
    # The build manager and its tasks: only the cache commands reach a host, through the
    # conductor they are handed, so `image list/show/create/delete` never load it.
    from orchestrator.conductor.manager import Conductor


async def create_image(db: Database, values: dict[str, Any]) -> Image:
    """Validate like an inventory entry (same rules, same messages), then store it."""
    try:
        spec = ImageSpec.model_validate(values, context=validation_context(Path.cwd()))
    except ValidationError as exc:
        raise InvalidInput(f"image {first_validation_problem(exc)}") from None
    sha256, size = spec.sha256, None
    if spec.source_kind == "local":
        path = Path(spec.source)
        if not path.is_file():
            raise InvalidInput(f"--file {path}: no such file")
        unsafe = await asyncio.to_thread(unsafe_local_image, path, spec.format)
        if unsafe:
            raise InvalidInput(f"--file {path} was refused: {unsafe}")
        sha256 = await asyncio.to_thread(sha256_of, path)
        if spec.sha256 and spec.sha256 != sha256:
            raise InvalidInput(f"--file {path} has sha256 {sha256}, not {spec.sha256}")
        size = path.stat().st_size
    taken = f"image {spec.name!r} already exists"
    async with duplicates_conflict("images", taken), db.session() as session:
        if (await session.exec(select(Image).where(Image.name == spec.name))).first():
            raise Conflict(taken)
        for key, wanted in IMAGE_REFERENCES.items():
            ref = spec.properties.get(key)
            if ref is None:
                continue
            target = (await session.exec(select(Image).where(Image.name == ref))).first()
            if target is None or target.format != wanted:
                raise InvalidInput(
                    f"--property {key}={ref}: it must name an existing image of format {wanted}"
                )
        row = Image(
            name=spec.name,
            source=spec.source,
            format=spec.format,
            sha256=sha256,
            size=size,
            min_ram_mb=spec.min_ram_mb,
            min_disk_gb=spec.min_disk_gb,
            properties=dict(spec.properties),
            managed_by="cli",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(row)
    return row


async def get_image(db: Database, name: str) -> Image:
    async with db.read() as session:
        row = (await session.exec(select(Image).where(Image.name == name))).first()
        if row is None:
            known = ", ".join(sorted((await session.exec(select(Image.name))).all())) or "none"
            raise NotFound(f"image {name!r} not found (known: {known})")
        return row


async def delete_image(db: Database, name: str) -> None:
    async with db.session() as session:
        row = (await session.exec(select(Image).where(Image.name == name))).first()
        if row is None:
            raise NotFound(f"image {name!r} not found")
        if row.managed_by == "inventory":
            raise Conflict(
                f"image {name!r} comes from the inventory: remove it there and "
                "run `herd inventory apply`"
            )
        users = await servers_using_image(session, row.id)
        if users:
            raise Conflict(
                f"image {name!r} is used by servers {', '.join(users[:5])}; delete them first"
            )
        referrers = [
            i.name
            for i in (await session.exec(select(Image))).all()
            if name in (i.properties.get(k) for k in IMAGE_REFERENCES)
        ]
        if referrers:
            raise Conflict(f"image {name!r} is the kernel or ramdisk of {', '.join(referrers)}")
        # Deleted servers keep their history but no longer point at the image.
        for instance in (
            await session.exec(select(Instance).where(Instance.image_id == row.id))
        ).all():
            instance.image_id = None
            session.add(instance)
        await session.flush()
        await session.delete(row)


@dataclass
class CacheEntry:
    host: str
    sha256: str
    size: int
    last_used: float
    instances: list[str]
    images: list[str]  # names in the DB with this checksum ([] if none any more)
    # The only copy of an image made from a server (its source is this host's cache):
    # never pruned.
    pinned: bool = False

    @property
    def in_use(self) -> bool:
        return bool(self.instances)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "in_use": self.in_use}


@dataclass
class CacheSurvey:
    entries: list[CacheEntry] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    # host -> files it could not read (an instance's images.json): its listing is
    # complete, but which images those instances use is not known.
    unreadable: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return [
            f"host {host}: skipped the unreadable {p.get('file')} ({p.get('error')}); "
            "nothing is pruned there until it is repaired or removed"
            for host, problems in sorted(self.unreadable.items())
            for p in problems
        ]


async def _hosts(db: Database, names: list[str] | None) -> list[Host]:
    async with db.read() as session:
        hosts = list((await session.exec(select(Host).order_by(Host.name))).all())
    if names:
        known = {h.name for h in hosts}
        missing = [n for n in names if n not in known]
        if missing:
            raise NotFound(f"host {missing[0]!r} not found")
        hosts = [h for h in hosts if h.name in names]
    return hosts


async def survey_caches(
    db: Database, conductor: Conductor, host_names: list[str] | None = None
) -> CacheSurvey:
    """Every host's cache, concurrently; a host that does not answer is listed apart."""
    hosts = await _hosts(db, host_names)
    async with db.read() as session:
        by_digest: dict[str, list[str]] = {}
        pinned: set[tuple[str, str]] = set()
        for image in (await session.exec(select(Image))).all():
            if image.sha256:
                by_digest.setdefault(image.sha256, []).append(image.name)
            if image.sha256 and image.source.startswith("cache://"):
                pinned.add((image.source.removeprefix("cache://"), image.sha256))
    survey = CacheSurvey()

    async def one(host: Host) -> None:
        try:
            result = await conductor.agent.image_list(target_of(host), timeout=60)
        except HerdError as exc:
            survey.unreachable[host.name] = str(exc)
            return
        if result.get("unreadable"):
            survey.unreadable[host.name] = list(result["unreadable"])
        for item in result["images"]:
            survey.entries.append(
                CacheEntry(
                    host=host.name,
                    sha256=item["sha256"],
                    size=item["size"],
                    last_used=item["last_used"],
                    instances=item["instances"],
                    images=sorted(by_digest.get(item["sha256"], [])),
                    pinned=(host.name, item["sha256"]) in pinned,
                )
            )

    await asyncio.gather(*(one(h) for h in hosts))
    survey.entries.sort(key=lambda e: (e.host, e.images, e.sha256))
    return survey


async def prune_caches(
    db: Database,
    conductor: Conductor,
    host_names: list[str] | None,
    older_than: float,
    dry_run: bool,
) -> tuple[list[CacheEntry], CacheSurvey]:
    """Remove cache entries no instance uses and not used for ``older_than`` seconds."""
    survey = await survey_caches(db, conductor, host_names)
    now = time.time()
    doomed = [
        e
        for e in survey.entries
        if not e.in_use
        and not e.pinned
        and now - e.last_used >= older_than
        and e.host not in survey.unreadable
    ]
    if dry_run:
        return doomed, survey
    hosts = {h.name: h for h in await _hosts(db, host_names)}

    async def remove(entry: CacheEntry) -> CacheEntry | None:
        try:
            await conductor.agent.image_remove(target_of(hosts[entry.host]), entry.sha256)
        except HerdError as exc:  # in use since the survey, or the host went away
            survey.unreachable.setdefault(entry.host, str(exc))
            return None
        return entry

    removed = await asyncio.gather(*(remove(e) for e in doomed))
    return [e for e in removed if e is not None], survey


async def list_images(db: Database) -> list[Image]:
    async with db.read() as session:
        return list((await session.exec(select(Image).order_by(Image.name))).all())
