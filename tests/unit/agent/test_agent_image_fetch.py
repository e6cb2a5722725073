"""The host's image cache: fetch by URL or host path, verify, confine, list, prune safely."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_testlib import needs_qemu_img

from agent import images
from agent.errors import BadRequest

DATA = b"qcow2 or not, these are the image's bytes\n" * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:100])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "image").write_bytes(DATA)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    """The one directory host:// images may come from in these tests."""
    path = tmp_path / "host-images"
    path.mkdir()
    return path


def fetch(state: Path, source: str, sha: str | None, allowed: Path | None = None, **policy):
    dirs = (str(allowed),) if allowed else ()
    return images.fetch(state, source, sha, "raw", images.ImagePolicy(dirs, **policy))


def leftovers(state: Path) -> list[str]:
    return [p.name for p in (state / "images" / "incoming").iterdir()]


def test_a_url_is_downloaded_verified_and_cached_once(state: Path, web: str) -> None:
    cached, digest = fetch(state, f"{web}/image", DIGEST)
    assert digest == DIGEST and cached.path.read_bytes() == DATA
    assert cached.path.stat().st_mode & 0o777 == 0o600
    inode = cached.path.stat().st_ino
    again, _ = fetch(state, f"{web}/missing-but-cached", DIGEST)
    assert again.path.stat().st_ino == inode  # cached: not even asked for


def test_without_a_checksum_the_digest_of_what_arrived_is_returned(state: Path, web: str) -> None:
    cached, digest = fetch(state, f"{web}/image", None)
    assert digest == DIGEST and cached.path.name == DIGEST


def test_a_wrong_digest_is_refused_and_nothing_is_kept(state: Path, web: str) -> None:
    with pytest.raises(images.FetchError, match=f"sha256 is {DIGEST}, expected {'0' * 64}"):
        fetch(state, f"{web}/image", "0" * 64)
    assert leftovers(state) == []
    assert not images.status(state, "0" * 64).present


def test_a_truncated_download_is_refused_and_nothing_is_kept(state: Path, web: str) -> None:
    with pytest.raises(images.FetchError, match="download truncated"):
        fetch(state, f"{web}/short", None)
    assert leftovers(state) == []
    assert not any(p.name == DIGEST for p in (state / "images").iterdir())


def test_http_errors_and_unreachable_servers_are_one_line(state: Path, web: str) -> None:
    with pytest.raises(images.FetchError, match="HTTP 404"):
        fetch(state, f"{web}/nope", None)
    with pytest.raises(images.FetchError, match="download failed"):
        fetch(state, "http://127.0.0.1:1/x", None)


def test_a_host_path_is_copied_so_later_changes_cannot_reach_disks(
    state: Path, allowed: Path
) -> None:
    source = allowed / "on-host.img"
    source.write_bytes(DATA)
    cached, digest = fetch(state, str(source), None, allowed)
    source.write_bytes(b"changed afterwards")
    assert digest == DIGEST and cached.path.read_bytes() == DATA
    with pytest.raises(images.FetchError, match=f"cannot read {allowed}/nonexistent"):
        fetch(state, f"{allowed}/nonexistent", None, allowed)
    with pytest.raises(BadRequest):
        fetch(state, "relative/path", None, allowed)


def test_a_private_host_file_stays_private_in_the_cache(state: Path, allowed: Path) -> None:
    source = allowed / "private.img"
    source.write_bytes(DATA)
    os.chmod(source, 0o600)
    cached, _ = fetch(state, str(source), None, allowed)
    assert cached.path.stat().st_mode & 0o777 == 0o600


