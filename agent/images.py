"""The image cache: base images by sha256 under ``<state_dir>/images/<sha256>``.

Keyed by content, not name, so a renamed or re-uploaded image never changes a disk
that uses it. Before a file becomes visible under its final name its hash is checked
and its content inspected (agent/image_format.py, then ``qemu-img info`` with the
declared format): a mismatch, a backing file, an external data file or a format other
than the declared one is refused and the file deleted, so nothing unchecked is ever
cached. Every copy is bounded by the host's maximum image size.

Cached files are 0600 root: an image may come from a file only root could read, and
must not become world-readable by being cached. QEMU still reads them, because
libvirt's DAC driver (``dynamic_ownership``, on by default, and which herd already
needs for QEMU to write its overlay disks) gives each guest's QEMU user the files of
that guest, its backing images included, when the guest starts. Directories stay
0755 so that QEMU can traverse them. A non-root agent's files are 0640 instead, so
that it can read an image a running guest holds through group kvm
(fsutil.guest_file_mode).
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

from agent import confine, image_format, proc
from agent.errors import AgentError, BadRequest, CommandError
from agent.fsutil import (
    DIR_MODE,
    atomic_write_bytes,
    ensure_dir,
    flocked,
    guest_file_mode,
    read_json,
    tmp_name,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SHA_RE = re.compile(r"[0-9a-f]{64}")  # with fullmatch: `$` lets "\n" through
DOWNLOAD_TIMEOUT = 60.0  # per read, not for the whole transfer
USES_FILE = "images.json"  # in each instance directory: the cached images it uses
DEFAULT_MAX_IMAGE_BYTES = 64 << 30
QEMU_IMG_INFO_TIMEOUT = 60.0
# Nova's limits for qemu-img on untrusted images: a crafted header must not make it
# eat the host's memory or CPU (OSSA-2016-003).
QEMU_IMG_LIMITS = ("--as=1073741824", "--cpu=30")


class FetchError(AgentError):
    """A download, copy or upload failed, or what arrived is not what was promised."""

    type = "ImageError"


@dataclass(frozen=True)
class ImagePolicy:
    """What the inventory allows this host: where ``host://`` images may be read
    (none: host paths are refused), and how large any image may be."""

    source_dirs: Tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES


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


def incoming_dir(state_dir: Path) -> Path:
    """Where uploads and fetches land before they are checked: the only place
    ``image_commit`` takes a file from."""
    return ensure_dir(images_dir(state_dir) / "incoming", DIR_MODE)


def incoming_path(state_dir: Path) -> Path:
    return incoming_dir(state_dir) / f"fetch-{secrets.token_hex(8)}.part"


def too_large(what: str, limit: int) -> FetchError:
    return FetchError(
        f"{what} is larger than this host's maximum image size ({limit} bytes, "
        "the inventory's max_image_gb); the image was discarded"
    )


def _copy_hashing(reader: BinaryIO, target: Path, limit: int, what: str) -> Tuple[str, int]:
    """Copy at most ``limit`` bytes (one more is refused: /dev/zero never ends)."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, guest_file_mode())
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: reader.read(_CHUNK), b""):
            size += len(chunk)
            if size > limit:
                raise too_large(what, limit)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def qemu_img_info(path: Path, fmt: str) -> Dict[str, Any]:
    """``qemu-img info`` with the format given, never probed, and without opening a
    backing chain (it is not asked for); under Nova's resource limits."""
    argv = ["qemu-img", "info", "--output=json", "-f", fmt, str(path)]
    if shutil.which("prlimit"):
        argv = ["prlimit", *QEMU_IMG_LIMITS, *argv]
    info = json.loads(proc.run(argv, QEMU_IMG_INFO_TIMEOUT, what="qemu-img info"))
    if not isinstance(info, dict):
        raise CommandError("qemu-img info: unexpected output")
    return info


def inspect(path: Path, declared: str, what: str, *, backing_allowed: bool = False) -> None:
    """Refuse (``FetchError``) a file that is not safely what it is declared to be:
    first its header by our own reading, then qemu-img's, told the declared format."""
    try:
        with open(path, "rb") as reader:
            image_format.check_head(
                image_format.read_head(reader), declared, backing_allowed=backing_allowed
            )
        info = qemu_img_info(path, image_format.qemu_format(declared))
        image_format.check_qemu_info(info, declared, backing_allowed=backing_allowed)
    except image_format.UnsafeImage as exc:
        raise FetchError(f"{what} was refused: {exc}") from None
    except CommandError as exc:
        raise FetchError(f"{what} was refused: not a readable {declared} image ({exc})") from None


def check_cached(path: Path, declared: str, what: str, *, backing_allowed: bool = False) -> None:
    """The header check alone, on a file a build is about to use: a cached base (a
    cache filled before images were inspected, or by hand, must not reach a guest
    either), or a disk carried from another host."""
    try:
        with open(path, "rb") as reader:
            image_format.check_head(
                image_format.read_head(reader), declared, backing_allowed=backing_allowed
            )
    except image_format.UnsafeImage as exc:
        raise FetchError(f"{what} was refused: {exc}") from None


