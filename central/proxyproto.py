"""The PROXY protocol v2 header a TCP load balancer puts before a client's bytes, accepted only from
the balancer's addresses (`dvic-central serve --proxy-protocol-from`, docs/operations.md).

Behind HAProxy in `mode tcp` every connection comes from HAProxy's address, so per-address limits,
the audit log and the access log would all see one client. With `send-proxy-v2` HAProxy starts each
connection to a replica with a binary header naming the client's address, then passes the client's
bytes (TLS included) untouched. The header comes before the TLS ClientHello, so it is read from the
raw socket first and TLS is started after it (`loop.start_tls`).

Only a connection from a listed address may, and must, start with the header: from anywhere else a
client could claim any address. So a connection from a listed address that sends anything else, or
not all of it within the handshake timeout, is closed (one log line a minute says why and how many);
any other connection is served as without the option, and a PROXY header from it is not a TLS
ClientHello (or a request line) and is refused by TLS (or answered 400).

Parsing is a plain function (`header_length`, `parse_header`); `ProxyFront` is the protocol that
reads exactly the header's bytes from the socket (a buffered protocol given a buffer of the size
still missing, so nothing after the header is read) and then hands the connection to the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
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

Peer = tuple[str, int]


class ProxyHeaderError(ValueError):
    """Not a valid PROXY v2 header; the message says what is wrong."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header says: `source` is the client's (address, port), None to keep the connection's
    own (a LOCAL header: the balancer's own health check; or an address family it does not name)."""

    source: Peer | None


def header_length(fixed: bytes) -> int:
    """The whole header's length in bytes, from its first 16."""
    if len(fixed) < FIXED_BYTES or fixed[:12] != SIGNATURE:
        raise ProxyHeaderError("the connection does not start with a PROXY protocol v2 header")
    if fixed[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY protocol version {fixed[12] >> 4} (only 2 is accepted)")
    length = struct.unpack_from("!H", fixed, 14)[0]
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


class Front:
    """What every connection of a listener with `--proxy-protocol-from` goes through first: the
    header read from a listed address, then TLS (or plain HTTP) handed to `serve`, which makes the
    server's protocol for a transport and the client's address (None: the connection's own)."""

    def __init__(self, balancers: Balancers, serve: Callable[[asyncio.BaseTransport, Peer | None], None],
                 ssl_context: ssl.SSLContext | None, timeout: float) -> None:
        self.balancers = balancers
        self.serve = serve
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.refused = 0
        self._last_log = -LOG_EVERY_S
        self._handshakes: set[asyncio.Task[None]] = set()

    def protocol(self) -> ProxyFront:
        return ProxyFront(self)

    def refuse(self, transport: asyncio.BaseTransport, peer: Any, reason: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning("connection from %s closed: %s (--proxy-protocol-from; %d so far, told once a minute)",
                        _address(peer), reason, self.refused)
        transport.abort()

    def hand_over(self, transport: Any, source: Peer | None) -> None:
        """Past the header (or none expected): TLS, then the server's protocol."""
        if self.ssl_context is None:
            self.serve(transport, source)
            transport.resume_reading()
            return
        task = asyncio.get_running_loop().create_task(self._start_tls(transport, source))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, transport: Any, source: Peer | None) -> None:
        assert self.ssl_context is not None
        early = EarlyBytes()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, early, self.ssl_context, server_side=True,
                ssl_handshake_timeout=self.timeout, ssl_shutdown_timeout=self.timeout)
        except OSError as exc:  # a failed or overdue handshake (start_tls closed the socket)
            log.debug("TLS handshake from %s failed: %s", _address(transport.get_extra_info("peername")), exc)
            transport.abort()
            return
        if tls is None or early.lost:
            return
        self.serve(tls, source)
        early.pass_on(tls)


class ProxyFront(asyncio.BufferedProtocol):
    """One connection until its header is read: reads exactly the header's bytes (16, then the
    rest it announces), within the front's timeout counted from the connection (a slow sender
    gains nothing)."""

    __slots__ = ("front", "transport", "buffer", "got", "need", "timer")

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: Any = None
        self.buffer = bytearray(FIXED_BYTES)
        self.got = 0
        self.need = FIXED_BYTES
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are no asyncio.Transport
        transport.pause_reading()  # nothing is read before it is known who reads it
        if not self.front.balancers.listed(transport.get_extra_info("peername")):
            self.front.hand_over(transport, None)
            return
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(self.front.timeout, self._overdue)
        transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)[self.got:self.need]

    def buffer_updated(self, nbytes: int) -> None:
        self.got += nbytes
        if self.got < self.need:
            return
        try:
            if self.need == FIXED_BYTES:
                self.need = header_length(self.buffer)
                self.buffer = self.buffer + bytes(self.need - FIXED_BYTES)  # (the read may still hold a view of the old one)
                if self.got < self.need:
                    return
            header = parse_header(bytes(self.buffer))
        except ProxyHeaderError as exc:
            self._end(str(exc))
            return
        self._stop_timer()
        transport = self.transport
        assert transport is not None
        self.transport = None
        transport.pause_reading()
        self.front.hand_over(transport, header.source)

    def eof_received(self) -> bool:
        if self.got:
            self._end(f"the connection ended inside the PROXY header ({self.got} bytes)")
        else:  # a TCP health check: connect, close
            self._end("")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.transport = None

    def _overdue(self) -> None:
        self.timer = None
        self._end(f"no whole PROXY header within {self.front.timeout:g} s ({self.got} bytes)")

    def _end(self, reason: str) -> None:
        self._stop_timer()
        transport, self.transport = self.transport, None
        if transport is None:
            return
        if reason:
            self.front.refuse(transport, transport.get_extra_info("peername"), reason)
        else:
            transport.abort()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class EarlyBytes(asyncio.Protocol):
    """The protocol above TLS until `start_tls` returns: what the client sent right after its
    handshake (decrypted in the same read that completed it) is kept for the server's protocol."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def eof_received(self) -> bool:
        self.eof = True
        return True  # the server's protocol decides once it has the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def pass_on(self, transport: Any) -> None:
        protocol = transport.get_protocol()
        for chunk in self.chunks:
            _deliver(protocol, chunk)
        if self.eof and not protocol.eof_received():  # type: ignore[attr-defined]
            transport.close()


def _deliver(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        while data:
            buffer = protocol.get_buffer(len(data))
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]
    else:
        protocol.data_received(data)  # type: ignore[attr-defined]


def _address(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
