"""Images made from servers, on the lab: a running test guest writes a marker to its
root disk, is imaged without stopping, and a server booted from the new image on
another host reads the marker back (the image relayed there through this machine).
Shelve and unshelve onto another host keep the UUID, address and marker; a rescued
guest finds its own disk second and repairs it, and unrescue boots what it wrote."""

from __future__ import annotations

import re
import time

import pytest

from orchestrator.lab import Lab
from tests.e2e.herdcli import HerdCli, domain_state
from tests.e2e.test_volumes import console_until, disk, provider_ip

pytestmark = pytest.mark.e2e


def boot(herd: HerdCli, name: str, image: str, host: str) -> None:
    (made,) = herd.ok(
        "server", "create", name, "--flavor", "m1.tiny", "--image", image,
        "--network", "provider", "--host", host, "--json",
    ).json()  # fmt: skip
    assert (made["vm_state"], made["error"]) == ("active", None), made
    console_until(herd, name, "HERD-TEST ready")


def test_an_image_of_a_running_guest_boots_on_another_host_with_what_it_wrote(
    herd: HerdCli, lab: Lab
) -> None:
    boot(herd, "imgsrc", "herd-test", "lab-1")
    source_ip = provider_ip(herd, lab, "imgsrc")
    assert disk(source_ip, "op=write&dev=vda&marker=img-5e2") == "wrote img-5e2 to vda"

    (made,) = herd.ok("server", "image", "create", "imgsrc", "--name", "golden", "--json").json()
    assert (made["vm_state"], made["error"]) == ("active", None), made
    image = herd.ok("image", "show", "golden", "--json").json()
    assert image["source"] == "cache://lab-1" and len(image["sha256"]) == 64, image
    # Imaged while it ran: it never rebooted, and still answers.
    lines = herd.ok("server", "console-log", "imgsrc", "--lines", "400", "--json").json()["lines"]
    assert sum("HERD-TEST ready" in line for line in lines) == 1
    assert disk(source_ip, "op=read&dev=vda") == "HERD-MARKER img-5e2"
    actions = herd.ok("server", "actions", "imgsrc", "--json").json()
    assert any(a["action"] == "image_create" for a in actions), actions

    # The overlay went back into the server's own disk, not into the cached image that
    # every server built from herd-test shares.
    base = herd.ok("image", "show", "herd-test", "--json").json()["sha256"]
    digest = lab.exec_in("lab-1", ["sha256sum", f"/var/lib/herd/images/{base}"], check=True)
    assert digest.stdout.split()[0] == base

    boot(herd, "imgdst", "golden", "lab-2")
    assert disk(provider_ip(herd, lab, "imgdst"), "op=read&dev=vda") == "HERD-MARKER img-5e2"
    herd.run("server", "delete", "imgdst", "imgsrc")
    herd.ok("image", "delete", "golden")


def test_shelve_frees_the_host_and_unshelve_boots_it_elsewhere_as_itself(
    herd: HerdCli, lab: Lab
) -> None:
    boot(herd, "shelf", "herd-test", "lab-1")
    before = herd.server("shelf")
    address = provider_ip(herd, lab, "shelf")
    assert disk(address, "op=write&dev=vda&marker=shelf-71c") == "wrote shelf-71c to vda"

    (shelved,) = herd.ok("server", "shelve", "shelf", "--json").json()
    assert (shelved["vm_state"], shelved["error"]) == ("shelved_offloaded", None), shelved
    view = herd.server("shelf")
    assert view["host"] is None and view["image"].startswith("shelf-shelved-"), view
    assert domain_state(lab, "lab-1", before["uuid"]) is None  # its domain is gone
    gone = lab.exec_in("lab-1", ["test", "-e", f"/var/lib/herd/instances/{before['uuid']}"])
    assert gone.returncode != 0  # and its disk
    assert [p["ip"] for p in view["addresses"]] == [address]  # its address is kept

    (back,) = herd.ok("server", "unshelve", "shelf", "--host", "lab-2", "--json").json()
    assert (back["vm_state"], back["error"], back["host"]) == ("active", None, "lab-2"), back
    console_until(herd, "shelf", "HERD-TEST ready")
    assert domain_state(lab, "lab-2", before["uuid"]) == "running"
    assert herd.server("shelf")["uuid"] == before["uuid"]
    assert provider_ip(herd, lab, "shelf") == address
    assert disk(address, "op=read&dev=vda") == "HERD-MARKER shelf-71c"
    herd.ok("server", "delete", "shelf")
    # Its shelve image was its disk's only other copy, and goes with it.
    assert view["image"] not in {i["name"] for i in herd.ok("image", "list", "--json").json()}


def test_rescue_boots_a_fresh_disk_with_the_servers_own_second_and_unrescue_gives_it_back(
    herd: HerdCli, lab: Lab
) -> None:
    boot(herd, "rsq", "herd-test", "lab-1")
    address = provider_ip(herd, lab, "rsq")
    assert disk(address, "op=write&dev=vda&marker=rsq-0c4") == "wrote rsq-0c4 to vda"

    (rescued,) = herd.ok("server", "rescue", "rsq", "--json").json()
    assert (rescued["vm_state"], rescued["error"], rescued["host"]) == ("rescued", None, "lab-1")
    # The guest booted again, from the rescue disk: its own disk is there, second, by serial.
    lines = console_until(herd, "rsq", "serial=herd-rescued-root", timeout=180)
    (own,) = {m.group(1) for m in map(ROOT_DISK.search, lines) if m}
    assert own != "vda"
    wait_ready(herd, "rsq", 2)
    assert provider_ip(herd, lab, "rsq") == address
    assert disk(address, "op=read&dev=vda") != "HERD-MARKER rsq-0c4"  # a fresh disk
    assert disk(address, f"op=read&dev={own}") == "HERD-MARKER rsq-0c4"
    assert disk(address, f"op=write&dev={own}&marker=fixed-9d1") == f"wrote fixed-9d1 to {own}"

    (back,) = herd.ok("server", "unrescue", "rsq", "--json").json()
    assert (back["vm_state"], back["error"]) == ("active", None), back
    wait_ready(herd, "rsq", 3)
    assert disk(address, "op=read&dev=vda") == "HERD-MARKER fixed-9d1"  # what the rescue wrote
    listed = lab.exec_in("lab-1", ["ls", f"/var/lib/herd/instances/{herd.server('rsq')['uuid']}"])
    assert "disk.rescue" not in listed.stdout.split()
    herd.run("server", "delete", "rsq")


ROOT_DISK = re.compile(r"HERD-TEST disk=(vd[a-z]) bytes=\d+ serial=herd-rescued-root")


def wait_ready(herd: HerdCli, name: str, boots: int, timeout: float = 180) -> None:
    """Until the guest has said it is ready ``boots`` times (its console log is kept
    across its boots)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = herd.ok("server", "console-log", name, "--lines", "2000", "--json").json()["lines"]
        if sum("HERD-TEST ready" in line for line in lines) >= boots:
            return
        time.sleep(1)
    raise AssertionError(f"{name} did not get ready {boots} times")
