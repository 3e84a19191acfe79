"""The node side of the server: the node websocket (protocol v1) and the HTTP keep-alive."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Container
from functools import partial
from typing import Any

from aiohttp import WSMsgType, web

from dvic_core.constants import (
    CLOSE_BEFORE_HELLO,
    CLOSE_RATE_LIMITED,
    CLOSE_REPLACED,
    CLOSE_STORAGE,
    NODE_HEARTBEAT_S,
    PROTOCOL_VERSION,
)
from dvic_core.messages import KEEPALIVE

from . import heartbeats, store
from .accesslog import ACCESS_LOG, loggable_target, write_line
from .auth import NODE, error_response
from .boardlogs import store_board_logs
from .listener import RequestHead, release_http_parser
from .messages import (
    MAX_BATCH_LINES,
    MAX_FRAME_BYTES,
    MAX_KEEPALIVE_BYTES,
    NODE_MESSAGES,
    ProtocolError,
    keepalive_parts,
    metric_series,
    parse_node_message,
)
from .nodelimits import (
    EVENTS_BURST,
    EVENTS_PER_MINUTE,
    KEEPALIVES_PER_INTERVAL,
    METRICS_BURST,
    METRICS_PER_INTERVAL,
)
from .nodelink import NodeLink, NodeSocket
from .pki import der_fingerprint
from .proxyproto import Peer
from .registry import NodeState
from .routes import node_params, routes
from .services import SERVICES, Services
from .strictjson import dumps, json_response
from .tokens import bearer, hash_token
from .writer import StorageError

log = logging.getLogger(__name__)

# Log batches of one node stored but not yet acknowledged; past this the session stops reading
# the node's socket until a commit catches up (TCP backpressure).
MAX_BATCHES_IN_FLIGHT = 64
STORAGE_ERROR = {"type": "error", "code": "storage", "message": "storage unavailable, retry later"}
STORAGE_ERROR_TEXT = dumps(STORAGE_ERROR, separators=(",", ":"))
# The one message a node may (and must) send first.
HELLO = "hello"

SessionHandler = Callable[["NodeSession", dict[str, Any]], Awaitable[None]]
ReplyHandler = Callable[[NodeState, dict[str, Any]], Awaitable[None]]
# What the session does with each type of message a node sends (dvic_core/messages.py declares
# them): one handler per type, registered with @node_message, or the hub the registry names for a
# reply to a server request. A type without a handler cannot be reached; tests hold the keys equal
# to the registry's.
HANDLERS: dict[str, SessionHandler] = {}


def node_message(kind: str) -> Callable[[SessionHandler], SessionHandler]:
    def register(handler: SessionHandler) -> SessionHandler:
        if kind in HANDLERS:
            raise ValueError(f"two handlers for node message {kind!r}")
        HANDLERS[kind] = handler
        return handler

    return register


def _hub_handler(services: Services, hub: str) -> ReplyHandler:
    """The method that takes a node's replies for `hub` (the registry's names)."""
    return {
        "commands": services.commands.on_message, "shells": services.shells.on_message,
        "tunnels": services.tunnels.on_message, "actions": services.actions.on_message,
        "updates": services.actions.on_update_state,
    }[hub]


def _to_hub(hub: str) -> SessionHandler:
    async def reply(session: NodeSession, msg: dict[str, Any]) -> None:
        if not await session.services.router.forwarded(session.node, msg):  # else asked for by another replica
            await _hub_handler(session.services, hub)(session.node, msg)

    return reply


def _register_replies() -> None:
    """A node's replies to server requests go to the hub the registry names for their type."""
    for kind, message in NODE_MESSAGES.items():
        if message.hub is not None:
            node_message(kind)(_to_hub(message.hub))


_register_replies()


def _peer_fingerprint(transport: asyncio.BaseTransport | None) -> str | None:
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der_fingerprint(der) if der else None


