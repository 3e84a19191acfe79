"""What the shell and tunnel relays share: pumping queued bytes to a client websocket, then a
final control frame, and waiting for that pump when the relay ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .strictjson import dumps

PUMP_GRACE_S = 5.0


async def pump_to_client(queue: asyncio.Queue[Any], ws: web.WebSocketResponse,
                         final: Callable[[], dict[str, Any]]) -> None:
    """Send queued items (bytes as binary frames, dicts as JSON) until None, then `final()` and close."""
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(dumps(item))
        await ws.send_str(dumps(final()))
        await ws.close()
    except (ConnectionError, RuntimeError):
        pass  # the client is gone: nothing left to tell it


async def finish_pump(pump: asyncio.Task[None]) -> None:
    """Let the pump deliver its last frames, but never hang the handler on a stuck client."""
    if pump.done():
        return
    try:
        await asyncio.wait_for(pump, PUMP_GRACE_S)
    except TimeoutError:
        pump.cancel()
