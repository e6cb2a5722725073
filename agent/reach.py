"""Can a live migration's streams get from the source to the destination? Asked first.

QEMU's memory stream and the NBD stream of the disk copy go straight from the source
host to the destination's address, on ports in libvirt's migration range
(``migration_port_min``..``migration_port_max`` in qemu.conf, 49152-49215 by default).
Nothing listens there until a migration starts, so knocking on a port says nothing: it
is refused whether or not a firewall stands in between. So the destination opens
short-lived listeners on the very ports the migration will then be told to use
(``listen``), the source connects to each and sends a token (``knock``), the
destination answers it and remembers which ports it heard (``close``). A port the
source reached but whose token the destination never heard is somebody else's (NAT, a
proxy, another host at that address).

libvirt's own connection needs no port: herd carries it over its SSH sessions
(orchestrator/rpc/tunnel.py). ``libvirt_answers`` asks the destination's libvirtd
through that same tunnel, from the source, as the migration will.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import os
import random
import re
import secrets
import selectors
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from agent import confine
from agent.errors import BadRequest, LibvirtError, NotFound
from agent.specs import check_address, check_socket, integer
from agent.virt import Virsh

log = logging.getLogger(__name__)

QEMU_CONF = "/etc/libvirt/qemu.conf"
DEFAULT_PORTS = (49152, 49215)  # libvirt's migration_port_min and _max
TOKEN_BYTES = 16
ACK = b"herd-reach-ok\n"
MAX_HOLD = 60.0  # listeners close by themselves after this, whoever forgets them
KNOCK_TIMEOUT = (0.1, 30.0)
LIBVIRT_TIMEOUT = 15.0
MAX_PORTS = 4
_PROBE_RE = re.compile(r"[0-9a-f]{16}")
_TOKEN_RE = re.compile(r"[0-9a-f]{%d}" % (2 * TOKEN_BYTES))
_PORT_LINE = re.compile(r"^\s*(migration_port_min|migration_port_max)\s*=\s*(\d+)\s*(#.*)?$")


def port_range(conf_text: Optional[str]) -> Tuple[int, int]:
    """The migration port range a qemu.conf sets, libvirt's defaults where it does not."""
    found = {"migration_port_min": DEFAULT_PORTS[0], "migration_port_max": DEFAULT_PORTS[1]}
    for line in (conf_text or "").splitlines():
        match = _PORT_LINE.match(line)
        if match:
            found[match.group(1)] = int(match.group(2))
    low, high = found["migration_port_min"], found["migration_port_max"]
    if not 1 <= low <= high <= 65535:
        return DEFAULT_PORTS
    return low, high


def read_port_range(path: str = QEMU_CONF) -> Tuple[int, int]:
    """The host's range; a qemu.conf herd's user may not read (Debian's is 0600 root)
    means the defaults, which libvirt uses unless an administrator changed them."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return port_range(fh.read())
    except OSError:
        return DEFAULT_PORTS


def _bare(address: str) -> str:
    return address[1:-1] if address.startswith("[") and address.endswith("]") else address


def _bind(address: str, port: int) -> Optional[socket.socket]:
    """A listener on ``port``: on ``address`` when the host has it, else on every
    address (as QEMU listens by default); None when the port is taken."""
    bare = _bare(address)
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    for host in (bare, "::" if family == socket.AF_INET6 else ""):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
            sock.listen(8)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return None
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EINVAL):
                raise
    return None


@dataclass
class Listeners:
    """One probe's listening sockets, served by one thread until closed or expired."""

    probe: str
    token: bytes
    sockets: Dict[int, socket.socket]
    deadline: float
    heard: Dict[int, bool] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    @property
    def ports(self) -> List[int]:
        return sorted(self.sockets)

    def start(self) -> None:
        self.heard = {port: False for port in self.sockets}
        self._thread = threading.Thread(target=self._serve, name=f"reach-{self.probe}", daemon=True)
        self._thread.start()

    def close(self) -> Dict[int, bool]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        return dict(self.heard)

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        for port, sock in self.sockets.items():
            selector.register(sock, selectors.EVENT_READ, port)
        try:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                for key, _ in selector.select(timeout=0.05):
                    self._answer(key.fileobj, key.data)  # type: ignore[arg-type]
        finally:
            selector.close()
            for sock in self.sockets.values():
                sock.close()

    def _answer(self, listener: socket.socket, port: int) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                got = b""
                while len(got) < len(self.token):
                    chunk = conn.recv(len(self.token) - len(got))
                    if not chunk:
                        return
                    got += chunk
                if not hmac.compare_digest(got, self.token):
                    return
                self.heard[port] = True
                conn.sendall(ACK)
                conn.recv(1)  # the source closes first: TIME_WAIT stays off this port
            except OSError:
                return