def fetch(
    state_dir: Path,
    source: str,
    sha256: Optional[str],
    declared: str,
    policy: ImagePolicy,
) -> Tuple[CachedImage, str]:
    """Download an http(s) URL, or copy a file already on this host (``/path``, in one
    of ``policy.source_dirs``), into the cache, as a ``declared`` image. With
    ``sha256`` the bytes must match it; without, the digest of what arrived is
    returned for the orchestrator to record (trust on first use). A short read (fewer
    bytes than Content-Length), more than ``policy.max_bytes``, a wrong digest or an
    unsafe image (see ``inspect``) is refused and the partial file removed: nothing
    half-downloaded or unchecked is ever used."""
    if sha256 is not None:
        cached = status(state_dir, sha256)
        if cached.present:
            return cached, sha256
    part = incoming_path(state_dir)
    try:
        if source.startswith(("http://", "https://")):
            digest, size = _download(source, part, policy.max_bytes)
        elif source.startswith("/"):
            try:
                reader, _ = confine.open_source(source, policy.source_dirs)
                with reader:
                    digest, size = _copy_hashing(reader, part, policy.max_bytes, source)
            except OSError as exc:
                raise FetchError(f"cannot read {source} on this host: {exc.strerror}") from None
        else:
            raise BadRequest("source must be an http(s) URL or an absolute path on the host")
        if sha256 is not None and digest != sha256:
            raise FetchError(
                f"{source}: sha256 is {digest}, expected {sha256}; the image was discarded"
            )
        inspect(part, declared, source)
        log.info("fetched %s (%d bytes, sha256 %s)", source, size, digest)
        return _install(state_dir, digest, part), digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


def _download(url: str, part: Path, limit: int) -> Tuple[str, int]:
    # Imported here: urllib.request pulls in ssl and http, ~30 ms that every agent
    # start (each reconcile survey) would otherwise pay for a rare download.
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "herd-agent"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) > limit:
                raise too_large(url, limit)
            digest, size = _copy_hashing(response, part, limit, url)
    except FetchError:
        raise
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
    """Move an already verified file into the cache (if it is there, drop the file)."""
    final = image_path(state_dir, sha256)
    if final.exists():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(verified)
        return status(state_dir, sha256)
    staged = tmp_name(final)
    try:
        os.replace(verified, staged)
        os.chmod(staged, guest_file_mode())
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
        # PermissionError: a non-root agent may not set the times of an image a running
        # guest holds (libvirt made QEMU's user its owner); that guest's images.json
        # already keeps it from prune, and its times move on the next use after.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.utime(image_path(inst_dir.parent.parent, digest), (now, now))


def unreadable(path: Path, exc: BaseException) -> Dict[str, str]:
    """How a file the agent could not read is reported: skipped, not fatal."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return {"file": str(path), "error": reason.splitlines()[0] if reason else type(exc).__name__}


def _uses(state_dir: Path) -> Tuple[Dict[str, List[str]], List[Dict[str, str]]]:
    """Cached image digest -> the instance UUIDs whose disks use it; and every
    ``images.json`` that could not be read (a crash, an operator's editor)."""
    found: Dict[str, List[str]] = {}
    problems: List[Dict[str, str]] = []
    for uses in sorted((state_dir / "instances").glob(f"*/{USES_FILE}")):
        try:
            data = read_json(uses) or {}
            digests = data.get("images", []) if isinstance(data, dict) else None
            if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
                raise ValueError("not a list of image digests")
        except (OSError, ValueError) as exc:
            problems.append(unreadable(uses, exc))
            continue
        for digest in digests:
            found.setdefault(digest, []).append(uses.parent.name)
    return found, problems


def users(state_dir: Path) -> Dict[str, List[str]]:
    """Cached image digest -> the instance UUIDs whose disks use it."""
    return _uses(state_dir)[0]


def list_cached(state_dir: Path) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """Every cached image with the instances using it; and the files that could not
    be read, which the answer reports instead of failing whole."""
    in_use, problems = _uses(state_dir)
    entries = []
    for path in sorted(images_dir(state_dir).iterdir()):
        if not _SHA_RE.fullmatch(path.name):
            continue
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # pruned meanwhile
        if not stat.S_ISREG(st.st_mode):
            continue
        entries.append(
            {
                "sha256": path.name,
                "size": st.st_size,
                "last_used": st.st_mtime,
                "instances": in_use.get(path.name, []),
            }
        )
    return entries, problems


def remove(state_dir: Path, sha256: str) -> bool:
    """Remove a cached image no instance uses; False if it was not cached.

    While some instance's ``images.json`` cannot be read nothing is removed: that
    instance may be the one using it (never prune a base an overlay still needs).
    """
    with cache_lock(state_dir):
        found, problems = _uses(state_dir)
        using = found.get(sha256)
        if using:
            raise BadRequest(f"image {sha256} is used by instance(s) {', '.join(using[:5])}")
        if problems:
            raise BadRequest(
                f"not removing image {sha256}: cannot tell which images an instance uses, "
                f"{problems[0]['file']} is unreadable ({problems[0]['error']})"
            )
        try:
            os.unlink(image_path(state_dir, sha256))
        except FileNotFoundError:
            return False
        return True


def commit(
    state_dir: Path, sha256: str, upload: Path, declared: str, policy: ImagePolicy
) -> CachedImage:
    """Verify ``upload`` (a file in ``<state_dir>/images/incoming``) against ``sha256``,
    inspect it as a ``declared`` image, and move it into the cache.

    Anything wrong with the file (too large, another digest, unsafe) is refused and the
    upload removed; a path outside the incoming directory is refused and left alone.
    Idempotent: when the image is already cached the upload is just removed.
    """
    ensure_dir(images_dir(state_dir), DIR_MODE)
    upload = confine.entry_in(str(upload), [incoming_dir(state_dir)], "upload")
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
    try:
        if st.st_size > policy.max_bytes:
            raise too_large(f"upload {upload}", policy.max_bytes)
        actual = file_sha256(upload)
        if actual != sha256:
            raise BadRequest(f"upload {upload}: sha256 is {actual}, expected {sha256}; removed it")
        inspect(upload, declared, f"upload {upload}")
    except AgentError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload)
        raise
    return _install(state_dir, sha256, upload)
