"""What the shell and tunnel relays and the command-output stream share: sending to a client
websocket without ever waiting for ever on a client that stopped reading, a bounded queue whose
end marker always fits, and waiting for the pump when the relay ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from .bus import SEND_STALL_S
from .strictjson import dumps

log = logging.getLogger(__name__)

PUMP_GRACE_S = 5.0


class ClientGone(ConnectionError):
    """The client stopped reading and was hung up."""


@contextlib.asynccontextmanager
async def stall_guard(hang_up: Callable[[], None], what: str) -> AsyncIterator[None]:
    """Around a send to a client: if it has not taken the frame after SEND_STALL_S, it stopped
    reading (pings do not count: they keep the websocket heartbeat content). Hang it up, which
    frees what was queued for it, and raise ClientGone. A send waits only when the socket's
    buffers are full, so a client that reads, however slowly, is never cut by this."""
    try:
        async with asyncio.timeout(SEND_STALL_S):
            yield
    except TimeoutError:
        log.warning("%s client not reading for %.0f s: hanging up", what, SEND_STALL_S)
        hang_up()
        raise ClientGone(f"{what} client not reading") from None


def hang_up_of(request: web.Request) -> Callable[[], None]:
    """Drops the request's connection at once (no goodbye the client would not read anyway)."""
    transport = request.transport
    return transport.abort if transport is not None else (lambda: None)


def offer(queue: asyncio.Queue[Any], item: Any, limit: int) -> bool:
    """Queue an item for the pump unless `limit` items wait already; the end marker (None) always
    fits, so a pump behind a full queue still learns that the relay ended."""
    if item is not None and queue.qsize() >= limit:
        return False
    queue.put_nowait(item)
    return True


async def pump_to_client(queue: asyncio.Queue[Any], ws: web.WebSocketResponse,
                         final: Callable[[], dict[str, Any]], hang_up: Callable[[], None], what: str) -> None:
    """Send queued items (bytes as binary frames, dicts as JSON) until None, then `final()` and close."""
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            async with stall_guard(hang_up, what):
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_str(dumps(item))
        async with stall_guard(hang_up, what):
            await ws.send_str(dumps(final()))
            await ws.close()
    except (ConnectionError, RuntimeError):
        # The client is gone: nothing left to tell it, and nothing queued is kept for it.
        while not queue.empty():
            queue.get_nowait()


async def finish_pump(pump: asyncio.Task[None]) -> None:
    """Let the pump deliver its last frames, but never hang the handler on a stuck client."""
    if pump.done():
        return
    try:
        await asyncio.wait_for(pump, PUMP_GRACE_S)
    except TimeoutError:
        pump.cancel()
