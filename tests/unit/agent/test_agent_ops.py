"""build and delete as data: what libvirt has, plus the job's args, in; virsh steps out.

A fake virsh records the steps; qemu-img is real, so the overlay is a real file.
"""

from __future__ import annotations

import base64
import json
import socket as sockets
import subprocess
import uuid
from pathlib import Path

import pytest
from agent_testlib import build_args, needs_qemu_img

from agent import images, ops
from agent.errors import BadRequest, LibvirtError, NotFound
from agent.specs import BuildSpec, DeleteSpec, LiveMigrateSpec
from agent.virt import DomainInfo, domain_name


class FakeVirsh:
    """Just enough of agent.virt.Virsh: one domain, or none, and a log of calls."""

    def __init__(self, state: str | None = None, name: str | None = None, fail: str = "") -> None:
        self.domain: DomainInfo | None = None
        self._name = name
        self._initial = state
        self.fail = fail
        self.calls: list[str] = []

    def bind(self, instance_uuid: str) -> FakeVirsh:
        if self._initial is not None:
            name = self._name or domain_name(instance_uuid)
            self.domain = DomainInfo(instance_uuid, name, self._initial)
        return self

    def dominfo(self, instance_uuid: str) -> DomainInfo | None:
        return self.domain

    def _step(self, call: str) -> None:
        self.calls.append(call)
        if call == self.fail:
            raise LibvirtError(f"virsh {call}: Failed to {call} domain: internal error: boom")

    def define(self, xml_path: str) -> None:
        assert Path(xml_path).read_text().startswith("<domain")
        self._step("define")
        self.domain = DomainInfo(self._uuid_from(xml_path), "", "shutoff")

    def start(self, name: str) -> None:
        self._step("start")
        self.domain = DomainInfo(name[len("herd-") :], name, "running")

    def destroy(self, name: str) -> bool:
        self._step("destroy")
        running = self.domain is not None and self.domain.state == "running"
        if self.domain is not None:
            self.domain = DomainInfo(self.domain.uuid, name, "shutoff")
        return running

    def undefine(self, name: str) -> None:
        self._step("undefine")
        self.domain = None

    @staticmethod
    def _uuid_from(xml_path: str) -> str:
        return Path(xml_path).parent.name


@pytest.fixture
def base_image(state_dir: Path) -> str:
    """A blank qcow2 committed to the cache; returns its sha256."""
    upload = images.incoming_dir(state_dir) / "upload"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(upload), "64M"], check=True)
    sha = images.file_sha256(upload)
    return images.commit(state_dir, sha, upload, "qcow2", images.ImagePolicy()).path.name


def build(state_dir: Path, virsh: FakeVirsh, args: dict) -> dict:
    spec = BuildSpec.from_args(args)
    return ops.build(ops.Context(state_dir, virsh.bind(spec.instance.uuid)), spec)


@needs_qemu_img
def test_build_on_a_clean_host_defines_and_starts_an_overlay_backed_domain(
    state_dir: Path, base_image: str
) -> None:
    virsh = FakeVirsh()
    args = build_args(sha256=base_image, disk_gb=2)
    result = build(state_dir, virsh, args)
    uuid_ = args["instance"]["uuid"]
    inst = state_dir / "instances" / uuid_
    assert virsh.calls == ["define", "start"]
    assert result == {
        "domain": f"herd-{uuid_}",
        "state": "running",
        "disk_path": str(inst / "disk"),
    }
    argv = ["qemu-img", "info", "--output=json", str(inst / "disk")]
    info = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert '"backing-filename": "' + str(state_dir / "images" / base_image) in info
    assert '"virtual-size": 2147483648' in info
    assert (inst / "domain.xml").read_text().count(f"herd-{uuid_}") == 1
    assert sorted(p.name for p in inst.iterdir()) == [
        "console.log",
        "disk",
        "domain.xml",
        "images.json",
    ]
    assert json.loads((inst / "images.json").read_text()) == {"images": [base_image]}


def test_build_of_a_running_domain_changes_nothing(state_dir: Path) -> None:
    virsh = FakeVirsh(state="running")
    assert build(state_dir, virsh, build_args())["state"] == "running"
    assert virsh.calls == []


