"""Render the libvirt domain XML from templates/domain.xml.j2 and check it.

Jinja2 with autoescape on, so an instance called ``<&>`` is text, not markup; the
result is then parsed, and its name, UUID and herd metadata checked, before anything
reaches ``virsh define``: a template bug fails here with a clear message, not as a
half-understood libvirt error.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

from agent import __version__

if TYPE_CHECKING:
    import jinja2
from agent.errors import AgentError
from agent.specs import BuildSpec
from agent.virt import HERD_NS, domain_name

TEMPLATE = "domain.xml.j2"
TEMPLATES_ENV = "HERD_TEMPLATES_DIR"
TEMPLATES_PACKAGE = "herd_templates"

# Machine types libvirt expands to the newest versioned one (pc -> pc-i440fx-7.2).
_MACHINES = {"x86_64": "pc", "i686": "pc", "aarch64": "virt"}


class TemplateError(AgentError):
    """The rendered XML is not a domain we can define: a herd bug, reported as such."""

    type = "Internal"


def template_source(name: str) -> str:
    """A template's text: from ``$HERD_TEMPLATES_DIR`` in a checkout, else the bundle.

    In the zipapp the templates are the package ``herd_templates``, which only
    importlib.resources can read (they are zip members, not files).
    """
    override = os.environ.get(TEMPLATES_ENV)
    if override:
        return Path(override, name).read_text(encoding="utf-8")
    resource = importlib.resources.files(TEMPLATES_PACKAGE).joinpath(name)
    return resource.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def environment() -> "jinja2.Environment":
    # Imported on first render: most agent sessions (surveys, power actions) render
    # nothing, and jinja2 is a third of an agent's start-up time.
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FunctionLoader(template_source),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


@dataclass(frozen=True)
class InstanceFiles:
    """Where one instance's files live on the host (all in its instance directory)."""

    disk: Path
    console_log: Path
    seed: Optional[Path] = None
    kernel: Optional[Path] = None
    initrd: Optional[Path] = None
    # The attached volumes' files, in the spec's order (outside the instance directory).
    volumes: Tuple[Path, ...] = ()


def render(spec: BuildSpec, arch: str, files: InstanceFiles) -> str:
    """The domain XML for ``spec``; raises ``TemplateError`` if it does not check out."""
    xml_text = (
        environment()
        .get_template(TEMPLATE)
        .render(
            domain_type=spec.domain_type,
            name=domain_name(spec.instance.uuid),
            uuid=spec.instance.uuid,
            instance=spec.instance,
            flavor=spec.flavor,
            image=spec.image,
            arch=arch,
            machine=_MACHINES.get(arch),
            x86=arch in ("x86_64", "i686"),
            disk_path=str(files.disk),
            disk_format=spec.root_volume.format if spec.root_volume else "qcow2",
            console_log=str(files.console_log),
            seed_path=str(files.seed) if files.seed else None,
            kernel_path=str(files.kernel) if files.kernel else None,
            initrd_path=str(files.initrd) if files.initrd else None,
            cmdline=spec.boot.cmdline if spec.boot else "",
            nics=spec.nics,
            volumes=[
                {"path": str(path), "format": v.format, "device": v.device, "serial": v.volume}
                for v, path in zip(spec.volumes, files.volumes)  # noqa: B905 (3.9: no strict=)
            ],
            agent_version=__version__,
        )
    )
    validate(xml_text, spec)
    return xml_text


def validate(xml_text: str, spec: BuildSpec) -> None:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise TemplateError(f"rendered domain XML does not parse: {exc}") from exc
    expected = {
        "root element": (root.tag, "domain"),
        "name": (root.findtext("name"), domain_name(spec.instance.uuid)),
        "uuid": (root.findtext("uuid"), spec.instance.uuid),
        "type": (root.get("type"), spec.domain_type),
        "metadata uuid": (
            root.findtext(f"metadata/{{{HERD_NS}}}instance/{{{HERD_NS}}}uuid"),
            spec.instance.uuid,
        ),
        "metadata name": (
            root.findtext(f"metadata/{{{HERD_NS}}}instance/{{{HERD_NS}}}name"),
            spec.instance.name,
        ),
    }
    macs = [m.get("address") for m in root.iterfind("devices/interface/mac")]
    expected["NIC MACs"] = (macs, [nic.mac for nic in spec.nics])
    devices = [t.get("dev") for t in root.iterfind("devices/disk/target")]
    expected["volume devices"] = (
        [d for d in devices if d not in ("vda", "vdb")],
        [v.device for v in spec.volumes],
    )
    for what, (got, want) in expected.items():
        if got != want:
            raise TemplateError(f"rendered domain XML: {what} is {got!r}, expected {want!r}")
