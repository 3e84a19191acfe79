"""What the operator-stream tests share: reading a subscriber's log lines."""

from __future__ import annotations

import json

import aiohttp


async def stream_seqs(ws: aiohttp.ClientWebSocketResponse, count: int, timeout: float = 30.0) -> list[int]:
    """The seq of every log line the subscriber `ws` receives, in order, until there are `count`."""
    seen: list[int] = []
    while len(seen) < count:
        msg = json.loads((await ws.receive(timeout=timeout)).data)
        if msg["type"] == "logs":
            seen.extend(line["seq"] for line in msg["lines"])
    return seen
