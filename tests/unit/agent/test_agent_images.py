"""The image cache: uploads verified, inspected and confined on commit; idempotent."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from agent_testlib import needs_qemu_img

from agent import images
from agent.errors import BadRequest

DATA = b"not really a disk image\n" * 1000
SHA = hashlib.sha256(DATA).hexdigest()
POLICY = images.ImagePolicy()


def incoming(state_dir: Path) -> Path:
    return images.incoming_dir(state_dir)


@pytest.fixture
def upload(state_dir: Path) -> Path:
    path = incoming(state_dir) / "upload.part"
    path.write_bytes(DATA)
    return path


def commit(state_dir: Path, upload: Path, declared: str = "raw", sha: str = SHA, **policy):
    return images.commit(state_dir, sha, upload, declared, images.ImagePolicy(**policy))


def test_status_of_an_image_never_uploaded(state_dir: Path) -> None:
    cached = images.status(state_dir, SHA)
    assert (cached.present, cached.size) == (False, None)
    assert cached.path == state_dir / "images" / SHA


def test_commit_moves_the_verified_upload_into_the_cache_readable_by_root_only(
    state_dir: Path, upload: Path
) -> None:
    """0600 whatever the upload's mode: libvirt gives QEMU each guest's images."""
    os.chmod(upload, 0o644)
    cached = commit(state_dir, upload)
    assert cached.path == state_dir / "images" / SHA
    assert cached.size == len(DATA)
    assert cached.path.read_bytes() == DATA
    assert not upload.exists()
    assert cached.path.stat().st_mode & 0o777 == 0o600
    assert cached.path.parent.stat().st_mode & 0o777 == 0o755
    assert images.status(state_dir, SHA).present


def test_a_checksum_mismatch_is_refused_and_the_upload_removed(
    state_dir: Path, upload: Path
) -> None:
    wrong = "0" * 64
    with pytest.raises(BadRequest, match=f"sha256 is {SHA}, expected {wrong}"):
        commit(state_dir, upload, sha=wrong)
    assert not upload.exists()
    assert not images.status(state_dir, wrong).present
    assert os.listdir(incoming(state_dir)) == []


def test_committing_twice_is_harmless(state_dir: Path, upload: Path) -> None:
    first = commit(state_dir, upload)
    assert commit(state_dir, upload) == first  # upload already moved
    upload.write_bytes(DATA)
    assert commit(state_dir, upload) == first  # already cached: upload dropped
    assert not upload.exists()


def test_a_symlink_is_never_followed(state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(DATA)
    os.chmod(target, 0o600)
    link = incoming(state_dir) / "upload.part"
    link.symlink_to(target)
    with pytest.raises(BadRequest, match="not a regular file"):
        commit(state_dir, link)
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_missing_upload_is_a_bad_request(state_dir: Path) -> None:
    with pytest.raises(BadRequest, match="does not exist"):
        commit(state_dir, incoming(state_dir) / "nothing")


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda state, tmp: tmp / "precious", id="outside-the-state-dir"),
        pytest.param(lambda state, tmp: state / "jobs" / "x.json", id="another-state-file"),
        pytest.param(
            lambda state, tmp: state / "images" / "incoming" / ".." / ".." / "keep", id="dot-dot"
        ),
        pytest.param(lambda state, tmp: state / "images" / "incoming", id="the-directory-itself"),
    ],
)
def test_an_upload_outside_the_incoming_directory_is_refused_and_left_alone(
    state_dir: Path, tmp_path: Path, where
) -> None:
    path = where(state_dir, tmp_path)
    incoming(state_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(DATA)
    with pytest.raises(BadRequest, match="is not in"):
        commit(state_dir, path)
    assert path.exists()
    assert not images.status(state_dir, SHA).present


def test_an_upload_through_a_symlinked_directory_out_of_incoming_is_refused(
    state_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_bytes(DATA)
    (incoming(state_dir) / "sub").symlink_to(elsewhere)
    with pytest.raises(BadRequest, match="is not in"):
        commit(state_dir, incoming(state_dir) / "sub" / "x")
    assert (elsewhere / "x").exists()


def test_an_upload_larger_than_the_host_allows_is_refused_and_removed(
    state_dir: Path, upload: Path
) -> None:
    with pytest.raises(images.FetchError, match="larger than this host's maximum image size"):
        commit(state_dir, upload, max_bytes=len(DATA) - 1)
    assert not upload.exists()
    assert not images.status(state_dir, SHA).present


def qemu_img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True)


@needs_qemu_img
@pytest.mark.parametrize(
    ("make", "declared", "reason"),
    [
        pytest.param(
            lambda p, secret: qemu_img(
                "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(p), "1M"
            ),
            "qcow2",
            "names a backing file",
            id="backing-file",
        ),
        pytest.param(
            lambda p, secret: qemu_img(
                "create", "-q", "-f", "qcow2", "-o", f"data_file={secret}", str(p), "1M"
            ),
            "qcow2",
            "external data file",
            id="data-file",
        ),
        pytest.param(
            lambda p, secret: qemu_img(
                "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(p), "1M"
            ),
            "raw",
            "declared raw, but its content is a qcow2 image",
            id="qcow2-declared-raw",
        ),
        pytest.param(
            lambda p, secret: qemu_img("create", "-q", "-f", "vmdk", str(p), "1M"),
            "raw",
            "a vmdk image",
            id="vmdk-declared-raw",
        ),
        pytest.param(
            lambda p, secret: qemu_img("create", "-q", "-f", "qcow2", str(p), "1M"),
            "aki",
            "declared aki \\(a kernel\\), but its content is a qcow2 image",
            id="qcow2-declared-kernel",
        ),
        pytest.param(
            lambda p, secret: p.write_bytes(b"\0" * 65536),
            "qcow2",
            "no qcow2 header",
            id="raw-declared-qcow2",
        ),
    ],
)
def test_an_unsafe_image_never_enters_the_cache(
    state_dir: Path, tmp_path: Path, make, declared: str, reason: str
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$...\n")
    os.chmod(secret, 0o600)
    upload = incoming(state_dir) / "evil.part"
    make(upload, secret)
    digest = images.file_sha256(upload)
    with pytest.raises(images.FetchError, match=f"was refused: .*{reason}"):
        images.commit(state_dir, digest, upload, declared, POLICY)
    assert not upload.exists()
    assert not images.status(state_dir, digest).present
    assert os.listdir(incoming(state_dir)) == []


@needs_qemu_img
def test_a_clean_qcow2_is_cached(state_dir: Path) -> None:
    upload = incoming(state_dir) / "clean.part"
    qemu_img("create", "-q", "-f", "qcow2", str(upload), "1M")
    digest = images.file_sha256(upload)
    assert images.commit(state_dir, digest, upload, "qcow2", POLICY).present


def test_an_unreadable_images_json_is_reported_and_blocks_only_removal(state_dir: Path) -> None:
    """One instance's damaged file neither hides the cache nor lets prune guess."""
    upload = incoming(state_dir) / "u"
    upload.write_bytes(DATA)
    commit(state_dir, upload)
    good = state_dir / "instances" / "0b7e6a52-6a43-4c2c-9d55-3a3b9a1b2c3d"
    good.mkdir(parents=True)
    images.record_use(good, ["f" * 64])
    bad = state_dir / "instances" / "1c8f7b63-7b54-4d3d-8e66-4b4c8b2c3d4e"
    bad.mkdir()
    for damage in (b"{half a json", b"\xff\xfe", b'{"images": "abc"}', b"[1, 2]"):
        (bad / images.USES_FILE).write_bytes(damage)
        entries, problems = images.list_cached(state_dir)
        assert [e["sha256"] for e in entries] == [SHA]
        assert [p["file"] for p in problems] == [str(bad / images.USES_FILE)]
        assert problems[0]["error"]
        with pytest.raises(BadRequest, match=f"{bad / images.USES_FILE} is unreadable"):
            images.remove(state_dir, SHA)
    assert images.status(state_dir, SHA).present
    (bad / images.USES_FILE).unlink()
    assert images.remove(state_dir, SHA) is True