def authenticate_node(services: Services, request: web.Request) -> NodeState | web.Response:
    """Who is this node? Its certificate over TLS; its token only in plain-HTTP development mode."""
    if services.config.tls:
        fp = _peer_fingerprint(request.transport)
        if fp is None:
            return error_response(401, "no_client_certificate", "the node websocket needs a client certificate")
        node = services.registry.by_fingerprint(fp)
        if node is None:
            return error_response(403, "unknown_certificate", "this certificate belongs to no enrolled node")
    else:
        token = bearer(request)
        node = services.registry.by_token_hash(hash_token(token)) if token else None
        if node is None:
            return error_response(401, "bad_token", "unknown node token")
    if node.revoked:
        return error_response(403, "revoked", f"node {node.name!r} has been revoked")
    return node


NODE_WS_PATH = "/api/v1/node/ws"


@routes.route("GET", NODE_WS_PATH, role=NODE, summary="Node websocket (protocol v1, mutual TLS)")
async def node_websocket(request: web.Request) -> web.StreamResponse:
    """A node's websocket through aiohttp: what `NodeDoor` does not take below it (every refusal;
    plain-HTTP development mode; a connection that did not come through the server's listener)."""
    services = request.app[SERVICES]
    who = authenticate_node(services, request)
    if isinstance(who, web.Response):
        log.warning("node websocket refused from %s: %s", request.remote, who.text)
        return who
    ws = web.WebSocketResponse(heartbeat=NODE_HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    release_http_parser(request)  # kept by aiohttp for the connection's life, never used again
    await NodeSession(services, who, ws).run()
    return ws


# RFC 6455 1.3: what the server appends to the node's key for Sec-WebSocket-Accept.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# At a server's stop, how long node links get to close and their sessions to end (aiohttp's
# shutdown timeout for the requests it serves); then what is left is cancelled.
STOP_WAIT_S = 5.0
CLOSE_GOING_AWAY = 1001


def websocket_accept(headers: dict[str, str]) -> str | None:
    """Sec-WebSocket-Accept for a plain websocket upgrade (RFC 6455 4.2.1), or None for anything
    else: a bad or missing key or version, a subprotocol asked for, a body."""
    if headers.get("upgrade", "").lower() != "websocket":
        return None
    if "upgrade" not in (token.strip().lower() for token in headers.get("connection", "").split(",")):
        return None
    if headers.get("sec-websocket-version") != "13" or headers.keys() & {
            "sec-websocket-protocol", "content-length", "transfer-encoding"}:
        return None
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


class NodeDoor:
    """Node websockets served below aiohttp (the listener's `Upgrade`, central/listener.py).

    An upgrade to the node websocket over TLS whose client certificate is an enrolled node that
    is not revoked is answered 101 here, and the connection becomes a `NodeLink`
    (central/nodelink.py) read by the node's session: no aiohttp request, handler, middleware or
    websocket objects for as long as the node is connected (docs/performance.md, "memory per
    node"). Everything else, every refusal included, goes to aiohttp's route above, which answers
    and logs it as it always did. The access log gets the same line as from the route (`node:NAME
    GET /api/v1/node/ws 101`, when the websocket closes).
    """

    prefix = b"GET " + NODE_WS_PATH.encode()

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.sessions: dict[NodeLink, asyncio.Task[None]] = {}
        self.stopping = False

    def take(self, head: RequestHead, transport: asyncio.Transport, source: Peer | None) -> NodeLink | None:
        path, _, query = head.target.partition("?")
        if path != NODE_WS_PATH or head.method != "GET" or head.version != "HTTP/1.1" or self.stopping:
            return None
        accept = websocket_accept(head.headers)
        services = self.app.get(SERVICES)
        if accept is None or services is None or not services.config.tls:
            return None
        fp = _peer_fingerprint(transport)
        node = services.registry.by_fingerprint(fp) if fp else None
        if node is None or node.revoked:
            return None  # the route refuses it: the same answer, log line and access line as ever
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                        b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept.encode())
        link = NodeLink(transport, MAX_FRAME_BYTES)
        heartbeats.watch(link, NODE_HEARTBEAT_S)
        task = asyncio.get_running_loop().create_task(NodeSession(services, node, link, link).run())
        self.sessions[link] = task
        access = self.app.get(ACCESS_LOG)
        line = None
        if access is not None:  # what its line needs, kept for the connection's life: little
            access.tally.flush()
            peer = source or transport.get_extra_info("peername")  # (the client's, behind a balancer)
            remote = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
            target = loggable_target(path, query) if query else NODE_WS_PATH
            line = (remote, target, time.monotonic())
        task.add_done_callback(partial(self._ended, link, node, line))
        return link

    def _ended(self, link: NodeLink, node: NodeState, line: tuple[str, str, float] | None,
               task: asyncio.Task[None]) -> None:
        self.sessions.pop(link, None)
        heartbeats.unwatch(link)
        if not task.cancelled() and task.exception() is not None:
            log.error("node %s: session failed", node.name, exc_info=task.exception())
            link.abort()
        if line is not None:
            remote, target, started = line
            write_line(remote, f"node:{node.name}", "GET", target, 101, started)

    async def close_all(self, app: web.Application) -> None:
        """At a stop (aiohttp's on_shutdown): close every node link (1001) and end its session."""
        self.stopping = True
        if not self.sessions:
            return
        links = list(self.sessions)
        closes = [asyncio.ensure_future(link.close(code=CLOSE_GOING_AWAY, message=b"server shutting down"))
                  for link in links]
        _, late = await asyncio.wait([*self.sessions.values(), *closes], timeout=STOP_WAIT_S)
        for task in late:
            task.cancel()
        for link in links:
            link.abort()
        await asyncio.gather(*late, return_exceptions=True)