@pytest.mark.parametrize("state", ["shutoff", "crashed"])
def test_build_of_a_stopped_domain_starts_it(state_dir: Path, state: str) -> None:
    virsh = FakeVirsh(state=state)
    assert build(state_dir, virsh, build_args())["state"] == "running"
    assert virsh.calls == ["start"]


def test_build_never_touches_a_domain_that_is_not_herds(state_dir: Path) -> None:
    with pytest.raises(BadRequest, match="not herd's"):
        build(state_dir, FakeVirsh(state="running", name="someone-elses"), build_args())


def test_build_needs_the_image_in_the_cache(state_dir: Path) -> None:
    with pytest.raises(NotFound, match="not in this host's cache"):
        build(state_dir, FakeVirsh(), build_args(sha256="f" * 64))


@needs_qemu_img
@pytest.mark.parametrize(
    ("failing", "expected_calls"),
    [("define", ["define"]), ("start", ["define", "start", "destroy", "undefine"])],
    ids=["define-fails", "start-fails"],
)
def test_a_failed_build_removes_everything_it_created(
    state_dir: Path, base_image: str, failing: str, expected_calls: list[str]
) -> None:
    virsh = FakeVirsh(fail=failing)
    args = build_args(sha256=base_image)
    with pytest.raises(LibvirtError, match="boom"):
        build(state_dir, virsh, args)
    assert virsh.calls == expected_calls
    assert virsh.domain is None
    assert not (state_dir / "instances" / args["instance"]["uuid"]).exists()
    assert (state_dir / "images" / base_image).exists()  # the shared base stays


@needs_qemu_img
def test_build_replaces_leftovers_of_a_build_that_died(state_dir: Path, base_image: str) -> None:
    args = build_args(sha256=base_image)
    inst = state_dir / "instances" / args["instance"]["uuid"]
    inst.mkdir(parents=True)
    (inst / ".disk.tmp").write_text("half a disk")
    build(state_dir, FakeVirsh(), args)
    assert sorted(p.name for p in inst.iterdir()) == [
        "console.log",
        "disk",
        "domain.xml",
        "images.json",
    ]


def delete(state_dir: Path, virsh: FakeVirsh, instance_uuid: str) -> dict:
    spec = DeleteSpec.from_args({"uuid": instance_uuid})
    return ops.delete(ops.Context(state_dir, virsh.bind(instance_uuid)), spec)


@pytest.mark.parametrize(
    ("state", "expected_calls"),
    [("running", ["destroy", "undefine"]), ("shutoff", ["undefine"])],
)
def test_delete_stops_undefines_and_removes_the_instance_dir(
    state_dir: Path, state: str, expected_calls: list[str]
) -> None:
    instance = str(uuid.uuid4())
    (state_dir / "instances" / instance).mkdir(parents=True)
    virsh = FakeVirsh(state=state)
    assert delete(state_dir, virsh, instance) == {"existed": True}
    assert virsh.calls == expected_calls
    assert not (state_dir / "instances" / instance).exists()


def test_delete_of_nothing_is_harmless_and_says_so(state_dir: Path) -> None:
    virsh = FakeVirsh()
    assert delete(state_dir, virsh, str(uuid.uuid4())) == {"existed": False}
    assert virsh.calls == []


def test_delete_removes_a_leftover_dir_without_a_domain(state_dir: Path) -> None:
    instance = str(uuid.uuid4())
    (state_dir / "instances" / instance).mkdir(parents=True)
    assert delete(state_dir, FakeVirsh(), instance) == {"existed": True}
    assert not (state_dir / "instances" / instance).exists()


def test_delete_never_touches_a_domain_that_is_not_herds(state_dir: Path) -> None:
    with pytest.raises(BadRequest, match="not herd's"):
        delete(state_dir, FakeVirsh(state="running", name="someone-elses"), str(uuid.uuid4()))


def virtual_size(disk: Path) -> int:
    argv = ["qemu-img", "info", "--output=json", "-f", "qcow2", str(disk)]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)[
        "virtual-size"
    ]


