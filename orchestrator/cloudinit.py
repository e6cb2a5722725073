"""The NoCloud seed: meta-data, user-data and network-config on an ISO labelled cidata.

Made here, in Python (pycdlib), rather than on the host: the host then needs no
genisoimage/xorriso/cloud-localds, and the agent just writes the bytes it is given.
The three documents come from ``templates/cloud-init/``; the ISO carries Joliet and
Rock Ridge names so every cloud-init (and our busybox test guest) finds
``meta-data``, not ``METADATA.;1``.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
import pycdlib

from orchestrator.errors import InvalidInput
from orchestrator.networking import PortView

# Nova's number, counted on what herd keeps: the file's own bytes. Nova counts the
# base64 text of the API request (nova/compute/api.py, MAX_USERDATA_SIZE, a MySQL TEXT
# column), so herd takes about a third more data than Nova would; README says so.
MAX_USER_DATA = 65535
SEED_LABEL = "cidata"
_FILES = ("meta-data", "user-data", "network-config")


@dataclass(frozen=True)
class SeedInstance:
    uuid: str
    hostname: str


def _template_source(name: str) -> str:
    return (
        importlib.resources.files("herd_templates")
        .joinpath("cloud-init", name)
        .read_text(encoding="utf-8")
    )


@functools.cache
def _environment() -> jinja2.Environment:
    # YAML, not markup: no autoescape; values that could break YAML go through tojson.
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def check_user_data(data: bytes, origin: str) -> str:
    """User data as stored: UTF-8 text of at most MAX_USER_DATA bytes (the file's
    bytes, not base64), else a one-line refusal."""
    if len(data) > MAX_USER_DATA:
        raise InvalidInput(
            f"{origin}: user data is {len(data)} bytes; the limit is {MAX_USER_DATA} bytes "
            "of the file as it is (not base64)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{origin}: user data must be UTF-8 text ({exc.reason})") from None


def render(
    instance: SeedInstance,
    ports: Sequence[PortView],
    public_keys: Sequence[str] = (),
    user_data: str | None = None,
) -> dict[str, str]:
    """The three NoCloud documents, by file name."""
    context = {
        "instance": instance,
        "ports": list(ports),
        "public_keys": list(public_keys),
        "user_data": user_data,
    }
    env = _environment()
    return {name: env.get_template(f"{name}.j2").render(**context) for name in _FILES}


def seed_iso(documents: dict[str, str]) -> bytes:
    """An ISO 9660 image labelled ``cidata`` holding ``documents``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for name, text in documents.items():
        data = text.encode("utf-8")
        iso_name = "/" + name.replace("-", "_").upper()[:30] + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