NODE_DOOR = web.AppKey("node_door", NodeDoor)


class NodeSession:
    """One connected node: reads, validates and stores its messages in order.

    There is one per connected node (20,000 on one server): slots, and no task, event or list of
    its own for acks (see `_committed`); the event a read waits on for room is made when first needed.
    """

    __slots__ = ("services", "registry", "node", "ws", "heartbeat", "greeted", "epoch", "_closing", "_in_flight",
                 "_stored_seq", "_settle_due", "_store_failed", "_room", "_sending")

    def __init__(self, services: Services, node: NodeState, ws: NodeSocket,
                 heartbeat: heartbeats.Beating | None = None) -> None:
        self.services = services
        self.registry = services.registry
        self.node = node
        self.ws = ws
        self.heartbeat = heartbeat  # None: aiohttp's heartbeat
        self.greeted = False
        self.epoch = 0  # the session's number, from its hello (central/cluster/presence.py)
        self._closing: asyncio.Task[Any] | None = None
        # Log batches in the writer, not yet settled by a commit (MAX_BATCHES_IN_FLIGHT).
        self._in_flight = 0
        # The highest seq of the batches stored since the last ack (0: none); acks are cumulative.
        self._stored_seq = 0
        self._settle_due = False  # `_settle` is scheduled for this turn of the loop
        self._store_failed = False  # a batch was not stored: no ack ever again on this connection
        self._room: asyncio.Event | None = None  # when a read first waits for room
        # aiohttp's websocket only (no `send_now`): the last of the sends started without waiting.
        self._sending: asyncio.Future[None] | None = None

    def _request_close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(code, reason, self._sending))

    async def _close(self, code: int, reason: str, before: asyncio.Future[None] | None) -> None:
        if before is not None:  # what was sent before the close goes before it (a storage error)
            await asyncio.wait([before])
        await self.ws.close(code=code, message=reason.encode()[:120])

    async def run(self) -> None:
        node = self.node
        if node.disconnect is not None:
            node.disconnect(CLOSE_REPLACED, "replaced by a newer connection")
        node.disconnect = self._request_close
        reason = "connection closed"
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    raise ProtocolError(4001, "bad_message", "binary frames are not part of the protocol")
                elif msg.type == WSMsgType.ERROR:
                    reason = f"websocket error: {self.ws.exception()}"
                    break
                # Not kept while the node is quiet: a frame may be 1 MiB (a batch sent after a
                # reconnect), and 20,000 sessions each holding their last one would be gigabytes.
                del msg
        except ProtocolError as exc:
            reason = f"protocol error: {exc.message}"
            log.warning("node %s: %s", node.name, exc.message)
            await self._send({"type": "error", "code": exc.code, "message": exc.message})
            await self.ws.close(code=exc.close_code, message=exc.message.encode()[:120])
        except StorageError as exc:
            reason = "storage unavailable"
            log.error("node %s: %s", node.name, exc)
            await self._send(STORAGE_ERROR)
            await self.ws.close(code=CLOSE_STORAGE, message=b"storage unavailable")
        finally:
            if self._sending is not None:
                self._sending.cancel()  # the socket is gone: the node resends what was not acked
                await asyncio.gather(self._sending, return_exceptions=True)
            if self._closing is not None:
                await asyncio.gather(self._closing, return_exceptions=True)
            if node.disconnect == self._request_close:
                node.disconnect = None
                node.send = None
                if self.ws.close_code == 1009:
                    reason = f"frame larger than {MAX_FRAME_BYTES} bytes"
                elif self.heartbeat is not None and self.heartbeat.silent:
                    reason = f"websocket error: {heartbeats.silence_reason(NODE_HEARTBEAT_S)}"
                await self.services.router.node_disconnected(node, f"node {node.name} went offline ({reason})")
                await self.services.commands.node_disconnected(node)
                await self.services.shells.node_disconnected(node)
                await self.services.tunnels.node_disconnected(node)
                if await self.services.presence.session_ended(node, self.epoch):
                    await self.registry.disconnected(node, reason)

    async def send(self, message: dict[str, Any]) -> bool:
        """Send a request to the node (from any task); False when the connection is gone."""
        if self.ws.closed or not self.greeted:
            return False
        try:
            await self.ws.send_str(dumps(message, separators=(",", ":")))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_text(dumps(message, separators=(",", ":")))

    async def _send_text(self, text: str) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                pass

    def _send_soon(self, text: str) -> None:
        """Send from a callback, in order with what this method sent before: at once on a node link;
        through a task on aiohttp's websocket (plain-HTTP development mode and the route's fallback),
        each after the one before it."""
        ws = self.ws
        if isinstance(ws, NodeLink):
            if not ws.closed:
                try:
                    ws.send_now(text)
                except ConnectionError:
                    pass
            return
        self._sending = asyncio.ensure_future(self._send_after(self._sending, text))

    async def _send_after(self, before: asyncio.Future[None] | None, text: str) -> None:
        if before is not None:
            await asyncio.wait([before])
        await self._send_text(text)

    async def handle(self, text: str) -> None:
        msg = parse_node_message(text)
        kind = msg["type"]
        if kind != HELLO:
            if not self.greeted:
                raise ProtocolError(CLOSE_BEFORE_HELLO, "hello_first", f"got {kind!r} before 'hello'")
            await self.registry.heard(self.node)
        await HANDLERS[kind](self, msg)

    @node_message(HELLO)
    async def _hello(self, msg: dict[str, Any]) -> None:
        node = self.node
        self.epoch = await self.registry.hello(node, msg["facts"], msg["daemon_version"],
                                               self.services.cluster.replica)
        self.greeted = True
        await self.services.actions.on_hello(node)
        last_seq = await self.services.queries.last_seq(node.id)
        await self.services.presence.catch_up(node, last_seq)  # what another replica stored (replicas)
        # Lines already stored were shown before (or before this server started): not again.
        node.published_seq = max(node.published_seq, last_seq)
        await self._send({
            "type": "welcome", "protocol": PROTOCOL_VERSION, "node_id": node.id, "name": node.name,
            "settings": {
                "interval": self.services.config.interval,
                "keepalive_interval": self.services.config.interval,
                "max_batch": MAX_BATCH_LINES,
            },
            "last_seq": last_seq,
            "server_time": time.time(),
        })
        # Only now can the node take requests: it is `connected` from here on.
        if not self.services.presence.session_greeted(node, self.epoch):
            self._request_close(CLOSE_REPLACED, "replaced by a newer session on another replica")
            return
        node.send = self.send
        self.registry.publish(node)
        # Its supervised demos' desired set (after welcome, as docs/protocol.md section 6 says).
        await self.services.features.hello(node)  # (on the features leader, wherever that is)

    @node_message("metrics")
    async def _metrics(self, msg: dict[str, Any]) -> None:
        series = metric_series(msg)
        if not await self._allowed("metrics"):
            return
        self.services.writer.add_metrics(self.node.id, msg["ts"], series)
        self.registry.set_metrics(self.node, msg, series)

    @node_message("event")
    async def _event(self, msg: dict[str, Any]) -> None:
        if not await self._allowed("events"):
            return
        node = self.node
        if msg["kind"] == "failed":
            await self.registry.report_failed(node, msg["message"])
        elif msg["kind"] == "recovered":
            await self.registry.report_recovered(node)
        await self.registry.record_event(node, msg["kind"], msg["message"], msg["data"])

    @node_message("unsupported")
    async def _unsupported(self, msg: dict[str, Any]) -> None:
        """A request the node does not implement: the hub that owns the id hears of it."""
        s, rid = self.services, msg["id"]
        if await s.features.unsupported(self.node, msg) or await s.router.forwarded(self.node, msg):
            return  # an old daemon answering demos_desired, or a request from another replica
        owners: list[tuple[Container[str], ReplyHandler]] = [
            (s.commands.runs, s.commands.on_message), (s.shells.sessions, s.shells.on_message),
            (s.tunnels.tunnels, s.tunnels.on_message), (s.actions.pending, s.actions.on_message),
        ]
        for ids, handler in owners:
            if rid in ids:
                await handler(self.node, msg)
                return

    @node_message("demo_install")
    async def _demo_install(self, msg: dict[str, Any]) -> None:
        """A supervised demo's install state (issue 14): the deployments track it."""
        await self.services.features.demo_install(self.node, msg)

    @node_message("demo_status")
    async def _demo_status(self, msg: dict[str, Any]) -> None:
        """A supervised demo's run state: kept and shown by the deployments, and told to the alert
        engine (crash loop, cannot start, healthy again)."""
        await self.services.features.demo_status(self.node, msg)

    async def _allowed(self, kind: str) -> bool:
        """Within the node's limits for `kind`? If not, the frame is dropped (and counted)."""
        now = time.monotonic()
        limits = self.registry.limits(self.node, now)
        if limits.allow(kind, now):
            return True
        await self._dropped(kind, now)
        return False

    async def _dropped(self, kind: str, now: float, *, frame: bool = True) -> None:
        """Count a drop; once per window tell the node, the log and the operators; close on abuse."""
        limits = self.registry.limits(self.node, now)
        count = limits.drop(kind, now, frame=frame)
        if count:
            await self._report_drops(kind, count)
        if limits.abusive:
            raise ProtocolError(CLOSE_RATE_LIMITED, "rate_limited",
                                "far over the node's limits for a minute: closing (see the earlier rate_limited errors)")

    async def _report_drops(self, kind: str, count: int) -> None:
        interval = self.services.config.interval
        why = {
            "metrics": f"metrics samples beyond {METRICS_PER_INTERVAL:g} per {interval:g} s interval per node "
                       f"(bursts of {METRICS_BURST}) are dropped",
            "events": f"events beyond {EVENTS_PER_MINUTE:g} per minute per node (bursts of {EVENTS_BURST}) "
                      "are not stored",
            "demos": f"new demos are refused: the node already has {self.registry.max_demos} running demos, "
                     "the most the server keeps per node (dvic-central serve --max-demos)",
        }[kind] + f" ({count} since the last report; told at most once a minute)"
        code = "too_many_demos" if kind == "demos" else "rate_limited"
        log.warning("node %s: %s", self.node.name, why)
        await self._send({"type": "error", "code": code, "message": why})
        # Once per window per kind: not itself subject to the event limit.
        await self.registry.record_event(self.node, code, why, {"what": kind, "dropped": count})

    @node_message("demo")
    async def _demo(self, msg: dict[str, Any]) -> None:
        """Record a demo's state: at most max_demos per node (an exited one makes room for a new one)."""
        node, registry, now = self.node, self.registry, time.time()
        known = node.demos.get(msg["token"])
        if known is None and registry.exited_long_ago(msg, now):
            return  # already forgotten (or never worth keeping): a reconnect's announcement of an old exit
        room, evicted = registry.demo_room(node, msg["token"])
        if not room:
            await self._dropped("demos", time.monotonic())
            return
        if not _only_heartbeat_changed(known, msg):
            await self.services.writer.submit(store.upsert_demo_evicting(node.id, msg, now, evicted))
        before = (known or {}).get("state")
        registry.set_demo(node, msg, now, evicted)
        if before != msg["state"] and msg["state"] in ("started", "exited"):
            mono = time.monotonic()
            if not registry.limits(node, mono).allow("events", mono):
                await self._dropped("events", mono, frame=False)  # the demo's state is kept, its event row is not
                return
            await registry.record_event(
                node, f"demo_{msg['state']}", f"demo {msg['name'] or msg['token']} {msg['state']}",
                {"token": msg["token"], "name": msg["name"], "pid": msg["pid"]},
            )

    @node_message("logs")
    async def _logs(self, msg: dict[str, Any]) -> None:
        """Queue the batch for the next commit and go on reading: the ack follows the commit.

        Not waiting for the commit here is what lets one commit carry several batches of a busy
        node, instead of one batch per node per commit.
        """
        lines: list[dict[str, Any]] = msg["lines"]
        if not lines:
            return
        while self._in_flight >= MAX_BATCHES_IN_FLIGHT:
            if self._closing is not None:
                return  # no ack will come: the node sends these lines again when it reconnects
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        self._in_flight += 1
        # Only the batch's highest seq waits for the commit: the ack needs nothing else.
        last_seq = max(line["seq"] for line in lines)
        await self.services.writer.queue_logs(self.node.id, lines, partial(self._committed, last_seq))
        self._publish_live(lines)

    def _publish_live(self, lines: list[dict[str, Any]]) -> None:
        """Hand accepted lines to live subscribers now, not after their commit.

        A live tail should not wait for the disk (the commit is most of a line's way to the
        screen under load). A line shown here and then not stored (the disk filled up) comes back
        when the node resends it; lines at or below the node's published high-water mark (a
        resend, a replay after reconnect) are stored once and not shown twice.
        """
        node = self.node
        fresh = [line for line in lines if line["seq"] > node.published_seq]
        if not fresh:
            return
        node.published_seq = max(line["seq"] for line in fresh)
        self.services.features.observe_logs(node, fresh)
        bus = self.services.bus
        if bus.wants_logs(node.id):
            node_id, name = node.id, node.name
            bus.publish_logs(node_id, [  # the stream's line fields (docs/protocol.md), no `truncated`
                {"node": node_id, "node_name": name, "seq": line["seq"], "ts": line["ts"],
                 "source": line["source"], "unit": line["unit"], "demo": line["demo"],
                 "level": line["level"], "msg": line["msg"]}
                for line in fresh
            ])

    def _committed(self, last_seq: int, error: Exception | None) -> None:
        """The writer's word on one batch, after its commit (batches are settled in the order queued).

        No task per node waits for this (20,000 of them, each with its coroutine, events and
        deques, were 2 KB a node): the batch is counted here, and one call in the next turn of the
        loop (`_settle`) acks everything the commit stored for this node, or closes the connection.
        """
        self._in_flight -= 1
        if error is not None:
            if not self._store_failed:
                self._store_failed = True
                self._stop_after_failed_store(error)
        elif last_seq > self._stored_seq:
            self._stored_seq = last_seq
        if not self._settle_due:
            self._settle_due = True
            asyncio.get_running_loop().call_soon(self._settle)

    def _settle(self) -> None:
        """One cumulative ack for what the commits since the last call stored; room for more batches."""
        self._settle_due = False
        seq, self._stored_seq = self._stored_seq, 0
        # After a batch that was not stored, no ack at all: it would cover that batch's lines too.
        if seq and not self._store_failed:
            # The daemon may now forget these lines. (A resent batch of lines acked before gets its
            # ack too, lower than the last one: the daemon waits for an answer to each batch.)
            self._send_soon(f'{{"type":"ack","seq":{seq}}}')
        self._make_room()

    def _make_room(self) -> None:
        if self._room is not None:
            self._room.set()

    def _stop_after_failed_store(self, error: Exception) -> None:
        """No ack for lines that were not stored: close, and the node sends them again later."""
        if isinstance(error, StorageError):
            log.error("node %s: %s", self.node.name, error)
            self._send_soon(STORAGE_ERROR_TEXT)
            self._request_close(CLOSE_STORAGE, "storage unavailable")
        else:  # a batch the database refused
            log.error("node %s: log batch not stored: %s", self.node.name, error)
            self._request_close(CLOSE_STORAGE, "log batch not stored")