@needs_qemu_img
def test_a_resize_stashes_the_old_dir_builds_a_grown_copy_and_drop_removes_the_stash(
    state_dir: Path, base_image: str
) -> None:
    args = build_args(sha256=base_image, disk_gb=1)
    instance = args["instance"]["uuid"]
    virsh = FakeVirsh()
    build(state_dir, virsh, args)
    spec = DeleteSpec.from_args({"uuid": instance})
    ctx = ops.Context(state_dir, virsh)
    stash = state_dir / "instances" / f"{instance}.resize"
    assert ops.resize_stash(ctx, spec) == {"disk": str(stash / "disk")}
    assert virsh.domain is None and not (state_dir / "instances" / instance).exists()
    assert ops.resize_stash(ctx, spec) == {"disk": str(stash / "disk")}  # repeated: same
    # The stash keeps its base image in use: the cache cannot prune it.
    assert images.users(state_dir)[base_image] == [f"{instance}.resize"]
    bigger = {**args, "flavor": {**args["flavor"], "disk_gb": 2}}
    bigger.update(rebuild=True, disk_from=str(stash / "disk"), keep_disk_from=True)
    build(state_dir, virsh, bigger)
    assert virtual_size(state_dir / "instances" / instance / "disk") == 2 << 30
    assert virtual_size(stash / "disk") == 1 << 30  # the kept copy is untouched
    assert ops.resize_drop(ctx, spec) == {"existed": True}
    assert not stash.exists() and ops.resize_drop(ctx, spec) == {"existed": False}


def test_stash_of_an_instance_with_nothing_here_is_not_found(state_dir: Path) -> None:
    spec = DeleteSpec.from_args({"uuid": str(uuid.uuid4())})
    with pytest.raises(NotFound, match="no directory"):
        ops.resize_stash(ops.Context(state_dir, FakeVirsh()), spec)


def test_delete_removes_a_resize_stash_too(state_dir: Path) -> None:
    instance = str(uuid.uuid4())
    (state_dir / "instances" / f"{instance}.resize").mkdir(parents=True)
    assert delete(state_dir, FakeVirsh(), instance) == {"existed": False}
    assert not (state_dir / "instances" / f"{instance}.resize").exists()


def test_a_live_migration_spec_is_checked_before_anything_runs() -> None:
    good = {
        "uuid": str(uuid.uuid4()),
        "socket": "/var/lib/herd/migrate-0a1b2c.sock",
        "address": "10.0.0.2",
        "port": 49160,
        "disks_port": 49161,
    }
    spec = LiveMigrateSpec.from_args({**good, "timeout": 30})
    assert (spec.address, spec.port, spec.disks_port) == ("10.0.0.2", 49160, 49161)
    for bad, match in (
        ({"socket": "migrate-0a1b2c.sock"}, "socket must be an absolute path"),
        ({"socket": "/run/libvirt/libvirt-sock"}, "migrate-<hex>.sock"),
        ({"socket": "/var/lib/herd/migrate-0a.sock&mode=direct"}, "migrate-<hex>.sock"),
        ({"address": "10.0.0.2; reboot"}, "address must be a host name"),
        ({"timeout": 0}, "timeout must be an integer"),
        ({"port": 0}, "port must be an integer from 1 to 65535"),
        ({"disks_port": "49161"}, "disks_port must be an integer"),
    ):
        with pytest.raises(BadRequest, match=match):
            LiveMigrateSpec.from_args({**good, "timeout": 30, **bad})


def test_live_migrate_refuses_a_guest_that_is_not_running(state_dir: Path) -> None:
    spec = LiveMigrateSpec(
        str(uuid.uuid4()), f"{state_dir}/migrate-0a.sock", "10.0.0.2", 30, 49160, 49161
    )
    virsh = FakeVirsh(state="shutoff").bind(spec.uuid)
    with pytest.raises(BadRequest, match="only a running guest migrates live"):
        ops.live_migrate(ops.Context(state_dir, virsh), spec)
    assert virsh.calls == []


def cache_blob(state_dir: Path, data: bytes) -> str:
    upload = images.incoming_dir(state_dir) / "blob"
    upload.write_bytes(data)
    sha = images.file_sha256(upload)
    return images.commit(state_dir, sha, upload, "raw", images.ImagePolicy()).path.name


