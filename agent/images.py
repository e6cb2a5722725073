"""The image cache: base images by sha256 under ``<state_dir>/images/<sha256>``.

Keyed by content, not name, so a renamed or re-uploaded image never changes a disk
that uses it. The hash is checked once, on commit, before the file becomes visible
under its final name; a mismatch is refused and the upload deleted. Files are 0644
and directories 0755 because QEMU runs as libvirt-qemu and must read the base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple

from agent.errors import AgentError, BadRequest
from agent.fsutil import (
    DIR_MODE,
    FILE_MODE,
    atomic_write_bytes,
    ensure_dir,
    flocked,
    read_json,
    tmp_name,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SHA_RE = re.compile(r"[0-9a-f]{64}")  # with fullmatch: `$` lets "\n" through
DOWNLOAD_TIMEOUT = 60.0  # per read, not for the whole transfer
USES_FILE = "images.json"  # in each instance directory: the cached images it uses


class FetchError(AgentError):
    """A download or copy failed, or what arrived is not what was promised."""

    type = "ImageError"


@dataclass(frozen=True)
class CachedImage:
    path: Path
    size: Optional[int]

    @property
    def present(self) -> bool:
        return self.size is not None


def images_dir(state_dir: Path) -> Path:
    return state_dir / "images"


def image_path(state_dir: Path, sha256: str) -> Path:
    return images_dir(state_dir) / sha256


def status(state_dir: Path, sha256: str) -> CachedImage:
    path = image_path(state_dir, sha256)
    try:
        return CachedImage(path, path.stat().st_size)
    except FileNotFoundError:
        return CachedImage(path, None)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def incoming_path(state_dir: Path) -> Path:
    incoming = ensure_dir(images_dir(state_dir) / "incoming", DIR_MODE)
    return incoming / f"fetch-{secrets.token_hex(8)}.part"


def _copy_hashing(reader: BinaryIO, target: Path) -> Tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(target, "wb") as out:
        for chunk in iter(lambda: reader.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fetch(state_dir: Path, source: str, sha256: Optional[str]) -> Tuple[CachedImage, str]:
    """Download an http(s) URL, or copy a file already on this host (``/path``), into
    the cache. With ``sha256`` the bytes must match it; without, the digest of what
    arrived is returned for the orchestrator to record (trust on first use). A short
    read (fewer bytes than Content-Length) or a wrong digest is refused and the partial
    file removed: nothing half-downloaded is ever used."""
    if sha256 is not None:
        cached = status(state_dir, sha256)
        if cached.present:
            return cached, sha256
    part = incoming_path(state_dir)
    try:
        if source.startswith(("http://", "https://")):
            digest, size = _download(source, part)
        elif source.startswith("/"):
            try:
                with open(source, "rb") as reader:
                    digest, size = _copy_hashing(reader, part)
            except OSError as exc:
                raise FetchError(f"cannot read {source} on this host: {exc.strerror}") from None
        else:
            raise BadRequest("source must be an http(s) URL or an absolute path on the host")
        if sha256 is not None and digest != sha256:
            raise FetchError(
                f"{source}: sha256 is {digest}, expected {sha256}; the image was discarded"
            )
        log.info("fetched %s (%d bytes, sha256 %s)", source, size, digest)
        return _install(state_dir, digest, part), digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


def _download(url: str, part: Path) -> Tuple[str, int]:
    # Imported here: urllib.request pulls in ssl and http, ~30 ms that every agent
    # start (each reconcile survey) would otherwise pay for a rare download.
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "herd-agent"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
            expected = response.headers.get("Content-Length")
            digest, size = _copy_hashing(response, part)
    except http.client.IncompleteRead as exc:
        raise FetchError(
            f"{url}: download truncated: the connection closed {exc.expected} bytes short; "
            "the image was discarded"
        ) from None
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"{url}: download failed: {reason}") from None
    except Exception as exc:  # http.client.IncompleteRead and friends
        raise FetchError(f"{url}: download failed: {exc!r}") from None
    if expected is not None and expected.isdigit() and int(expected) != size:
        raise FetchError(
            f"{url}: download truncated: got {size} of {expected} bytes; the image was discarded"
        )
    return digest, size


def _install(state_dir: Path, sha256: str, verified: Path) -> CachedImage:
    """Move an already verified file into the cache (a no-op if it is there)."""
    final = image_path(state_dir, sha256)
    if final.exists():
        return status(state_dir, sha256)
    staged = tmp_name(final)
    try:
        os.replace(verified, staged)
        os.chmod(staged, FILE_MODE)
        os.replace(staged, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
    return status(state_dir, sha256)


CACHE_LOCK_TIMEOUT = 60.0


@contextlib.contextmanager
def cache_lock(state_dir: Path) -> Iterator[None]:
    """Held while a build claims cached images and while prune removes one, so an
    image is never removed between a build finding it and the build recording its use."""
    lock = ensure_dir(images_dir(state_dir)) / ".lock"
    with flocked(lock, CACHE_LOCK_TIMEOUT, "the image cache"):
        yield


def record_use(inst_dir: Path, digests: Iterable[str]) -> None:
    """Note which cached images an instance's files come from, and mark them used now:
    what ``list_cached`` reports as in use and last used, and prune never removes."""
    digests = list(digests)
    atomic_write_bytes(inst_dir / USES_FILE, json.dumps({"images": digests}).encode())
    now = time.time()
    for digest in digests:
        with contextlib.suppress(FileNotFoundError):
            os.utime(image_path(inst_dir.parent.parent, digest), (now, now))


def users(state_dir: Path) -> Dict[str, List[str]]:
    """Cached image digest -> the instance UUIDs whose disks use it."""
    found: Dict[str, List[str]] = {}
    for uses in sorted((state_dir / "instances").glob(f"*/{USES_FILE}")):
        data = read_json(uses) or {}
        for digest in data.get("images", []):
            found.setdefault(digest, []).append(uses.parent.name)
    return found


def list_cached(state_dir: Path) -> List[Dict[str, Any]]:
    in_use = users(state_dir)
    entries = []
    for path in sorted(images_dir(state_dir).iterdir()):
        if not _SHA_RE.fullmatch(path.name) or not path.is_file():
            continue
        st = path.stat()
        entries.append(
            {
                "sha256": path.name,
                "size": st.st_size,
                "last_used": st.st_mtime,
                "instances": in_use.get(path.name, []),
            }
        )
    return entries


def remove(state_dir: Path, sha256: str) -> bool:
    """Remove a cached image no instance uses; False if it was not cached."""
    with cache_lock(state_dir):
        using = users(state_dir).get(sha256)
        if using:
            raise BadRequest(f"image {sha256} is used by instance(s) {', '.join(using[:5])}")
        try:
            os.unlink(image_path(state_dir, sha256))
        except FileNotFoundError:
            return False
        return True


def commit(state_dir: Path, sha256: str, upload: Path) -> CachedImage:
    """Verify ``upload`` against ``sha256`` and move it into the cache.

    Idempotent: when the image is already cached the upload is just removed.
    """
    cache = ensure_dir(images_dir(state_dir), DIR_MODE)
    final = image_path(state_dir, sha256)
    try:
        st = os.lstat(upload)
    except FileNotFoundError:
        cached = status(state_dir, sha256)
        if cached.present:
            return cached  # a repeated commit whose upload was already moved
        raise BadRequest(f"upload {upload} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        # Never chmod or move through a symlink: it could point anywhere.
        raise BadRequest(f"upload {upload} is not a regular file")
    cached = status(state_dir, sha256)
    if cached.present:
        os.unlink(upload)
        return cached
    actual = file_sha256(upload)
    if actual != sha256:
        os.unlink(upload)
        raise BadRequest(f"upload {upload}: sha256 is {actual}, expected {sha256}; removed it")
    staged = tmp_name(final)
    try:
        if os.stat(cache).st_dev == st.st_dev:
            os.replace(upload, staged)
        else:
            shutil.copyfile(upload, staged)
            os.unlink(upload)
        os.chmod(staged, FILE_MODE)
        os.replace(staged, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
    return status(state_dir, sha256)
