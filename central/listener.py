"""The listening socket and what it lets in: timeouts and connection limits (docs/operations.md).

aiohttp closes a kept-alive connection that stays idle (`keepalive_timeout`, our idle timeout),
but nothing closes a connection that finished TLS and never sends a whole request head, nor bounds
how many connections are open: a few hundred idle sockets used up the server's file descriptors.
`ConnectionGuard` hooks aiohttp's low-level `Server`, which sees every connection come and go
and every request head arrive, so it costs nothing per websocket frame:
- the TLS handshake must end within `head_timeout` (asyncio's `ssl_handshake_timeout`), then the
  first request's head must arrive within `head_timeout` again, or the connection is dropped;
- beyond `max_connections` open connections, or `max_per_address` from one client address for
  connections without a node certificate, a new connection is answered 503 and closed. Nodes are
  exempt from the per-address bound (a lab's nodes often share one NAT address), and a tenth of
  `max_connections` is kept for them alone, so a flood of anonymous connections cannot keep a
  node from reconnecting. A connection is counted once its TLS handshake is over (its client
  certificate is known then); until then only the handshake timeout bounds it.
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
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .config import ConnectionLimits
from .proxyproto import Balancers, Peer, ProxyListener

log = logging.getLogger(__name__)

# File descriptors kept for everything but client sockets: the database, its WAL, recordings,
# releases, the event loop's own.
FD_RESERVE = 256
# Refusals are logged at most this often (a flood must not flood the log too).
REFUSAL_LOG_EVERY_S = 60.0


@dataclass
class _Conn:
    address: str
    node: bool  # presented a client certificate our CA signed
    head_timer: asyncio.TimerHandle | None


class ConnectionGuard:
    """Counts, limits and times out the connections of one aiohttp `Server` (see the module doc)."""

    @classmethod
    def install(cls, server: web.Server, limits: ConnectionLimits) -> ConnectionGuard:
        """Guard every connection `server` gets from now on (before the listener starts)."""
        return cls(server, limits)

    def __init__(self, server: web.Server, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._server = server
        self._open: dict[RequestHandler, _Conn] = {}
        self._per_address: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0
        self._last_refusal_log = -REFUSAL_LOG_EVERY_S
        # aiohttp offers no per-connection hook; its Server is told of every connection by each
        # RequestHandler, and builds every request through `request_factory` (read by handlers
        # when created: this must run before the listener starts).
        self._server_made = server.connection_made
        self._server_lost = server.connection_lost
        self._make_request = server.request_factory
        server.connection_made = self._connection_made  # type: ignore[method-assign]
        server.connection_lost = self._connection_lost  # type: ignore[method-assign]
        server.request_factory = self._request_factory

    @property
    def open_count(self) -> int:
        return len(self._open)

    def _connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._server_made(handler, transport)
        address = address_key(handler.peername)  # the client's, from a PROXY header if any (proxyproto.py)
        node = bool(transport.get_extra_info("peercert"))
        reason = refusal(self.limits, len(self._open), self._per_address[address], node)
        if reason is not None:
            self._refuse(transport, address, reason)
            return
        timer = asyncio.get_running_loop().call_later(self.limits.head_timeout, self._head_overdue, handler)
        self._open[handler] = _Conn(address, node, timer)
        if not node:
            self._per_address[address] += 1

    def _connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._server_lost(handler, exc)
        conn = self._open.pop(handler, None)
        if conn is None:
            return
        if conn.head_timer is not None:
            conn.head_timer.cancel()
        if not conn.node:
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]

    def _request_factory(self, message: Any, payload: Any, protocol: RequestHandler, writer: Any,
                         task: Any) -> web.BaseRequest:
        conn = self._open.get(protocol)
        if conn is not None and conn.head_timer is not None:
            conn.head_timer.cancel()
            conn.head_timer = None
        return self._make_request(message, payload, protocol, writer, task)

    def _head_overdue(self, handler: RequestHandler) -> None:
        conn = self._open.get(handler)
        if conn is None:
            return
        conn.head_timer = None
        self.timed_out += 1
        log.debug("no request head from %s within %.0f s: dropped", conn.address, self.limits.head_timeout)
        # Abort, not close: a TLS close would wait for the client's close_notify.
        if handler.transport is not None:
            handler.transport.abort()

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


def refusal(limits: ConnectionLimits, open_total: int, open_from_address: int, node: bool) -> str | None:
    """Why a new connection is refused, or None to let it in."""
    if open_total >= limits.max_connections:
        return f"the server has {limits.max_connections} connections open (--max-connections)"
    if node:
        return None
    anonymous_cap = limits.max_connections - max(1, limits.max_connections // 10)
    if open_total >= anonymous_cap:
        return (f"the server has {open_total} connections open; the rest of --max-connections"
                f" ({limits.max_connections}) is kept for nodes")
    if open_from_address >= limits.max_per_address:
        return f"{limits.max_per_address} connections are already open from this address (--max-connections-per-address)"
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


# What every connection's reads are decrypted into (BufferedReads): one for the process, since
# the event loop handles one read at a time and the handler copies what it is given.
READ_BUFFER_BYTES = 64 * 1024
_read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))


class BufferedReads(asyncio.BufferedProtocol):
    """aiohttp's connection handler behind a buffered protocol, for its reads.

    Handed a plain protocol, the TLS layer (uvloop's and asyncio's) decrypts each read into a new
    bytes object of its maximum read size (uvloop: 256 KiB) and then shrinks it: a large
    allocation per frame, carved out of the C heap wherever a free 256 KiB run is. A buffered
    protocol gets the bytes decrypted into one shared buffer instead, and the handler receives a
    copy of just those bytes (docs/performance.md, "memory per node"). Everything else is passed
    on unchanged.
    """

    __slots__ = ("handler", "last_read")

    def __init__(self, handler: asyncio.Protocol) -> None:
        self.handler = handler
        # When the peer last sent anything (time.monotonic()): node heartbeats go by it (central/heartbeats.py).
        self.last_read = time.monotonic()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read = time.monotonic()
        self.handler.data_received(_read_buffer[:nbytes].tobytes())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


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


def buffered_reads(transport: asyncio.BaseTransport | None) -> BufferedReads | None:
    """The BufferedReads a connection's reads go through, if it came through a GuardedSite."""
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, BufferedReads) else None


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's TCPSite, plus the TLS handshake and shutdown timeouts."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 backlog: int, handshake_timeout: float, proxy_from: Balancers | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._handshake_timeout = handshake_timeout
        self._proxy_from = proxy_from

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        if self._proxy_from:
            listener = ProxyListener(self._proxy_from, lambda source: _client_at(server(), source),
                                     self._ssl_context, self._handshake_timeout)
            await listener.start(self._host, self._port, self._backlog)
            self._server = listener  # type: ignore[assignment]  # what aiohttp reads of a Server
            return
        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            # A client that never finishes the handshake, or never answers our close_notify,
            # holds a socket only this long.
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": self._handshake_timeout,
                   "ssl_shutdown_timeout": self._handshake_timeout}
        self._server = await asyncio.get_running_loop().create_server(
            lambda: BufferedReads(server()), self._host, self._port, backlog=self._backlog, **tls,
        )


def _client_at(handler: RequestHandler, source: Peer | None) -> BufferedReads:
    """The protocol of a connection from behind a balancer (proxyproto.ProxyListener), the client's
    address kept where aiohttp keeps the peer's (its handler's cached `peername`: request.remote,
    the access log, ConnectionGuard)."""
    if source is not None:
        handler._cache["peername"] = source
    return BufferedReads(handler)