@needs_qemu_img
def test_a_guests_files_are_root_s_alone(state_dir: Path, base_image: str) -> None:
    """The seed carries user data and the disk the guest's own: 0600, which libvirt's
    DAC driver hands to QEMU's user while the guest runs (checked on the lab)."""
    kernel = cache_blob(state_dir, b"a kernel")
    ramdisk = cache_blob(state_dir, b"an initramfs")
    args = build_args(sha256=base_image)
    args["boot"] = {"kernel": kernel, "ramdisk": ramdisk, "cmdline": "console=ttyS0"}
    args["seed"] = base64.b64encode(b"#cloud-config\npassword: hunter2\n").decode()
    build(state_dir, FakeVirsh(), args)
    inst = state_dir / "instances" / args["instance"]["uuid"]
    for name in ("disk", "seed.iso", "kernel", "ramdisk"):
        assert (inst / name).stat().st_mode & 0o777 == 0o600, name
    assert (state_dir / "images" / base_image).stat().st_mode & 0o777 == 0o600


@needs_qemu_img
def test_a_cached_base_that_fails_inspection_is_never_used(state_dir: Path, tmp_path: Path) -> None:
    """A cache filled before images were inspected (or by hand): the build refuses it."""
    evil = tmp_path / "evil"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", str(evil)],
        check=True,
    )
    sha = images.file_sha256(evil)
    (state_dir / "images").mkdir()
    evil.rename(state_dir / "images" / sha)
    virsh = FakeVirsh()
    args = build_args(sha256=sha)
    with pytest.raises(images.FetchError, match="names a backing file"):
        build(state_dir, virsh, args)
    assert virsh.calls == []
    assert not (state_dir / "instances" / args["instance"]["uuid"]).exists()


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda state, tmp, uuid_: tmp / "precious", id="outside"),
        pytest.param(lambda state, tmp, uuid_: state / "jobs" / "j.json", id="a-journal"),
        pytest.param(
            lambda state, tmp, uuid_: (
                state / "images" / "incoming" / ".." / ".." / "jobs" / "j.json"
            ),
            id="dot-dot",
        ),
        pytest.param(
            lambda state, tmp, uuid_: state / "instances" / f"{uuid.uuid4()}.resize" / "disk",
            id="another-instances-stash",
        ),
    ],
)
def test_disk_from_never_takes_a_file_herd_did_not_carry_here(
    state_dir: Path, tmp_path: Path, where
) -> None:
    args = build_args()
    path = where(state_dir, tmp_path, args["instance"]["uuid"])
    images.incoming_dir(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"precious")
    args.update(disk_from=str(path))
    with pytest.raises(BadRequest, match=r"disk_from .*(is not in|must be an absolute path)"):
        build(state_dir, FakeVirsh(), args)
    assert path.read_bytes() == b"precious"


@needs_qemu_img
def test_a_carried_disk_is_rebased_on_this_hosts_base_and_a_data_file_refused(
    state_dir: Path, base_image: str, tmp_path: Path
) -> None:
    incoming = images.incoming_dir(state_dir)
    carried = incoming / "moved.migrating"
    other_host_base = tmp_path / "elsewhere" / base_image
    other_host_base.parent.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(other_host_base), "64M"], check=True
    )
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(other_host_base),
            str(carried),
        ],
        check=True,
    )
    other_host_base.unlink()  # only the source host has it: nothing here may open it
    args = build_args(sha256=base_image)
    args.update(disk_from=str(carried))
    build(state_dir, FakeVirsh(), args)
    disk = state_dir / "instances" / args["instance"]["uuid"] / "disk"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "qcow2", str(disk)],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert info["backing-filename"] == str(state_dir / "images" / base_image)
    assert not carried.exists()

    evil = incoming / "evil.migrating"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"data_file={tmp_path / 'data'}",
            str(evil),
            "1M",
        ],
        check=True,
    )
    args = build_args(sha256=base_image)
    args.update(disk_from=str(evil))
    with pytest.raises(images.FetchError, match="external data file"):
        build(state_dir, FakeVirsh(), args)
    assert not (state_dir / "instances" / args["instance"]["uuid"]).exists()


def test_live_migrate_never_unlinks_a_socket_outside_the_state_dir(
    state_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    path = elsewhere / "migrate-0a.sock"
    with sockets.socket(sockets.AF_UNIX) as server:
        server.bind(str(path))
        spec = LiveMigrateSpec(str(uuid.uuid4()), str(path), "10.0.0.2", 30, 49160, 49161)
        virsh = FakeVirsh(state="running").bind(spec.uuid)
        with pytest.raises(BadRequest, match=r"socket .* is not in"):
            ops.live_migrate(ops.Context(state_dir, virsh), spec)
        assert path.exists() and virsh.calls == []
