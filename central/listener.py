"""The listening socket and what it lets in: timeouts and connection limits (docs/operations.md).

aiohttp closes a kept-alive connection that stays idle (`keepalive_timeout`, our idle timeout),
but nothing closes a connection that finished TLS and never sends a whole request head, nor bounds
how many connections are open: a few hundred idle sockets used up the server's file descriptors.
Every connection starts in a `Doorway` (its first protocol), which reads the first request head
and then hands the connection to aiohttp or, for a node's websocket, to a link served below
aiohttp (central/nodelink.py); `ConnectionGuard` counts what the doorways admit, so it costs
nothing per request or websocket frame:
- the TLS handshake must end within `head_timeout` (central/tlsconn.py), then the
  first request's head must arrive within `head_timeout` again, or the connection is dropped;
- beyond `max_connections` open connections, or `max_per_address` from one client address for
  connections without a node certificate, a new connection is answered 503 and closed. Nodes are
  exempt from the per-address bound (a lab's nodes often share one NAT address), and a tenth of
  `max_connections` is kept for them alone, so a flood of anonymous connections cannot keep a
  node from reconnecting. A connection is counted once its TLS handshake is over (its client
  certificate is known then); until then only the handshake timeout bounds it. With several
  replicas an address's connections on the others count toward `max_per_address` too
  (central/cluster/conns.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .config import ConnectionLimits
from .proxyproto import Balancers, Peer, ProxyListener
from .tlsconn import TlsConnection, TlsListener

log = logging.getLogger(__name__)

# File descriptors kept for everything but client sockets: the database, its WAL, recordings,
# releases, the event loop's own.
FD_RESERVE = 256
# Refusals are logged at most this often (a flood must not flood the log too).
REFUSAL_LOG_EVERY_S = 60.0


class SharedCounts(Protocol):
    """The per-address counts of the other replicas (central/cluster/conns.py)."""

    def elsewhere(self, address: str) -> int: ...

    def changed(self, address: str, count: int) -> None: ...


class ConnectionGuard:
    """Counts, limits and times out the connections of one listener (see the module doc).

    Each connection's first protocol (`Doorway`) is admitted here when it is made, and released
    when it is lost; the doorway starts the head timer and stops it when the first head is whole.
    With several replicas (`shared`), an address's connections on the others count toward
    `max_per_address` too, and this one's are told to them.
    """

    def __init__(self, limits: ConnectionLimits, shared: SharedCounts | None = None) -> None:
        self.limits = limits
        self.shared = shared
        self._open: set[Doorway] = set()
        self._per_address: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0
        self._last_refusal_log = -REFUSAL_LOG_EVERY_S

    @property
    def open_count(self) -> int:
        return len(self._open)

    def admit(self, conn: Doorway, transport: asyncio.Transport) -> bool:
        """Count a new connection, or answer it 503 and close it (False)."""
        # The client's address: from a PROXY header if any (proxyproto.py), else the socket's peer.
        conn.address = address = address_key(conn.source or transport.get_extra_info("peername"))
        conn.node = node = bool(transport.get_extra_info("peercert"))
        elsewhere = self.shared.elsewhere(address) if self.shared is not None and not node else 0
        reason = refusal(self.limits, len(self._open), self._per_address[address], node, elsewhere)
        if reason is not None:
            self._refuse(transport, address, reason)
            return False
        self._open.add(conn)
        if not node:
            self._per_address[address] += 1
            if self.shared is not None:
                self.shared.changed(address, self._per_address[address])
        return True

    def release(self, conn: Doorway) -> None:
        if conn not in self._open:
            return
        self._open.discard(conn)
        if not conn.node:
            self._per_address[conn.address] -= 1
            left = self._per_address[conn.address]
            if left <= 0:
                del self._per_address[conn.address]
            if self.shared is not None:
                self.shared.changed(conn.address, max(left, 0))

    def drop_waiting(self) -> None:
        """At a stop: drop the connections still waiting for their first head (aiohttp's shutdown
        closes the connections it serves, the node door its links)."""
        for conn in list(self._open):
            if conn.waiting:
                conn.abort()

    def head_overdue(self, conn: Doorway) -> None:
        self.timed_out += 1
        log.debug("no request head from %s within %.0f s: dropped", conn.address, self.limits.head_timeout)
        # Abort, not close: a TLS close would wait for the client's close_notify.
        conn.abort()

    def _refuse(self, transport: asyncio.Transport, address: str, reason: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_EVERY_S:
            self._last_refusal_log = now
            log.warning("refusing connections: %s (from %s; %d open; %d refused so far)",
                        reason, address, len(self._open), self.refused)
        body = json.dumps({"error": {"code": "too_many_connections", "message": reason}}).encode()
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 10\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        transport.close()


class MalformedRequestLog(logging.Filter):
    """aiohttp answers a malformed request head (a repeated Content-Type, a bad header line) 400
    and logs it at ERROR with a traceback, so anyone who reaches the port could fill the log with
    them. On aiohttp's server logger, such a record becomes one warning line at most once a minute,
    with a count; every other record passes unchanged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.count = 0
        self._last_log = -REFUSAL_LOG_EVERY_S

    @classmethod
    def install(cls) -> MalformedRequestLog:
        server_log = logging.getLogger("aiohttp.server")
        for old in [f for f in server_log.filters if isinstance(f, cls)]:
            server_log.removeFilter(old)
        instance = cls()
        server_log.addFilter(instance)
        return instance

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.count += 1
        now = self.clock()
        if now - self._last_log < REFUSAL_LOG_EVERY_S:
            return False
        self._last_log = now
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = " ".join(str(exc.message).split())[:200]  # the client's bytes: one line, bounded
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "malformed request from %s answered 400: %s (%d so far; told once a minute)"
        record.args = (remote, reason, self.count)
        record.exc_info, record.exc_text = None, None
        return True