def _only_heartbeat_changed(known: dict[str, Any] | None, msg: dict[str, Any]) -> bool:
    """A daemon's liveness report (every few seconds per running demo) changes nothing the table keeps:
    last_heartbeat lives in memory and comes back with the daemon's announcements after a reconnect."""
    if known is None:
        return False
    return all(known.get(k) == msg.get(k) for k in ("name", "pid", "state", "started_at", "exited_at", "header"))


@routes.route("POST", "/api/v1/keepalive", role=NODE, summary="Keep-alive from a node (bearer node token)",
              body=KEEPALIVE, optional_body=True,
              body_limit=(MAX_KEEPALIVE_BYTES, f"keep-alive body over {MAX_KEEPALIVE_BYTES} bytes"))
async def keepalive(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    token = bearer(request)
    if token is None:
        return error_response(401, "unauthenticated", "missing 'Authorization: Bearer <node token>' header")
    node = services.registry.by_token_hash(hash_token(token))
    if node is None:
        return error_response(401, "bad_token", "unknown node token")
    if node.revoked:
        return error_response(403, "revoked", f"node {node.name!r} has been revoked")
    mono = time.monotonic()
    if not services.registry.limits(node, mono).allow("keepalives", mono):
        interval = services.config.interval
        response = error_response(
            429, "rate_limited",
            f"at most {KEEPALIVES_PER_INTERVAL:g} keep-alives per {interval:g} s interval: send one every {interval:g} s",
        )
        response.headers["Retry-After"] = str(max(1, round(interval)))
        return response
    series, facts, board_logs = keepalive_parts(await node_params(request))
    now = time.time()
    if series:
        services.writer.add_metrics(node.id, now, series)
        services.registry.set_metrics(node, None, series)
    if facts and any(node.facts.get(k) != v for k, v in facts.items()):
        node.facts.update(facts)
        await services.writer.submit(store.merge_facts(node.id, facts))
    answer: dict[str, Any] = {"server_time": now, "interval": services.config.interval, "node_id": node.id}
    if board_logs is not None:
        try:
            answer["logs"] = {"last_seq": await store_board_logs(services, node, board_logs, now, mono)}
        except StorageError as exc:
            log.error("node %s: board log lines not stored: %s", node.name, exc)
            return error_response(503, "storage", "storage unavailable, send these lines again later")
    await services.registry.keepalive(node, now)
    return json_response(answer)
