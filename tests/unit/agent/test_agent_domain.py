"""Rendering templates/domain.xml.j2: escaped, parseable, carrying herd's metadata."""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from agent_testlib import TEMPLATES, build_args

from agent import domain
from agent.errors import BadRequest
from agent.specs import BuildSpec
from agent.virt import HERD_NS

NS = {"herd": HERD_NS}
UUID = "0b7e6a52-6a43-4c2c-9d55-3a3b9a1b2c3d"


def render(spec: BuildSpec, arch: str = "x86_64", **files: Path) -> str:
    inst = Path("/var/lib/herd/instances") / spec.instance.uuid
    paths = domain.InstanceFiles(disk=inst / "disk", console_log=inst / "console.log", **files)
    return domain.render(spec, arch, paths)


def _disk(root: ET.Element, dev: str) -> ET.Element | None:
    return next(
        (d for d in root.iterfind("devices/disk") if d.find("target").get("dev") == dev), None
    )


def test_direct_kernel_boot_seed_disk_and_nics_are_rendered() -> None:
    args = build_args(UUID)
    args["boot"] = {"kernel": "b" * 64, "ramdisk": "c" * 64, "cmdline": "console=ttyS0 x=<y>"}
    args["nics"] = [
        {"mac": "02:68:64:00:00:01", "kind": "user"},
        {"mac": "02:68:64:00:00:02", "kind": "bridge", "source": "br0"},
        {"mac": "02:68:64:00:00:03", "kind": "network", "source": "default"},
    ]
    inst = Path("/var/lib/herd/instances") / UUID
    root = ET.fromstring(
        render(
            BuildSpec.from_args(args),
            kernel=inst / "kernel",
            initrd=inst / "ramdisk",
            seed=inst / "seed.iso",
        )
    )
    assert root.findtext("os/kernel") == str(inst / "kernel")
    assert root.findtext("os/initrd") == str(inst / "ramdisk")
    assert root.findtext("os/cmdline") == "console=ttyS0 x=<y>"
    assert root.find("os/boot") is None  # the kernel boots, not the disk
    seed = _disk(root, "vdb")
    assert seed is not None
    assert seed.find("source").get("file") == str(inst / "seed.iso")
    assert seed.find("readonly") is not None
    nics = root.findall("devices/interface")
    assert [n.get("type") for n in nics] == ["user", "bridge", "network"]
    assert [n.find("mac").get("address") for n in nics] == [
        "02:68:64:00:00:01",
        "02:68:64:00:00:02",
        "02:68:64:00:00:03",
    ]
    assert nics[1].find("source").get("bridge") == "br0"
    assert nics[2].find("source").get("network") == "default"
    assert all(n.find("model").get("type") == "virtio" for n in nics)


def test_a_disk_image_boots_from_its_disk_without_seed_or_nics() -> None:
    root = ET.fromstring(render(BuildSpec.from_args(build_args(UUID))))
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None
    assert _disk(root, "vdb") is None
    assert root.findall("devices/interface") == []


@pytest.mark.parametrize(
    ("nics", "message"),
    [
        ([{"mac": "nope", "kind": "user"}], "nics[0].mac must be a MAC address"),
        ([{"mac": "02:68:64:00:00:01", "kind": "tap"}], "nics[0].kind must be one of"),
        (
            [{"mac": "02:68:64:00:00:01", "kind": "bridge"}],
            "nics[0].source must be a Linux bridge name",
        ),
        (
            [{"mac": "02:68:64:00:00:01", "kind": "bridge", "source": "br0'/><x"}],
            "nics[0].source must be a Linux bridge name",
        ),
    ],
)
def test_bad_nics_are_refused_before_anything_runs(nics: list, message: str) -> None:
    args = build_args(UUID)
    args["nics"] = nics
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        BuildSpec.from_args(args)


def test_instance_name_with_markup_is_escaped_and_round_trips() -> None:
    spec = BuildSpec.from_args(build_args(UUID, name="a<b>&c \"d\" 'e'"))
    xml_text = render(spec)
    assert "a<b>" not in xml_text
    assert "&lt;b&gt;&amp;c" in xml_text
    root = ET.fromstring(xml_text)
    assert root.findtext("metadata/herd:instance/herd:name", namespaces=NS) == spec.instance.name
    assert root.findtext("title") == spec.instance.name


