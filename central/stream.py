"""The live events websocket for operator clients (docs/protocol.md section 4.2)."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import WSMsgType, web

from dvic_core.constants import CLOSE_MALFORMED, CLOSE_TOO_SLOW, OPERATOR_HEARTBEAT_S

from .auth import error_response
from .bus import Subscriber, encode_frame
from .routes import routes
from .services import SERVICES, Services
from .tasks import cancel_and_wait
from .writer import StorageError

log = logging.getLogger(__name__)
MAX_CLIENT_FRAME = 64 * 1024


def origin_allowed(request: web.Request) -> bool:
    """Browsers send Origin; it must be this server. Non-browser clients send none."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.rstrip("/") == f"{request.scheme}://{request.host}"


@routes.route("GET", "/api/v1/stream", role="viewer", summary="Live node updates, log tails and events")
async def stream(request: web.Request) -> web.StreamResponse:
    if not origin_allowed(request):
        return error_response(403, "bad_origin", f"origin {request.headers.get('Origin')!r} is not allowed")
    services = request.app[SERVICES]
    ws = web.WebSocketResponse(heartbeat=OPERATOR_HEARTBEAT_S, max_msg_size=MAX_CLIENT_FRAME)
    await ws.prepare(request)
    transport = request.transport
    sub = services.bus.subscribe()
    if transport is not None:
        sub.hang_up = transport.abort
    # Every frame to the client goes through its queue and `_pump`, so what it has not read is
    # counted against its budget and a client that stops reading never blocks this task.
    sub.offer(encode_frame({"type": "hello", "nodes": [n.summary() for n in services.registry.all()],
                            "alerts": services.alerts.counts()}))
    sender = asyncio.create_task(_pump(ws, sub))
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                body = json.loads(msg.data)
                if not isinstance(body, dict) or body.get("type") != "subscribe":
                    raise ValueError("expected {\"type\": \"subscribe\", \"logs\": [...]}")
                wanted = body.get("logs", [])
                if not isinstance(wanted, list) or not all(isinstance(x, str) for x in wanted):
                    raise ValueError("logs: expected a list of node ids or names, or [\"*\"]")
            except ValueError as exc:
                sub.sending_since = asyncio.get_running_loop().time()  # the watchdog ends a stuck close
                await ws.close(code=CLOSE_MALFORMED, message=str(exc).encode()[:120])
                break
            ids = set()
            for ref in wanted:
                node = services.registry.get(ref)
                ids.add("*" if ref == "*" else (node.id if node else ref))
            sub.log_nodes = frozenset(ids)
            await services.bus.subscriptions_changed()  # lines from now on, whichever replica has the node
            await _accepted_lines_stored(services)
            sub.offer(encode_frame({"type": "subscribed", "logs": sorted(ids)}))
    finally:
        services.bus.unsubscribe(sub)  # (the others stop sending its lines after the next heartbeat)
        await cancel_and_wait(sender)
    return ws


async def _accepted_lines_stored(services: Services) -> None:
    """Lines accepted before the subscription took effect were not sent to this client (nor relayed
    to this replica): their commit comes first, so that a client reading history once told
    `subscribed` finds them there (a line is either in the history it reads then, or sent live)."""
    try:
        await services.writer.barrier()
    except StorageError as exc:  # not stored yet either way: the nodes send them again
        log.warning("subscription answered before earlier lines were stored: %s", exc)


async def _pump(ws: web.WebSocketResponse, sub: Subscriber) -> None:
    """Send queued frames; cut the client off when it fell too far behind.

    A client is marked too slow only when its queue is over a bound, so the next `get` returns at
    once and the cut-off is not delayed by waiting for a frame. `sending_since` tells the bus's
    watchdog when a send waits on a client that does not read: the watchdog then hangs up, which
    ends the send.
    """
    loop = asyncio.get_running_loop()
    try:
        while not ws.closed:
            frame = await sub.queue.get()
            if sub.too_slow.is_set():
                log.warning("stream client too slow (%d bytes queued): disconnecting", sub.queued_bytes)
                sub.sending_since = loop.time()  # a close frame the client does not read ends in a hang-up
                await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow: fell behind the live stream")
                return
            sub.sending_since = loop.time()
            await ws.send_frame(frame, WSMsgType.TEXT)
            sub.sent(frame)
    except (ConnectionError, RuntimeError):
        return
