"""The PROXY protocol v2 header a TCP load balancer puts before a client's bytes, accepted only from
the balancer's addresses (`dvic-central serve --proxy-protocol-from`, docs/operations.md).

Behind HAProxy in `mode tcp` every connection comes from HAProxy's address, so per-address limits,
the audit log and the access log would all see one client. With `send-proxy-v2` HAProxy starts each
connection to a replica with a binary header naming the client's address, then passes the client's
bytes (TLS included) untouched. The header comes before the TLS ClientHello, so it is read from the
raw socket first and TLS is started after it.

Only a connection from a listed address may, and must, start with the header: from anywhere else a
client could claim any address. So a connection from a listed address that sends anything else, or
not all of it within the handshake timeout, is closed (a log line says why, once a minute for each reason);
any other connection is served as without the option, and a PROXY header from it is not a TLS
ClientHello (or a request line) and is refused by TLS (or answered 400).

Parsing is a plain function (`header_length`, `parse_header`); `ProxyListener` accepts the
connections, reads exactly the header's bytes from a balancer's socket, and hands every connection
to the event loop with the server's protocol (as `create_server` would); the server's listener
passes no TLS context, its protocol being the TLS layer (central/tlsconn.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_BYTES = 16  # signature, version and command, family and transport, length
# The addresses (36 bytes for IPv6) and the TLVs HAProxy may add (`proxy-v2-options`): far below.
MAX_ADDRESS_BYTES = 2048
LOG_EVERY_S = 60.0
ACCEPT_RETRY_S = 0.1  # after a failed accept (no file descriptor left): the backlog holds the client

Peer = tuple[str, int]


class ProxyHeaderError(ValueError):
    """Not a valid PROXY v2 header; the message says what is wrong."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header says: `source` is the client's (address, port), None to keep the connection's
    own (a LOCAL header: the balancer's own health check; or an address family it does not name)."""

    source: Peer | None


def header_length(fixed: bytes | bytearray) -> int:
    """The whole header's length in bytes, from its first 16."""
    if len(fixed) < FIXED_BYTES or fixed[:12] != SIGNATURE:
        raise ProxyHeaderError("the connection does not start with a PROXY protocol v2 header")
    if fixed[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY protocol version {fixed[12] >> 4} (only 2 is accepted)")
    length: int = struct.unpack_from("!H", fixed, 14)[0]
    if length > MAX_ADDRESS_BYTES:
        raise ProxyHeaderError(f"PROXY header of {length} bytes past its first 16 (at most {MAX_ADDRESS_BYTES})")
    return FIXED_BYTES + length


_FAMILIES = {0x1: (socket.AF_INET, 4), 0x2: (socket.AF_INET6, 16)}


def parse_header(header: bytes) -> ProxyHeader:
    """The client's address from a whole header (`header_length` bytes)."""
    if len(header) != header_length(header):
        raise ProxyHeaderError("truncated PROXY header")
    command = header[12] & 0x0F
    if command == 0x0:  # LOCAL: the balancer speaking for itself (health checks)
        return ProxyHeader(None)
    if command != 0x1:
        raise ProxyHeaderError(f"unknown PROXY command {command}")
    family, transport = header[13] >> 4, header[13] & 0x0F
    if transport not in (0x0, 0x1):
        raise ProxyHeaderError("the PROXY header describes a datagram connection, not TCP")
    if family not in _FAMILIES:  # UNSPEC or a Unix socket: no client address to take
        return ProxyHeader(None)
    af, size = _FAMILIES[family]
    if len(header) < FIXED_BYTES + 2 * size + 4:
        raise ProxyHeaderError("the PROXY header is too short for its addresses")
    address = socket.inet_ntop(af, header[FIXED_BYTES:FIXED_BYTES + size])
    port = struct.unpack_from("!H", header, FIXED_BYTES + 2 * size)[0]
    return ProxyHeader((address, port))


def build_header(source: Peer, destination: Peer) -> bytes:
    """A PROXY v2 header for a TCP connection from `source` to `destination` (what a balancer
    sends; for tests and benchmarks)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def parse_sources(text: str) -> tuple[str, ...]:
    """`ADDR[,ADDR|CIDR...]` as networks (raises ValueError naming the bad part)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(f"expected addresses or networks such as 10.0.0.2 or 10.0.0.0/24, "
                             f"separated by commas; got {part!r}") from None
    return tuple(out)


class Balancers:
    """The addresses whose connections must start with a PROXY header."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def listed(self, peername: Any) -> bool:
        if not isinstance(peername, tuple) or not peername:
            return False
        try:
            address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class ProxyListener:
    """A listening socket whose connections from `balancers` start with a PROXY header.

    It accepts connections itself: one from a listed address has its header read from the raw
    socket (exactly its bytes, nothing of the TLS after it), within `timeout` counted from the
    accept; then every connection, listed or not, is handed to the event loop as an accepted
    socket (`connect_accepted_socket`, plain TCP: TLS is the protocol's, central/tlsconn.py). `make_protocol(source)` makes the server's protocol for a client at `source` (None:
    the connection's own address). Exposes what aiohttp's site reads of an asyncio Server."""

    def __init__(self, balancers: Balancers, make_protocol: Callable[[Peer | None], asyncio.BaseProtocol],
                 timeout: float) -> None:
        self.balancers = balancers
        self.make_protocol = make_protocol
        self.timeout = timeout
        self.refused = 0
        self.sockets: tuple[socket.socket, ...] = ()
        self._last_log: dict[str, float] = {}  # by the reason's first words: each kind told once a minute
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, backlog: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family, backlog=backlog)
        listening.setblocking(False)
        self.sockets = (listening,)
        self._spawn(self._accept(listening))

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for listening in self.sockets:
            listening.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listening)
            except OSError as exc:  # out of file descriptors: the connection waits in the backlog
                self._log_once_a_minute("accepting", "accepting a connection failed: %s (retried)", exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            conn.setblocking(False)
            self._spawn(self._serve(conn, peer))

    async def _serve(self, conn: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        source: Peer | None = None
        if self.balancers.listed(peer):
            try:
                source = await asyncio.wait_for(self._read_header(loop, conn), self.timeout)
            except _Refused as exc:
                self._refuse(conn, peer, str(exc))
                return
            except TimeoutError:
                self._refuse(conn, peer, f"no whole PROXY header within {self.timeout:g} s")
                return
            except OSError:  # reset by the peer
                conn.close()
                return
            except BaseException:  # the server stopping: the socket is still ours
                conn.close()
                raise
        try:
            await loop.connect_accepted_socket(lambda: self.make_protocol(source), conn)
        except OSError as exc:  # the socket failed before the loop took it
            log.debug("connection from %s not taken: %s", _address(peer), exc)

    async def _read_header(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> Peer | None:
        """The client's address from the header (None: the connection's own)."""
        buffer = bytearray(FIXED_BYTES)
        await _read_exactly(loop, conn, buffer, 0)
        try:
            whole = header_length(buffer)
            buffer = buffer + bytes(whole - FIXED_BYTES)  # (a new one: the loop may still hold a view of the old)
            await _read_exactly(loop, conn, buffer, FIXED_BYTES)
            return parse_header(bytes(buffer)).source
        except ProxyHeaderError as exc:
            raise _Refused(str(exc)) from None

    def _refuse(self, conn: socket.socket, peer: Any, reason: str) -> None:
        conn.close()
        if not reason:  # connected and closed without a byte: a TCP health check
            return
        self.refused += 1
        self._log_once_a_minute(" ".join(reason.split()[:3]),
                                "connection from %s closed: %s (--proxy-protocol-from; %d refused so far,"
                                " each reason told once a minute)", _address(peer), reason, self.refused)

    def _log_once_a_minute(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[kind] = now
            log.warning(message, *args)


class _Refused(Exception):
    """Why a connection from a balancer is closed ("": quietly, a health check)."""


async def _read_exactly(loop: asyncio.AbstractEventLoop, conn: socket.socket, buffer: bytearray, start: int) -> None:
    view = memoryview(buffer)
    got = start
    while got < len(buffer):
        n = await loop.sock_recv_into(conn, view[got:])
        if n == 0:
            raise _Refused(f"the connection ended inside the PROXY header ({got} bytes)" if got else "")
        got += n


def _address(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
