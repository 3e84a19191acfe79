"""An operator's live stream (GET /api/v1/stream) that times each log line from its node to here."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any

import aiohttp

STAMP = " sent="


class LatencySubscriber:
    """With `track`, also the (node, seq) of every line received and every event frame."""

    def __init__(self, url: str, token: str, ssl_context: ssl.SSLContext, track: bool = False) -> None:
        self.url = url
        self.seen: set[tuple[str, int]] | None = set() if track else None
        self.events: list[dict[str, Any]] = []
        self.token = token
        self.ssl_context = ssl_context
        self.measure_from = float("inf")  # wall time; lines sent earlier are counted, not timed
        self.latencies: list[float] = []
        self.lines = 0
        self.unstamped = 0
        self.frames = 0
        self.other_frames = 0
        self.close_code: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            f"{self.url}/api/v1/stream", ssl=self.ssl_context, headers={"Authorization": f"Bearer {self.token}"},
            max_msg_size=16 * 1024 * 1024, heartbeat=None,
        )
        await self._ws.send_str(json.dumps({"type": "subscribe", "logs": ["*"]}))
        # The server confirms the subscription; node updates may come first.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self._ws.receive(timeout=max(0.1, deadline - loop.time()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"stream closed before subscribing (code {self._ws.close_code})")
            if json.loads(msg.data).get("type") == "subscribed":
                break
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.time()
            frame = json.loads(msg.data)
            if frame.get("type") != "logs":
                self.other_frames += 1
                if self.seen is not None and frame.get("type") == "event":
                    self.events.append(frame["event"])
                continue
            self.frames += 1
            for line in frame["lines"]:
                self.lines += 1
                if self.seen is not None:
                    self.seen.add((line["node"], line["seq"]))
                text = line.get("msg", "")
                cut = text.rfind(STAMP)
                if cut < 0:
                    self.unstamped += 1
                    continue
                sent = float(text[cut + len(STAMP):])
                if sent >= self.measure_from:
                    self.latencies.append(now - sent)
        self.close_code = self._ws.close_code

    async def wait_for_lines(self, count: int, timeout: float) -> bool:
        """Poll (bounded) until `count` lines arrived; False on timeout or a closed stream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.lines < count:
            if loop.time() > deadline or (self._task is not None and self._task.done()):
                return False
            await asyncio.sleep(0.05)
        return True

    @property
    def cut_off(self) -> bool:
        return self._task is not None and self._task.done() and self.close_code not in (None, 1000)

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=10)
        if self._session is not None:
            await self._session.close()