def refusal(limits: ConnectionLimits, open_total: int, open_from_address: int, node: bool,
            elsewhere: int = 0) -> str | None:
    """Why a new connection is refused, or None to let it in (`elsewhere`: the address's
    connections on the other replicas)."""
    if open_total >= limits.max_connections:
        return f"the server has {limits.max_connections} connections open (--max-connections)"
    if node:
        return None
    anonymous_cap = limits.max_connections - max(1, limits.max_connections // 10)
    if open_total >= anonymous_cap:
        return (f"the server has {open_total} connections open; the rest of --max-connections"
                f" ({limits.max_connections}) is kept for nodes")
    if open_from_address + elsewhere >= limits.max_per_address:
        reason = f"{limits.max_per_address} connections are already open from this address (--max-connections-per-address)"
        return reason + (f": {elsewhere} of them on other replicas" if elsewhere else "")
    return None


def address_key(peername: Any) -> str:
    """The client address connections are counted under: IPv4 as is, IPv6 by its /64 (one
    host usually holds a whole /64), IPv4-mapped IPv6 as IPv4."""
    if not isinstance(peername, tuple) or not peername:
        return "local"
    try:
        address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    except ValueError:
        return str(peername[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def fit_to_fd_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise the soft file-descriptor limit to what `max_connections` needs (up to the hard limit,
    which needs no privilege); if the hard limit is lower, lower `max_connections` to fit and say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, fitted = fd_budget(limits, soft, hard)
    if new_soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, new_soft, exc)
            new_soft, fitted = fd_budget(limits, soft, soft)
    if fitted.max_connections < limits.max_connections:
        log.warning("the open-file limit (%d) allows %d connections, not %d (--max-connections):"
                    " raise LimitNOFILE (docs/operations.md)", new_soft, fitted.max_connections,
                    limits.max_connections)
    return fitted


def fd_budget(limits: ConnectionLimits, soft: int, hard: int) -> tuple[int, ConnectionLimits]:
    """The soft limit to set and the limits that fit in it (pure: see fit_to_fd_limit)."""
    needed = limits.max_connections + FD_RESERVE
    ceiling = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    new_soft = max(soft, ceiling)
    reserve = min(FD_RESERVE, new_soft // 4)
    if limits.max_connections + reserve <= new_soft:
        return new_soft, limits
    return new_soft, replace(limits, max_connections=max(1, new_soft - reserve))


# What every connection's reads are decrypted into (Doorway): one for the process, since the
# event loop handles one read at a time and what is kept of a read is copied out of it.
READ_BUFFER_BYTES = 64 * 1024
_read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
# The most of a first request head the doorway holds while it waits for the head's end; a longer
# head goes to aiohttp as it is (aiohttp's own limits apply), the head timer still running.
HEAD_LIMIT = 16 * 1024


@dataclass(slots=True)
class RequestHead:
    """A first request head an upgrade may take (`Upgrade.take`): names lower-cased."""

    method: str
    target: str
    version: str
    headers: dict[str, str]


def parse_head(raw: bytes) -> RequestHead | None:
    """The request line and headers of `raw` (a head ending in an empty line), or None when it is
    anything but plain: obsolete line folding, a line without a colon, a repeated header, bytes
    outside Latin-1 printables. None leaves the request to aiohttp, which answers it as always."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        name, colon, value = line.partition(":")
        name = name.lower()
        if not colon or not name or name != name.strip() or name in headers or not line.isprintable():
            return None
        headers[name] = value.strip()
    return RequestHead(parts[0], parts[1], parts[2], headers)


def head_end(data: bytes | bytearray) -> int:
    """Where the first request head in `data` ends (after its empty line), or -1."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    ends = [at + 4 for at in (crlf,) if at >= 0] + [at + 2 for at in (lf,) if at >= 0]
    return min(ends) if ends else -1


class Link(Protocol):
    """A connection's upper protocol after an upgrade taken below aiohttp (central/nodelink.py)."""

    def feed(self, data: bytes | memoryview) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class Upgrade(Protocol):
    """Requests the listener may serve itself instead of aiohttp (central/nodehub.py NodeDoor)."""

    prefix: bytes  # how the request line of such a request starts

    def take(self, head: RequestHead, transport: asyncio.Transport, source: Peer | None) -> Link | None:
        """Answer the request and return what reads the connection from now on, or None for aiohttp
        (`source`: the client's address from a PROXY header, None for the socket's peer)."""


@dataclass(frozen=True)
class Door:
    """What every connection's doorway shares: aiohttp's server, the guard, the upgrade."""

    server: web.Server
    guard: ConnectionGuard
    upgrade: Upgrade | None


# Doorway states
_HEAD, _AIOHTTP, _LINK, _GONE = 0, 1, 2, 3


class Doorway(asyncio.BufferedProtocol):
    """Every connection's protocol: reads its first request head, then hands the connection on.

    A head the upgrade takes (a node's websocket: central/nodehub.py) makes the connection a link
    that reads it from then on; anything else goes to aiohttp's connection handler as it came
    (connection_made, then the bytes read so far), which serves it and every later request on it.
    The doorway counts the connection with the guard, bounds the time to the first head's end,
    and stays in between: the TLS layer (central/tlsconn.py: data_received) decrypts every read
    into one shared buffer, as the loop reads plain HTTP into one (the buffered protocol calls);
    aiohttp gets a copy of the bytes read, a link reads them in place.
    """

    __slots__ = ("door", "source", "transport", "state", "head", "timer", "handler", "link", "address", "node")

    def __init__(self, door: Door, source: Peer | None = None) -> None:
        self.door = door
        self.source = source  # the client's address from a PROXY header (proxyproto.py), if any
        self.transport: asyncio.Transport | None = None
        self.state = _HEAD
        self.head: bytearray | None = None  # a first head not whole yet
        self.timer: asyncio.TimerHandle | None = None
        self.handler: RequestHandler | None = None
        self.link: Link | None = None
        self.address = ""
        self.node = False  # presented a client certificate our CA signed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TCP transport and tlsconn's are no asyncio.Transport subclasses, but have their methods)
        self.transport = transport = cast(asyncio.Transport, transport)
        guard = self.door.guard
        if not guard.admit(self, transport):
            self.state = _GONE
            return
        self.timer = asyncio.get_running_loop().call_later(guard.limits.head_timeout, guard.head_overdue, self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        state = self.state
        if state == _LINK:
            assert self.link is not None
            self.link.feed(data)
        elif state == _AIOHTTP:
            assert self.handler is not None
            chunk = bytes(data)
            if self.timer is not None:
                self._watch_head_end(chunk)
            self.handler.data_received(chunk)
        elif state == _HEAD:
            self._first_bytes(bytes(data))

    def _first_bytes(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            data = bytes(self.head)
        end = head_end(data)
        if end < 0:
            if len(data) > HEAD_LIMIT:
                self.head = bytearray(data[-3:])
                self._to_aiohttp(data)
            elif self.head is None:
                self.head = bytearray(data)
            return
        self.head = None
        self._stop_timer()
        upgrade = self.door.upgrade
        link = None
        if upgrade is not None and data.startswith(upgrade.prefix):
            parsed = parse_head(data[:end])
            if parsed is not None:
                assert self.transport is not None
                link = upgrade.take(parsed, self.transport, self.source)
        if link is None:
            self._to_aiohttp(data)
            return
        self.link, self.state = link, _LINK
        if len(data) > end:
            link.feed(data[end:])

    def _watch_head_end(self, chunk: bytes) -> None:
        """A long first head went to aiohttp before its end: stop the timer when the end comes."""
        window = bytes(self.head or b"") + chunk
        if head_end(window) >= 0:
            self.head = None
            self._stop_timer()
        else:
            self.head = bytearray(window[-3:])

    def _to_aiohttp(self, data: bytes) -> None:
        handler = self.handler = self.door.server()
        if self.source is not None:
            # Where aiohttp keeps the peer's address (request.remote, the access log).
            handler._cache["peername"] = self.source
        self.state = _AIOHTTP
        assert self.transport is not None
        handler.connection_made(self.transport)
        if data:
            handler.data_received(data)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    @property
    def waiting(self) -> bool:
        """Still reading the first request head."""
        return self.state == _HEAD

    def abort(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.door.guard.release(self)
        state, self.state = self.state, _GONE
        if state == _AIOHTTP and self.handler is not None:
            self.handler.connection_lost(exc)
        elif state == _LINK and self.link is not None:
            self.link.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self.state == _HEAD:  # a half-close before a whole first head: aiohttp answers it, as before
            self._stop_timer()
            self._to_aiohttp(bytes(self.head or b""))
            self.head = None
        if self.state == _AIOHTTP and self.handler is not None:
            self.handler.eof_received()  # aiohttp's answer is None: the transport closes the connection
        return None  # a link: the transport closes, the link hears connection_lost

    def pause_writing(self) -> None:
        if self.state == _AIOHTTP and self.handler is not None:
            self.handler.pause_writing()
        elif self.state == _LINK and self.link is not None:
            self.link.pause_writing()

    def resume_writing(self) -> None:
        if self.state == _AIOHTTP and self.handler is not None:
            self.handler.resume_writing()
        elif self.state == _LINK and self.link is not None:
            self.link.resume_writing()


def release_http_parser(request: web.BaseRequest) -> bool:
    """Drop the connection's HTTP parser once its websocket upgrade is accepted.

    From then on every byte goes to the websocket reader, and aiohttp never uses the HTTP parser
    again, but keeps it, with what it held of the request head, until the connection ends: about
    1.7 KB per node websocket (docs/performance.md, "memory per node"). Once upgraded, aiohttp
    checks for a missing parser on every path (pausing reads skips it). True when dropped; False,
    changing nothing, when the connection is not upgraded or aiohttp no longer has these attributes."""
    protocol = request.protocol
    upgraded = getattr(protocol, "_upgraded", None) is True
    if not upgraded or getattr(protocol, "_payload_parser", None) is None:
        return False
    if getattr(protocol, "_parser", None) is None:
        return False
    protocol._parser = None
    return True


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's TCPSite, plus the TLS handshake and shutdown timeouts, the
    connection guard, and the upgrade served below aiohttp (every connection starts in a Doorway)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 backlog: int, guard: ConnectionGuard, upgrade: Upgrade | None = None,
                 proxy_from: Balancers | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self._upgrade = upgrade
        self._proxy_from = proxy_from

    async def stop(self) -> None:
        await super().stop()
        self._guard.drop_waiting()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        door = Door(server, self._guard, self._upgrade)
        tls: TlsListener | None = None
        if self._ssl_context is not None:
            # TLS is ours (central/tlsconn.py) over the loop's plain TCP. A client that never
            # finishes the handshake, or never answers our close_notify, holds a socket only this long.
            timeout = self._guard.limits.head_timeout
            tls = TlsListener(self._ssl_context, lambda: Doorway(door), handshake_timeout=timeout,
                              shutdown_timeout=timeout)
        if self._proxy_from:
            # The loop gets plain TCP sockets from it; TLS is the protocol made for each.
            listener = ProxyListener(self._proxy_from, lambda source: _behind_balancer(door, tls, source),
                                     self._guard.limits.head_timeout)
            await listener.start(self._host, self._port, self._backlog)
            self._server = listener  # type: ignore[assignment]  # what aiohttp reads of a Server
            return
        factory: Callable[[], asyncio.BaseProtocol] = tls if tls is not None else (lambda: Doorway(door))
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog,
        )


def _behind_balancer(door: Door, tls: TlsListener | None, source: Peer | None) -> asyncio.BaseProtocol:
    """The protocol of a connection from behind a balancer (proxyproto.ProxyListener): its doorway
    knows the client's address from the PROXY header; with TLS, made once the handshake is over."""
    if tls is None:
        return Doorway(door, source)
    return TlsConnection(tls, lambda: Doorway(door, source))

