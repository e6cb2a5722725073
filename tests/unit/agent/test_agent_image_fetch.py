"""The host's image cache: fetch by URL or host path, verify, list, prune safely."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def leftovers(state: Path) -> list[str]:
    return [p.name for p in (state / "images" / "incoming").iterdir()]


def test_a_url_is_downloaded_verified_and_cached_once(state: Path, web: str) -> None:
    cached, digest = images.fetch(state, f"{web}/image", DIGEST)
    assert digest == DIGEST and cached.path.read_bytes() == DATA
    assert cached.path.stat().st_mode & 0o777 == 0o644
    inode = cached.path.stat().st_ino
    again, _ = images.fetch(state, f"{web}/missing-but-cached", DIGEST)
    assert again.path.stat().st_ino == inode  # cached: not even asked for


def test_without_a_checksum_the_digest_of_what_arrived_is_returned(state: Path, web: str) -> None:
    cached, digest = images.fetch(state, f"{web}/image", None)
    assert digest == DIGEST and cached.path.name == DIGEST


def test_a_wrong_digest_is_refused_and_nothing_is_kept(state: Path, web: str) -> None:
    with pytest.raises(images.FetchError, match=f"sha256 is {DIGEST}, expected {'0' * 64}"):
        images.fetch(state, f"{web}/image", "0" * 64)
    assert leftovers(state) == []
    assert not images.status(state, "0" * 64).present


def test_a_truncated_download_is_refused_and_nothing_is_kept(state: Path, web: str) -> None:
    with pytest.raises(images.FetchError, match="download truncated"):
        images.fetch(state, f"{web}/short", None)
    assert leftovers(state) == []
    assert not any(p.name == DIGEST for p in (state / "images").iterdir())


def test_http_errors_and_unreachable_servers_are_one_line(state: Path, web: str) -> None:
    with pytest.raises(images.FetchError, match="HTTP 404"):
        images.fetch(state, f"{web}/nope", None)
    with pytest.raises(images.FetchError, match="download failed"):
        images.fetch(state, "http://127.0.0.1:1/x", None)


def test_a_host_path_is_copied_so_later_changes_cannot_reach_disks(
    state: Path, tmp_path: Path
) -> None:
    source = tmp_path / "on-host.img"
    source.write_bytes(DATA)
    cached, digest = images.fetch(state, str(source), None)
    source.write_bytes(b"changed afterwards")
    assert digest == DIGEST and cached.path.read_bytes() == DATA
    with pytest.raises(images.FetchError, match="cannot read /nonexistent"):
        images.fetch(state, "/nonexistent", None)
    with pytest.raises(BadRequest):
        images.fetch(state, "relative/path", None)


def test_an_image_in_use_is_listed_with_its_instances_and_never_removed(
    state: Path, tmp_path: Path
) -> None:
    source = tmp_path / "img"
    source.write_bytes(DATA)
    images.fetch(state, str(source), DIGEST)
    inst = state / "instances" / "0b7e6a52-6a43-4c2c-9d55-3a3b9a1b2c3d"
    inst.mkdir(parents=True)
    images.record_use(inst, [DIGEST])
    (entry,) = images.list_cached(state)
    assert entry["sha256"] == DIGEST and entry["size"] == len(DATA)
    assert entry["instances"] == [inst.name]
    with pytest.raises(BadRequest, match="is used by instance"):
        images.remove(state, DIGEST)
    (inst / images.USES_FILE).unlink()
    assert images.remove(state, DIGEST) is True
    assert images.remove(state, DIGEST) is False
    assert images.list_cached(state) == []
