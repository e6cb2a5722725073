"""Getting an image into a host's cache: pushed from here, downloaded, or copied there.

The cache on each host is keyed by sha256, so "is it there?" is one cheap call and a
second server from the same image on the same host transfers nothing. The three
sources of the inventory map to two agent calls: a local file is uploaded over SFTP
and committed (the agent re-hashes and inspects it); a URL or a host path is fetched
by the agent itself (``image_fetch``), which inspects it too: both are told the
image's declared format and refuse anything else (a backing file, an external data
file, another format), so nothing unsafe reaches a host's cache. An image without a
recorded checksum (a URL given without one) gets the digest of its first fetch, and
every later host is held to it.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import select

from agent import image_format
from orchestrator.conductor.hosts import target_of
from orchestrator.db.engine import Database
from orchestrator.db.models import Host, Image, utcnow
from orchestrator.errors import AgentError, HerdError
from orchestrator.rpc.agent_api import AgentAPI
from orchestrator.rpc.pool import AgentPool
from orchestrator.rpc.ssh import HostTarget

FETCH_TIMEOUT = 1800.0
COMMIT_TIMEOUT = 600.0


@dataclass(frozen=True)
class Delivery:
    """What getting one image to one host took: for the instance's action events."""

    image: str
    how: str  # cached | pushed | fetched
    bytes_sent: int = 0

    def describe(self, host: str) -> str:
        if self.how == "cached":
            return f"{self.image}: already cached on {host}, nothing transferred"
        if self.how == "pushed":
            return f"{self.image}: pushed {self.bytes_sent} bytes to {host}"
        return f"{self.image}: fetched by {host} from its source"


def unsafe_local_image(path: Path, declared: str) -> str | None:
    """Why a file on this machine must not be registered as a ``declared`` image, or
    None. The same inspector the agents run (agent/image_format.py), so a bad file is
    refused before it is stored rather than on the first host it reaches."""
    try:
        with path.open("rb") as reader:
            head = image_format.read_head(reader)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    try:
        image_format.check_head(head, declared)
    except image_format.UnsafeImage as exc:
        return str(exc)
    return None


def source_kind(source: str) -> str:
    if source.startswith("host://"):
        return "host"
    if source.startswith("cache://"):
        return "cache"  # an image made from a server: in that host's cache only
    if source.startswith(("http://", "https://")):
        return "url"
    return "local"


class ImageDelivery:
    """Puts images in hosts' caches, once per (host, image) however many servers wait."""

    def __init__(self, db: Database, pool: AgentPool) -> None:
        self.db = db
        self.pool = pool
        self.agent = AgentAPI(pool)
        self._tasks: dict[tuple[str, str], asyncio.Task[Delivery]] = {}

    async def ensure(self, target: HostTarget, image: Image) -> Delivery:
        key = (target.name, image.sha256 or image.source)
        task = self._tasks.get(key)
        if task is None or (task.done() and task.exception() is not None):
            task = asyncio.ensure_future(self._deliver(target, image))
            self._tasks[key] = task
        return await asyncio.shield(task)

    async def _deliver(self, target: HostTarget, image: Image) -> Delivery:
        kind = source_kind(image.source)
        if image.sha256:
            status = await self.agent.image_status(target, image.sha256)
            if status.get("present"):
                return Delivery(image.name, "cached")
        elif kind == "local":
            raise HerdError(f"image {image.name!r} has no checksum; re-apply the inventory")
        if kind == "local":
            return await self._push(target, image)
        if kind == "cache":
            return await self._relay(target, image)
        return await self._fetch(target, image, kind)

    async def _relay(self, target: HostTarget, image: Image) -> Delivery:
        """From the cache of the host the image was made on, through this machine (the
        hosts need not reach each other), then committed as a pushed image is."""
        source = await self._cache_host(image)
        cached = await self.agent.image_status(source, str(image.sha256))
        if not cached.get("present"):
            raise HerdError(
                f"image {image.name!r}: its only copy, in {source.name}'s image cache, is gone"
            )
        with tempfile.TemporaryDirectory(prefix="herd-image-") as tmp:
            local = Path(tmp) / "image"
            await (await self.pool.session(source)).download(cached["path"], local)
            return await self._push(target, image, local)

    async def _cache_host(self, image: Image) -> HostTarget:
        name = image.source.removeprefix("cache://")
        async with self.db.read() as db:
            host = (await db.exec(select(Host).where(Host.name == name))).first()
        if host is None:
            raise HerdError(f"image {image.name!r}: host {name}, whose cache holds it, is gone")
        return target_of(host)

    async def _push(self, target: HostTarget, image: Image, local: Path | None = None) -> Delivery:
        source = local or Path(image.source)
        if not source.is_file():
            raise HerdError(
                f"image {image.name!r}: source {image.source} is not a file on this machine"
            )
        session = await self.pool.session(target)
        remote = f"{target.agent_dir}/images/incoming/{image.sha256}.{secrets.token_hex(4)}.part"
        size = source.stat().st_size
        await session.upload(source, remote)
        try:
            await self.agent.image_commit(
                target, image.sha256, remote, image.format, timeout=COMMIT_TIMEOUT
            )
        except AgentError as exc:
            message = f"image {image.name!r} was refused by host {target.name}: {exc}"
            raise HerdError(message) from exc
        return Delivery(image.name, "pushed", size)

    async def _fetch(self, target: HostTarget, image: Image, kind: str) -> Delivery:
        source = image.source.removeprefix("host://") if kind == "host" else image.source
        try:
            result = await self.agent.image_fetch(
                target, source, image.sha256, image.format, timeout=FETCH_TIMEOUT
            )
        except AgentError as exc:
            message = f"image {image.name!r} could not be fetched by {target.name}: {exc}"
            raise HerdError(message) from exc
        if not image.sha256:
            await self._learn_checksum(image, result["sha256"], result.get("size"))
        return Delivery(image.name, "fetched")

    async def _learn_checksum(self, image: Image, sha256: str, size: int | None) -> None:
        """Trust on first use: record the digest, unless another fetch recorded a
        different one meanwhile (then the source changed under us: refuse)."""
        async with self.db.session() as db:
            row = await db.get(Image, image.id)
            if row is None:
                return
            if row.sha256 and row.sha256 != sha256:
                raise HerdError(
                    f"image {image.name!r}: {image.source} now has sha256 {sha256}, "
                    f"but {row.sha256} was recorded; its source changed"
                )
            row.sha256, row.size, row.updated_at = sha256, size, utcnow()
            db.add(row)
        image.sha256 = sha256
