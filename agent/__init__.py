"""herd's hypervisor agent: one long-lived process per host, driven over stdin/stdout.

It runs on the hypervisor's own Python (3.9+) with only the standard library plus the
jinja2 and markupsafe copies shipped inside its bundle, so nothing is installed there.
The contract with the orchestrator is docs/protocol.md.
"""

__version__ = "0.1.0"

PROTOCOL_VERSION = 1