class Probes:
    """The listeners this agent holds open, by probe id; requests come on many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Dict[str, Listeners] = {}

    def listen(
        self, address: str, count: int, hold: float, ports: Optional[Tuple[int, int]] = None
    ) -> Listeners:
        """``count`` listeners on free ports of the range, tried in a random order so
        that two migrations to this host rarely reach for the same ones."""
        low, high = ports or read_port_range()
        candidates = list(range(low, high + 1))
        random.shuffle(candidates)
        bound: Dict[int, socket.socket] = {}
        try:
            for port in candidates:
                if len(bound) == count:
                    break
                sock = _bind(address, port)
                if sock is not None:
                    bound[port] = sock
        except OSError as exc:
            for sock in bound.values():
                sock.close()
            raise BadRequest(f"cannot listen on {address}: {exc.strerror or exc}") from None
        if len(bound) < count:
            for sock in bound.values():
                sock.close()
            raise BadRequest(
                f"only {len(bound)} of the migration ports {low}-{high} are free on this host, "
                f"{count} are needed"
            )
        probe = Listeners(
            probe=secrets.token_hex(8),
            token=secrets.token_bytes(TOKEN_BYTES),
            sockets=bound,
            deadline=time.monotonic() + min(hold, MAX_HOLD),
        )
        probe.start()
        with self._lock:
            self._reap()
            self._open[probe.probe] = probe
        log.info("reach probe %s: listening on %s, ports %s", probe.probe, address, probe.ports)
        return probe

    def close(self, probe_id: str) -> Dict[int, bool]:
        with self._lock:
            probe = self._open.pop(probe_id, None)
        if probe is None:
            raise NotFound(f"no reach probe {probe_id} on this host (closed, or expired)")
        return probe.close()

    def _reap(self) -> None:
        now = time.monotonic()
        for probe_id in [p for p, probe in self._open.items() if probe.deadline < now]:
            self._open.pop(probe_id).close()


def knock(address: str, port: int, token: bytes, timeout: float) -> Optional[str]:
    """Connect to ``address:port``, send the token, wait for the answer: None when the
    destination answered, else why not, in the words an operator reads in a refusal."""
    try:
        conn = socket.create_connection((_bare(address), port), timeout=timeout)
    except socket.timeout:
        return f"timed out after {timeout:g} s"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to host"
        return exc.strerror or str(exc)
    answer = b""
    with conn:
        try:
            conn.sendall(token)
            while len(answer) < len(ACK):
                chunk = conn.recv(len(ACK) - len(answer))
                if not chunk:
                    break
                answer += chunk
        except OSError:
            pass  # judged by the answer
    if answer != ACK:
        return "answered, but not by the destination's listener"
    return None


def libvirt_answers(uri: str) -> Optional[str]:
    """None when the destination's libvirtd answers at ``uri`` (the tunnel), else why not."""
    try:
        Virsh(uri).run(["version", "--daemon"], timeout=LIBVIRT_TIMEOUT)
    except LibvirtError as exc:
        return str(exc)
    return None


def listen_op(probes: Probes, args: Mapping[str, Any]) -> Dict[str, Any]:
    """``reach_listen``: open the listeners and say where, with the token to send."""
    address = _address(args, "reach_listen: ")
    count = integer(args, "count", "reach_listen: ", 1, MAX_PORTS)
    hold = integer(args, "hold", "reach_listen: ", 1, int(MAX_HOLD))
    low, high = read_port_range()
    probe = probes.listen(address, count, hold, (low, high))
    return {
        "probe": probe.probe,
        "token": probe.token.hex(),
        "ports": probe.ports,
        "range": [low, high],
    }


def close_op(probes: Probes, args: Mapping[str, Any]) -> Dict[str, Any]:
    """``reach_close``: close a probe's listeners; the ports whose token was heard."""
    probe = args.get("probe")
    if not isinstance(probe, str) or not _PROBE_RE.fullmatch(probe):
        raise BadRequest("reach_close: probe must be the id reach_listen returned")
    heard = probes.close(probe)
    return {"heard": sorted(port for port, yes in heard.items() if yes)}


def check_op(state_dir: Path, args: Mapping[str, Any]) -> Dict[str, Any]:
    """``reach_check``, on the source: the destination's libvirtd through herd's tunnel
    at ``socket``, then a knock on each port."""
    where = "reach_check: "
    address = _address(args, where)
    ports = args.get("ports")
    if not isinstance(ports, list) or not 1 <= len(ports) <= MAX_PORTS:
        raise BadRequest(f"{where}ports must be a list of 1 to {MAX_PORTS} TCP ports")
    for index in range(len(ports)):
        integer({"port": ports[index]}, "port", f"{where}ports[{index}]: ", 1, 65535)
    token = args.get("token")
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        raise BadRequest(f"{where}token must be the hex token reach_listen returned")
    timeout = args.get("timeout")
    low, high = KNOCK_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        timeout = None
    if timeout is None or not low <= timeout <= high:
        raise BadRequest(f"{where}timeout must be a number of seconds from {low:g} to {high:g}")
    timeout = float(timeout)
    tunnel = confine.entry_in(check_socket(args.get("socket"), where), [state_dir], "socket")
    try:
        libvirt = libvirt_answers(f"qemu+unix:///system?socket={tunnel}")
    finally:
        unlink_socket(tunnel)
    # Side by side: a firewall that drops costs one timeout, not one per port.
    secret = bytes.fromhex(token)

    def one(port: int) -> Dict[str, Any]:
        return {"port": port, "error": knock(address, port, secret, timeout)}

    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        knocks = list(pool.map(one, ports))
    return {"libvirt": libvirt, "ports": knocks}


def unlink_socket(path: Path) -> None:
    """Remove a tunnel's end on this host, which sshd leaves behind; only a socket."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def _address(args: Mapping[str, Any], where: str) -> str:
    try:
        return check_address(args.get("address"))
    except ValueError as exc:
        raise BadRequest(f"{where}address {exc}") from None
