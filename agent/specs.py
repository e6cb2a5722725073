"""Job arguments, checked once and turned into typed records.

The orchestrator is trusted, but a malformed request must fail as ``BadRequest`` at
``job_start`` (answered at once) rather than halfway through a build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping

from agent.errors import BadRequest

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# XML 1.0 cannot carry most control characters even escaped; names are one line anyway.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

DOMAIN_TYPES = ("kvm", "qemu")
IMAGE_FORMATS = ("qcow2", "raw")


def obj(args: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = args.get(key)
    if not isinstance(value, Mapping):
        raise BadRequest(f"{where}{key} must be an object")
    return value


def text(args: Mapping[str, Any], key: str, where: str, max_len: int = 255) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadRequest(f"{where}{key} must be a string of 1 to {max_len} characters")
    if _CONTROL_RE.search(value):
        raise BadRequest(f"{where}{key} must not contain control characters")
    return value


def integer(args: Mapping[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{where}{key} must be an integer from {low} to {high}")
    return value


def choice(args: Mapping[str, Any], key: str, where: str, allowed: tuple) -> str:
    value = args.get(key)
    if value not in allowed:
        raise BadRequest(f"{where}{key} must be one of {', '.join(allowed)}")
    return value


def uuid(args: Mapping[str, Any], key: str, where: str = "") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not UUID_RE.match(value.lower()):
        raise BadRequest(f"{where}{key} must be a UUID in canonical form")
    return value.lower()


def sha256(args: Mapping[str, Any], key: str, where: str = "") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise BadRequest(f"{where}{key} must be 64 lowercase hex digits")
    return value


def mapping(args: Mapping[str, Any], key: str, where: str) -> Dict[str, Any]:
    value = args.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest(f"{where}{key} must be an object")
    return dict(value)


@dataclass(frozen=True)
class Instance:
    uuid: str
    name: str
    hostname: str


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int  # 0: the root disk keeps the image's own size, as in Nova
    extra_specs: Dict[str, Any]


@dataclass(frozen=True)
class Image:
    name: str
    sha256: str
    format: str
    properties: Dict[str, Any]


@dataclass(frozen=True)
class BuildSpec:
    instance: Instance
    flavor: Flavor
    image: Image
    domain_type: str

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> BuildSpec:
        inst = obj(args, "instance", "build: ")
        flav = obj(args, "flavor", "build: ")
        img = obj(args, "image", "build: ")
        return cls(
            instance=Instance(
                uuid=uuid(inst, "uuid", "build: instance."),
                name=text(inst, "name", "build: instance."),
                hostname=text(inst, "hostname", "build: instance.", max_len=253),
            ),
            flavor=Flavor(
                name=text(flav, "name", "build: flavor."),
                vcpus=integer(flav, "vcpus", "build: flavor.", 1, 1024),
                ram_mb=integer(flav, "ram_mb", "build: flavor.", 16, 16 * 1024 * 1024),
                disk_gb=integer(flav, "disk_gb", "build: flavor.", 0, 1024 * 1024),
                extra_specs=mapping(flav, "extra_specs", "build: flavor."),
            ),
            image=Image(
                name=text(img, "name", "build: image."),
                sha256=sha256(img, "sha256", "build: image."),
                format=choice(img, "format", "build: image.", IMAGE_FORMATS),
                properties=mapping(img, "properties", "build: image."),
            ),
            domain_type=choice(args, "domain_type", "build: ", DOMAIN_TYPES),
        )

    @property
    def lock_key(self) -> str:
        return self.instance.uuid


@dataclass(frozen=True)
class DeleteSpec:
    uuid: str

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> DeleteSpec:
        return cls(uuid=uuid(args, "uuid", "delete: "))

    @property
    def lock_key(self) -> str:
        return self.uuid
