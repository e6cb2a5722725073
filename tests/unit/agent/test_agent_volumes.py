"""The agent's volume files, with the real qemu-img: what a move carries in is taken only
if it is a plain image of the volume's format."""

from __future__ import annotations

import shutil
import subprocess
import uuid as uuidlib
from pathlib import Path

import pytest

from agent import volumes
from agent.errors import BadRequest, NotFound

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def carried(state_dir: Path, volume: str) -> Path:
    path = volumes.carried_path(state_dir, {"volume": volume})
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_carried_volume_is_taken_in_once_and_a_repeat_finds_it_done(tmp_path: Path) -> None:
    volume = str(uuidlib.uuid4())
    qemu_img("create", "-q", "-f", "qcow2", str(carried(tmp_path, volume)), "1G")
    args = {"volume": volume, "format": "qcow2"}
    taken = volumes.adopt(tmp_path, args)
    assert taken["path"] == str(tmp_path / "volumes" / f"{volume}.qcow2")
    assert (taken["size_bytes"], taken["existed"]) == (1 << 30, False)
    assert not volumes.carried_path(tmp_path, args).exists()
    assert volumes.adopt(tmp_path, args)["existed"] is True  # a lost answer, asked again


def test_a_carried_qcow2_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    volume = str(uuidlib.uuid4())
    secret = tmp_path / "someone-elses.raw"
    qemu_img("create", "-q", "-f", "raw", str(secret), "1M")
    upload = carried(tmp_path, volume)
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(upload))
    with pytest.raises(BadRequest, match="not a plain qcow2 image"):
        volumes.adopt(tmp_path, {"volume": volume, "format": "qcow2"})
    assert not (tmp_path / "volumes" / f"{volume}.qcow2").exists()


def test_nothing_carried_and_nothing_in_place_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no carried file"):
        volumes.adopt(tmp_path, {"volume": str(uuidlib.uuid4()), "format": "raw"})
