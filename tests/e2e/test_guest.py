"""What the guest really receives: the test image boots under libvirt on a lab host,
reads its NoCloud seed and reports it on the serial console, which we read back
through `herd server console-log` (agent → virtlogd's log file)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.herdcli import GuestConsole, HerdCli, assert_one_line_error, domain_state

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 120.0


def guest_report(herd: HerdCli, name: str, timeout: float = BOOT_TIMEOUT) -> dict[str, list[str]]:
    """The HERD-TEST facts the guest printed, once it printed "ready"."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = herd.ok("server", "console-log", name, "--lines", "500", "--json").json()["lines"]
        if any(line.strip() == "HERD-TEST ready" for line in lines):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"{name} did not finish booting; console:\n" + "\n".join(lines))
    facts: dict[str, list[str]] = {}
    for line in lines:
        match = re.match(r"HERD-TEST ([a-z-]+)=(.*)$", line.strip())
        if match:
            facts.setdefault(match.group(1), []).append(match.group(2))
    body = lines.index("HERD-TEST user-data-begin"), lines.index("HERD-TEST user-data-end")
    facts["user-data"] = [line.rstrip("\r") for line in lines[body[0] + 1 : body[1]]]
    return facts


def test_the_guest_sees_its_uuid_hostname_fixed_ip_keys_and_user_data(
    herd: HerdCli, lab, tmp_path: Path
) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\n# e2e-marker: 7f3a-guest-boot\n")
    public = tmp_path / "id.pub"
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "e2e@herd",
            "-f",
            str(tmp_path / "id"),
        ],
        check=True,
    )
    herd.ok("keypair", "import", "e2e-key", "--public-key", str(public))
    created = herd.ok(
        "server", "create", "guest", "--flavor", "m1.tiny", "--image", "herd-test",
        "--count", "2", "--network", "lab-net", "--key-name", "e2e-key",
        "--user-data", str(user_data), "--json",
    ).json()  # fmt: skip
    assert {c["vm_state"] for c in created} == {"active"}, created
    seen_macs, seen_ips = set(), set()
    for name in ("guest-1", "guest-2"):
        server = herd.server(name)
        (port,) = server["addresses"]
        assert port["network"] == "lab-net" and port["mac"].startswith("02:68:64:")
        facts = guest_report(herd, name)
        assert facts["instance-id"] == [server["uuid"]]
        assert facts["local-hostname"] == [name]
        # The guest configured exactly the address herd allocated on the NIC herd named.
        assert facts["ip"] == [f"{port['ip']}/24 nic=eth0 mac={port['mac']}"]
        assert facts["route"] == ["default via 10.0.2.2 nic=eth0"]  # lab-net's gateway
        assert facts["ssh-key"] == [public.read_text().strip()]
        assert "# e2e-marker: 7f3a-guest-boot" in facts["user-data"]
        assert facts["root-disk-bytes"] == [str(1 << 30)]  # grown to m1.tiny's 1 GiB
        assert domain_state(lab, server["host"], server["uuid"]) == "running"
        # The seed (user data: passwords) and the disk are 0600 (0640 from lab-2's
        # non-root agent: group kvm), and the guest read them all the same: libvirt's
        # DAC driver gave them to QEMU's user.
        inst = f"/var/lib/herd/instances/{server['uuid']}"
        modes = lab.exec_in(
            server["host"], ["stat", "-c", "%n %a %U", f"{inst}/seed.iso", f"{inst}/disk"],
            check=True,
        ).stdout.split("\n")  # fmt: skip
        mode = "640" if server["host"] == "lab-2" else "600"
        assert modes[:2] == [
            f"{inst}/seed.iso {mode} libvirt-qemu",
            f"{inst}/disk {mode} libvirt-qemu",
        ]
        seen_macs.add(port["mac"])
        seen_ips.add(port["ip"])
    assert len(seen_macs) == 2 and len(seen_ips) == 2
    networks = {n["name"]: n for n in herd.ok("network", "list", "--json").json()}
    assert networks["lab-net"]["ports"] == 2
    herd.ok("server", "delete", "guest-1", "guest-2")
    assert herd.ok("network", "list", "--json").json()[0]["ports"] == 0  # addresses released


def image_events(herd: HerdCli, name: str) -> str:
    (create,) = [
        a for a in herd.ok("server", "actions", name, "--json").json() if a["action"] == "create"
    ]
    (event,) = [e for e in create["events"] if e["event"] == "image"]
    return event["details"]


