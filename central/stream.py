"""The live events websocket for operator clients (docs/protocol.md section 4.2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import WSMsgType, web

from dvic_core.constants import CLOSE_MALFORMED, CLOSE_TOO_SLOW, OPERATOR_HEARTBEAT_S

from .auth import error_response
from .bus import Subscriber
from .routes import routes
from .services import SERVICES

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
    sub = services.bus.subscribe()
    sender = asyncio.create_task(_pump(ws, sub))
    try:
        await ws.send_str(json.dumps({"type": "hello", "nodes": [n.summary() for n in services.registry.all()]}))
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
                await ws.close(code=CLOSE_MALFORMED, message=str(exc).encode()[:120])
                break
            ids = set()
            for ref in wanted:
                node = services.registry.get(ref)
                ids.add("*" if ref == "*" else (node.id if node else ref))
            sub.log_nodes = frozenset(ids)
            await ws.send_str(json.dumps({"type": "subscribed", "logs": sorted(ids)}))
    finally:
        services.bus.unsubscribe(sub)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    return ws


async def _pump(ws: web.WebSocketResponse, sub: Subscriber) -> None:
    """Send queued frames; cut the client off when it fell too far behind.

    A client is marked too slow only when its queue is full, so the next `get` returns at once
    and the cut-off is not delayed by waiting for a frame.
    """
    try:
        while not ws.closed:
            frame = await sub.queue.get()
            if sub.too_slow.is_set():
                log.warning("stream client too slow: disconnecting")
                await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow: fell behind the live stream")
                return
            await ws.send_str(frame)
    except (ConnectionError, RuntimeError):
        return
