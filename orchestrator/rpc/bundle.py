"""The agent bundle: a zipapp of `agent/`, the templates, jinja2 and markupsafe.

It is built from the installed package, so the agent always matches the orchestrator
that pushes it, and it is addressed by the hash of its bytes: a host that already has
that hash gets nothing pushed. The zip is deterministic (sorted entries, fixed
timestamps) so the same code always gives the same hash.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable

BUNDLED_PACKAGES = ("agent", "herd_templates", "jinja2", "markupsafe")
_MAIN = b"import sys\nfrom agent.__main__ import main\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class AgentBundle:
    data: bytes
    sha256: str

    @property
    def remote_name(self) -> str:
        return f"agent-{self.sha256}.pyz"


def _walk(node: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        name = f"{prefix}/{child.name}"
        if child.is_dir():
            if child.name != "__pycache__":
                yield from _walk(child, name)
        elif child.name.endswith((".py", ".j2")):
            yield name, child


def _entries() -> Iterator[tuple[str, bytes]]:
    yield "__main__.py", _MAIN
    for package in BUNDLED_PACKAGES:
        root = importlib.resources.files(package)
        files = dict(_walk(root, package))
        # In the bundle the templates are a regular package: zipimport on the
        # hypervisor's Python (3.9+) finds resources of regular packages only.
        files.setdefault(f"{package}/__init__.py", None)  # type: ignore[arg-type]
        for name in sorted(files):
            node = files[name]
            yield name, (node.read_bytes() if node is not None else b"")


@functools.cache
def agent_bundle() -> AgentBundle:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in _entries():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    data = buffer.getvalue()
    return AgentBundle(data=data, sha256=hashlib.sha256(data).hexdigest())