def test_domain_carries_name_uuid_type_and_herd_metadata() -> None:
    spec = BuildSpec.from_args(build_args(UUID, domain_type="kvm", vcpus=2, ram_mb=512))
    root = ET.fromstring(render(spec))
    assert root.tag == "domain"
    assert root.get("type") == "kvm"
    assert root.findtext("name") == f"herd-{UUID}"
    assert root.findtext("uuid") == UUID
    meta = root.find("metadata/herd:instance", NS)
    assert meta is not None
    assert meta.findtext("herd:uuid", namespaces=NS) == UUID
    assert meta.find("herd:flavor", NS).get("name") == "m1.tiny"
    assert meta.find("herd:image", NS).get("name") == "blank"
    assert root.find("memory").get("unit") == "MiB"
    assert root.findtext("memory") == "512"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("on_poweroff") == "destroy"


def test_root_disk_is_a_virtio_qcow2_and_the_console_is_logged() -> None:
    spec = BuildSpec.from_args(build_args(UUID))
    root = ET.fromstring(render(spec))
    disk = root.find("devices/disk")
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == f"/var/lib/herd/instances/{UUID}/disk"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    serial = root.find("devices/serial")
    assert serial.get("type") == "pty"
    assert serial.find("log").attrib == {
        "file": f"/var/lib/herd/instances/{UUID}/console.log",
        "append": "on",
    }
    assert root.find("devices/console").get("type") == "pty"
    assert root.find("devices/interface") is None  # networks come later


@pytest.mark.parametrize(
    ("arch", "machine"),
    [("x86_64", "pc"), ("aarch64", "virt"), ("riscv64", None)],
    ids=["x86-uses-pc", "arm-uses-virt", "unknown-arch-lets-libvirt-choose"],
)
def test_machine_type_follows_the_host_arch(arch: str, machine: str | None) -> None:
    root = ET.fromstring(render(BuildSpec.from_args(build_args(UUID)), arch=arch))
    os_type = root.find("os/type")
    assert os_type.get("arch") == arch
    assert os_type.get("machine") == machine
    assert (root.find("features/acpi") is not None) == (arch == "x86_64")


def test_validate_refuses_xml_that_is_not_this_instances_domain() -> None:
    spec = BuildSpec.from_args(build_args(UUID))
    other = BuildSpec.from_args(build_args("11111111-2222-3333-4444-555555555555"))
    with pytest.raises(domain.TemplateError, match="name is"):
        domain.validate(render(other), spec)
    with pytest.raises(domain.TemplateError, match="does not parse"):
        domain.validate("<domain>", spec)


def test_templates_are_found_as_the_herd_templates_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the bundle does: no override, templates read through importlib.resources."""
    monkeypatch.delenv(domain.TEMPLATES_ENV)
    spec_ = importlib.util.spec_from_file_location(
        "herd_templates", TEMPLATES / "__init__.py", submodule_search_locations=[str(TEMPLATES)]
    )
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "herd_templates", module)
    assert "<domain" in domain.template_source(domain.TEMPLATE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(lambda a: a["instance"].update(uuid="x"), "instance.uuid", id="bad-uuid"),
        pytest.param(
            lambda a: a["instance"].update(name="two\nlines"), "control", id="newline-in-name"
        ),
        pytest.param(lambda a: a["instance"].update(name=""), "instance.name", id="empty-name"),
        pytest.param(lambda a: a["flavor"].update(vcpus=0), "flavor.vcpus", id="zero-vcpus"),
        pytest.param(lambda a: a["flavor"].update(ram_mb=True), "flavor.ram_mb", id="bool-ram"),
        pytest.param(
            lambda a: a["flavor"].update(disk_gb="10"), "flavor.disk_gb", id="string-disk"
        ),
        pytest.param(
            lambda a: a["image"].update(sha256="A" * 64), "image.sha256", id="uppercase-sha"
        ),
        pytest.param(
            lambda a: a["image"].update(format="vmdk"), "image.format", id="unknown-format"
        ),
        pytest.param(lambda a: a.update(domain_type="xen"), "domain_type", id="unknown-type"),
        pytest.param(lambda a: a.pop("flavor"), "flavor must be an object", id="no-flavor"),
    ],
)
def test_bad_build_args_are_refused_before_anything_runs(change, message: str) -> None:
    args = build_args(UUID)
    change(args)
    with pytest.raises(BadRequest, match=message):
        BuildSpec.from_args(args)


def test_uppercase_uuid_is_normalised() -> None:
    spec = BuildSpec.from_args(build_args(UUID.upper()))
    assert spec.instance.uuid == UUID