def cache_inode(lab, host: str, path: str) -> str:
    return lab.exec_in(host, ["stat", "-c", "%i", path], check=True).stdout.strip()


def test_a_second_server_from_a_cached_image_transfers_nothing_and_prune_frees_the_cache(
    herd: HerdCli, lab
) -> None:
    images = {i["name"]: i for i in herd.ok("image", "list", "--json").json()}
    root_sha = images["herd-test"]["sha256"]
    cached = f"/var/lib/herd/images/{root_sha}"
    herd.ok(
        "server",
        "create",
        "first",
        "--flavor",
        "m1.tiny",
        "--image",
        "herd-test",
        "--host",
        "lab-3",
    )
    inode = cache_inode(lab, "lab-3", cached)
    herd.ok(
        "server",
        "create",
        "second",
        "--flavor",
        "m1.tiny",
        "--image",
        "herd-test",
        "--host",
        "lab-3",
    )
    details = image_events(herd, "second")
    for image in ("herd-test", "herd-test-kernel", "herd-test-ramdisk"):
        assert f"{image}: already cached on lab-3, nothing transferred" in details
    assert "pushed" not in details
    assert cache_inode(lab, "lab-3", cached) == inode  # the very same file, not re-made

    listing = herd.ok("image", "cache", "list", "--host", "lab-3", "--json").json()["images"]
    entry = next(e for e in listing if e["sha256"] == root_sha)
    assert entry["images"] == ["herd-test"] and len(entry["instances"]) == 2
    # In use: prune leaves it alone.
    herd.ok("image", "cache", "prune", "--host", "lab-3")
    assert lab.exec_in("lab-3", ["test", "-e", cached]).returncode == 0

    herd.ok("server", "delete", "first", "second")
    would = herd.ok("image", "cache", "prune", "--host", "lab-3", "--dry-run", "--json").json()
    assert root_sha in {e["sha256"] for e in would["would_remove"]}
    assert lab.exec_in("lab-3", ["test", "-e", cached]).returncode == 0  # dry run
    herd.ok("image", "cache", "prune", "--host", "lab-3")
    assert lab.exec_in("lab-3", ["test", "-e", cached]).returncode != 0
    herd.ok(
        "server",
        "create",
        "third",
        "--flavor",
        "m1.tiny",
        "--image",
        "herd-test",
        "--host",
        "lab-3",
    )
    assert "herd-test: pushed" in image_events(herd, "third")


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/truncated/"):
            data = Path(self.directory, self.path.removeprefix("/truncated/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def web(tmp_path: Path, lab) -> Iterator[tuple[str, Path]]:
    """An HTTP server serving a directory on the root namespace's address of the lab's
    management network, the one address outside themselves the hosts' agents reach."""
    root = tmp_path / "www"
    root.mkdir()
    address = lab.info().network.management_gateway
    server = http.server.ThreadingHTTPServer(
        (address, 0), functools.partial(_Files, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def root_disk(lab) -> Path:
    return lab.info().image.parent / "herd-test-root.qcow2"


def direct_boot(*extra: str) -> list[str]:
    return [
        "--min-ram",
        "128",
        "--property",
        "kernel_id=herd-test-kernel",
        "--property",
        "ramdisk_id=herd-test-ramdisk",
        *extra,
    ]


def test_url_and_host_path_images_boot_and_a_tampered_or_truncated_image_is_refused(
    herd: HerdCli, lab, web: tuple[str, Path], tmp_path: Path
) -> None:
    base, www = web
    disk = www / "disk.qcow2"
    shutil.copyfile(root_disk(lab), disk)

    # A URL without a checksum: the first host's download records it.
    herd.ok("image", "create", "from-url", "--url", f"{base}/disk.qcow2", *direct_boot())
    assert herd.ok("image", "show", "from-url", "--json").json()["sha256"] is None
    herd.ok("server", "create", "url-vm", "--flavor", "m1.tiny", "--image", "from-url")
    assert (
        herd.ok("image", "show", "from-url", "--json").json()["sha256"]
        == (herd.ok("image", "show", "herd-test", "--json").json()["sha256"])
    )
    assert "fetched by" in image_events(herd, "url-vm")
    assert guest_report(herd, "url-vm")["instance-id"] == [herd.server("url-vm")["uuid"]]

    # A path already on the hosts, in their image_source_dirs (the lab hosts see this
    # machine's files).
    on_host = lab.info().host_images / f"{tmp_path.name}.qcow2"
    shutil.copyfile(disk, on_host)
    try:
        herd.ok("image", "create", "on-host", "--host-path", str(on_host), *direct_boot())
        # On lab-1: the session lab lives below pytest's 0700 temporary directory, which
        # lab-2's unprivileged herd-lab cannot traverse (a real host's image dirs are
        # readable by its herd user).
        herd.ok(
            "server", "create", "path-vm", "--flavor", "m1.tiny", "--image", "on-host",
            "--host", "lab-1",
        )  # fmt: skip
    finally:
        on_host.unlink()
    assert herd.server("path-vm")["vm_state"] == "active"

    # The bytes differ from the promised sha256: refused on every host, never used.
    tampered = www / "tampered.qcow2"
    tampered.write_bytes(disk.read_bytes() + b"tampered")
    herd.ok(
        "image",
        "create",
        "tampered",
        "--url",
        f"{base}/tampered.qcow2",
        "--sha256",
        "0" * 64,
        *direct_boot(),
    )
    result = herd.run("server", "create", "bad-vm", "--flavor", "m1.tiny", "--image", "tampered")
    assert result.code != 0
    bad = herd.server("bad-vm")
    assert bad["vm_state"] == "error"
    assert "expected " + "0" * 64 in bad["faults"][0]["message"]
    assert "discarded" in bad["faults"][0]["message"]

    # A local file changed after it was registered: the host re-hashes and refuses it.
    # (Unique bytes: a copy of a cached image would never be uploaded at all.)
    local = tmp_path / "local.raw"
    local.write_bytes(os.urandom(1 << 16))
    herd.ok("image", "create", "changed", "--file", str(local), "--format", "raw")
    local.write_bytes(local.read_bytes() + b"changed later")
    herd.run("server", "create", "changed-vm", "--flavor", "m1.tiny", "--image", "changed")
    fault = herd.server("changed-vm")["faults"][0]["message"]
    assert "was refused by host" in fault and "sha256 is" in fault

    # Half a download with a full Content-Length: detected, nothing cached.
    herd.ok("image", "create", "cut", "--url", f"{base}/truncated/disk.qcow2", *direct_boot())
    herd.run("server", "create", "cut-vm", "--flavor", "m1.tiny", "--image", "cut")
    fault = herd.server("cut-vm")["faults"][0]["message"]
    assert "download truncated" in fault, fault
    for host in lab.hosts:
        incoming = lab.exec_in(host.name, ["ls", "-A", "/var/lib/herd/images/incoming"])
        assert incoming.stdout.strip() == "", f"{host.name} kept a partial download"


def test_console_attaches_to_the_guest_shell_and_ctrl_bracket_detaches(herd: HerdCli) -> None:
    herd.ok("server", "create", "tty", "--flavor", "m1.tiny", "--image", "herd-test")
    guest_report(herd, "tty")
    console = GuestConsole(herd, "tty")
    console.ask("echo answer-$((6 * 7))", b"answer-42")
    code, stderr = console.detach()
    assert code == 0
    assert "press Ctrl-] to detach" in stderr


def test_bad_guest_requests_are_one_line_errors_and_leave_nothing(
    herd: HerdCli, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 65536)
    assert_one_line_error(
        herd.run(
            "server",
            "create",
            "x",
            "--flavor",
            "m1.tiny",
            "--image",
            "herd-test",
            "--user-data",
            str(big),
        ),
        code=2,
        contains="limit is 65535 bytes",
    )
    assert_one_line_error(
        herd.run(
            "server",
            "create",
            "x",
            "--flavor",
            "m1.tiny",
            "--image",
            "herd-test",
            "--network",
            "nope",
        ),
        code=3,
        contains="no network 'nope' (known: lab-net, provider)",
    )
    assert_one_line_error(
        herd.run(
            "server",
            "create",
            "x",
            "--flavor",
            "m1.tiny",
            "--image",
            "herd-test",
            "--key-name",
            "nope",
        ),
        code=3,
        contains="key pair 'nope' not found",
    )
    assert_one_line_error(
        herd.run("server", "create", "x", "--flavor", "m1.tiny", "--image", "herd-test-kernel"),
        code=2,
        contains="is a kernel (aki), not a bootable disk",
    )
    assert_one_line_error(
        herd.run("server", "create", "x", "--flavor", "m1.nano", "--image", "herd-test"),
        code=2,
        contains="image 'herd-test' needs at least 128 MiB of RAM; flavor 'm1.nano' has 64",
    )
    assert herd.servers() == []
    assert_one_line_error(herd.run("server", "console-log", "nope"), code=3)