def test_without_image_source_dirs_no_host_path_is_read(state: Path, allowed: Path) -> None:
    (allowed / "x").write_bytes(DATA)
    with pytest.raises(BadRequest, match="allows no host:// images"):
        fetch(state, str(allowed / "x"), None)
    assert leftovers(state) == []


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda allowed, tmp: str(tmp / "secret"), id="another-directory"),
        pytest.param(lambda allowed, tmp: f"{allowed}/../secret", id="dot-dot"),
        pytest.param(lambda allowed, tmp: str(allowed / "escape"), id="symlink-out"),
        pytest.param(
            lambda allowed, tmp: str(allowed / "linked-dir" / "secret"), id="symlinked-dir-out"
        ),
        pytest.param(lambda allowed, tmp: str(allowed), id="the-directory-itself"),
        pytest.param(lambda allowed, tmp: "/dev/zero", id="dev-zero"),
        pytest.param(lambda allowed, tmp: str(allowed) + "-sibling/secret", id="prefix-sibling"),
    ],
)
def test_a_host_path_outside_the_allowed_directories_is_refused(
    state: Path, allowed: Path, tmp_path: Path, source
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:$y$...\n")
    (allowed / "escape").symlink_to(secret)
    (allowed / "linked-dir").symlink_to(tmp_path)
    sibling = tmp_path / "host-images-sibling"
    sibling.mkdir()
    (sibling / "secret").write_bytes(b"x")
    with pytest.raises(BadRequest, match="is not under this host's image_source_dirs"):
        fetch(state, source(allowed, tmp_path), None, allowed)
    assert leftovers(state) == []


def test_a_symlink_within_the_allowed_directory_is_followed(state: Path, allowed: Path) -> None:
    (allowed / "v2.img").write_bytes(DATA)
    (allowed / "latest.img").symlink_to("v2.img")
    _, digest = fetch(state, str(allowed / "latest.img"), None, allowed)
    assert digest == DIGEST


def test_only_regular_files_are_read(state: Path, allowed: Path) -> None:
    """A FIFO (or /dev/zero linked in) would never end: refused without reading."""
    os.mkfifo(allowed / "fifo")
    with pytest.raises(BadRequest, match="fifo is not a regular file"):
        fetch(state, str(allowed / "fifo"), None, allowed)
    (allowed / "sub").mkdir()
    with pytest.raises(BadRequest, match="sub is not a regular file"):
        fetch(state, str(allowed / "sub"), None, allowed)
    assert leftovers(state) == []


def test_every_copy_stops_at_the_size_limit(state: Path, allowed: Path, web: str) -> None:
    (allowed / "big").write_bytes(DATA)
    for source in (str(allowed / "big"), f"{web}/image"):
        with pytest.raises(images.FetchError, match="larger than this host's maximum image"):
            fetch(state, source, None, allowed, max_bytes=len(DATA) - 1)
        assert leftovers(state) == []
    cached, _ = fetch(state, str(allowed / "big"), None, allowed, max_bytes=len(DATA))
    assert cached.present


@needs_qemu_img
def test_a_fetched_qcow2_with_a_backing_file_is_refused_and_nothing_is_kept(
    state: Path, allowed: Path, tmp_path: Path
) -> None:
    evil = allowed / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", str(evil)],
        check=True,
    )
    digest = images.file_sha256(evil)
    for declared in ("qcow2", "raw"):
        with pytest.raises(images.FetchError, match="was refused: "):
            images.fetch(state, str(evil), None, declared, images.ImagePolicy((str(allowed),)))
        assert leftovers(state) == []
        assert not images.status(state, digest).present


def test_an_image_in_use_is_listed_with_its_instances_and_never_removed(
    state: Path, allowed: Path
) -> None:
    source = allowed / "img"
    source.write_bytes(DATA)
    fetch(state, str(source), DIGEST, allowed)
    inst = state / "instances" / "0b7e6a52-6a43-4c2c-9d55-3a3b9a1b2c3d"
    inst.mkdir(parents=True)
    images.record_use(inst, [DIGEST])
    (entry,), problems = images.list_cached(state)
    assert problems == []
    assert entry["sha256"] == DIGEST and entry["size"] == len(DATA)
    assert entry["instances"] == [inst.name]
    with pytest.raises(BadRequest, match="is used by instance"):
        images.remove(state, DIGEST)
    (inst / images.USES_FILE).unlink()
    assert images.remove(state, DIGEST) is True
    assert images.remove(state, DIGEST) is False
    assert images.list_cached(state) == ([], [])
