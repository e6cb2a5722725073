"""The NoCloud seed: valid YAML whatever the values, and an ISO cloud-init can read."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml

from orchestrator import cloudinit
from orchestrator.errors import InvalidInput
from orchestrator.networking import PortView

UUID = "0b7e6a52-6a43-4c2c-9d55-3a3b9a1b2c3d"


def port(index: int, ip: str | None = "10.0.2.100", gateway: str | None = "10.0.2.2") -> PortView:
    return PortView(
        network=f"net{index}",
        kind="user",
        source=None,
        mac=f"02:68:64:00:00:0{index}",
        ip=ip,
        cidr="10.0.2.0/24" if ip else None,
        gateway=gateway,
        dns=("10.0.2.3",),
        device_index=index,
    )


def test_meta_data_and_network_config_are_yaml_cloud_init_understands() -> None:
    docs = cloudinit.render(
        cloudinit.SeedInstance(UUID, "web-1"),
        [port(0), port(1, ip=None)],
        ["ssh-ed25519 AAAAC3 me@laptop"],
    )
    meta = yaml.safe_load(docs["meta-data"])
    assert meta == {
        "instance-id": UUID,
        "local-hostname": "web-1",
        "public-keys": ["ssh-ed25519 AAAAC3 me@laptop"],
    }
    net = yaml.safe_load(docs["network-config"])
    assert net["version"] == 2
    first, second = net["ethernets"]["port0"], net["ethernets"]["port1"]
    assert first["match"] == {"macaddress": "02:68:64:00:00:00"}
    assert first["set-name"] == "eth0"
    assert first["addresses"] == ["10.0.2.100/24"]
    assert first["routes"] == [{"to": "0.0.0.0/0", "via": "10.0.2.2"}]
    assert first["nameservers"] == {"addresses": ["10.0.2.3"]}
    assert second == {
        "match": {"macaddress": "02:68:64:00:00:01"},
        "set-name": "eth1",
        "dhcp4": True,
    }
    assert yaml.safe_load(docs["user-data"]) == {"hostname": "web-1"}


def test_no_ports_is_still_valid_network_config() -> None:
    docs = cloudinit.render(cloudinit.SeedInstance(UUID, "a"), [])
    assert yaml.safe_load(docs["network-config"]) == {"version": 2, "ethernets": {}}
    assert "public-keys" not in yaml.safe_load(docs["meta-data"])


def test_awkward_values_cannot_break_the_yaml() -> None:
    nasty = 'x: y\n- "z" # not a comment'
    docs = cloudinit.render(cloudinit.SeedInstance(UUID, nasty), [], [nasty])
    meta = yaml.safe_load(docs["meta-data"])
    assert meta["local-hostname"] == nasty and meta["public-keys"] == [nasty]


def test_user_data_is_passed_byte_for_byte() -> None:
    text = "#!/bin/sh\necho 'hi' > /tmp/x\n\n"
    docs = cloudinit.render(cloudinit.SeedInstance(UUID, "a"), [], user_data=text)
    assert docs["user-data"] == text


def test_user_data_limits_are_one_line_errors() -> None:
    assert cloudinit.check_user_data(b"x" * 65535, "f") == "x" * 65535
    with pytest.raises(InvalidInput, match="f: user data is 65536 bytes; the limit is 65535"):
        cloudinit.check_user_data(b"x" * 65536, "f")
    with pytest.raises(InvalidInput, match="must be UTF-8"):
        cloudinit.check_user_data(b"\xff\xfe", "f")


def test_the_seed_iso_is_labelled_cidata_with_the_files_under_their_real_names(
    tmp_path: Path,
) -> None:
    docs = cloudinit.render(cloudinit.SeedInstance(UUID, "web-1"), [port(0)])
    data = cloudinit.seed_iso(docs)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, text in docs.items():
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue().decode() == text
    finally:
        iso.close()
    # And an independent reader (genisoimage's isoinfo) sees the Rock Ridge names.
    if shutil.which("isoinfo") is None:
        return
    (tmp_path / "seed.iso").write_bytes(data)
    listing = subprocess.run(
        ["isoinfo", "-R", "-f", "-i", str(tmp_path / "seed.iso")], capture_output=True, check=True
    )
    assert set(listing.stdout.decode().split()) == {
        "/meta-data",
        "/user-data",
        "/network-config",
    }


def test_the_readme_the_help_and_the_refusal_give_the_same_user_data_limit() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    stated = f"{cloudinit.MAX_USER_DATA:,} bytes"
    assert "64 KiB" not in readme and stated in readme
    with pytest.raises(InvalidInput, match=f"limit is {cloudinit.MAX_USER_DATA} bytes of the file"):
        cloudinit.check_user_data(b"x" * (cloudinit.MAX_USER_DATA + 1), "f")
