"""How herd writes an address and a port for people to read.

``2001:db8::30:22`` is itself a valid IPv6 address, so an IPv6 address followed by
``:port`` cannot be read back; OpenSSH (known_hosts, ProxyJump), URIs (RFC 3986) and
``ssh -W`` all put it in brackets: ``[2001:db8::30]:22``. Every table and message that
shows an endpoint goes through ``host_port`` so they all agree.
"""

from __future__ import annotations


def host_port(address: str, port: int | None) -> str:
    """``ADDRESS:PORT``, with an IPv6 address bracketed; no port, the address alone."""
    if not port:
        return address
    if ":" in address and not address.startswith("["):
        return f"[{address}]:{port}"
    return f"{address}:{port}"
