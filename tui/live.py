"""The console's live feed: keeps the events websocket open, reconnects, and hands updates over.

Node updates are coalesced per node (`take_nodes`) so 2,000 nodes reporting every 5 s cost the
console one table pass every fraction of a second instead of one message per update.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from textual.message import Message

from tui.client import ApiClient, ApiError, Stream
from tui.messages import Connected, Disconnected, EventArrived, LogsArrived

BACKOFF_START = 1.0
BACKOFF_MAX = 15.0


class LiveFeed:
    def __init__(self, api: ApiClient, post: Callable[[Message], Any]) -> None:
        self.api = api
        self.post = post
        self.subscription: list[str] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.connected = False
        self._stream: Stream | None = None
        self._wake = asyncio.Event()

    def take_nodes(self) -> list[dict[str, Any]]:
        nodes = list(self.pending.values())
        self.pending.clear()
        return nodes

    async def subscribe(self, logs: list[str]) -> None:
        if logs == self.subscription:
            return
        self.subscription = logs
        if self._stream is not None:
            try:
                await self._stream.subscribe(logs)
            except (ConnectionError, RuntimeError):
                pass  # the socket is going away; the next connection subscribes again

    def retry_now(self) -> None:
        """Skips the remaining back-off (the user pressed the reconnect key)."""
        self._wake.set()

    async def run(self) -> None:
        delay = BACKOFF_START
        while True:
            reason = await self._session()
            self.connected = False
            fatal = reason.startswith(("HTTP 401", "HTTP 403"))
            wait = BACKOFF_MAX * 2 if fatal else delay
            self.post(Disconnected(reason, wait, fatal))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)  # back-off, cut short by retry_now()
            except TimeoutError:
                pass
            delay = BACKOFF_START if self._had_session else min(delay * 2, BACKOFF_MAX)

    async def _session(self) -> str:
        """One connection's life; returns why it ended."""
        self._had_session = False
        try:
            stream = await self.api.stream()
        except ApiError as exc:
            return f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
        self._stream = stream
        try:
            # Subscribe and take the snapshot after the socket is open, so no change is missed.
            await stream.subscribe(self.subscription)
            me = await self.api.me()
            nodes = await self.api.nodes()
            self.pending.clear()
            self.connected = True
            self._had_session = True
            self.post(Connected(nodes, me))
            async for msg in stream:
                kind = msg.get("type")
                if kind == "node" and isinstance(msg.get("node"), dict) and "id" in msg["node"]:
                    self.pending[str(msg["node"]["id"])] = msg["node"]
                elif kind == "hello" and isinstance(msg.get("nodes"), list):
                    # The server's greeting snapshot: newer than or equal to the GET above.
                    for node in msg["nodes"]:
                        if isinstance(node, dict) and "id" in node:
                            self.pending[str(node["id"])] = node
                elif kind == "logs" and isinstance(msg.get("lines"), list):
                    # One frame may carry several nodes' lines (then it names no node): split them.
                    by_node: dict[str, list[dict[str, Any]]] = {}
                    for line in msg["lines"]:
                        if isinstance(line, dict):
                            by_node.setdefault(str(msg.get("node") or line.get("node", "")), []).append(line)
                    for node_id, lines in by_node.items():
                        self.post(LogsArrived(node_id, lines))
                elif kind == "event" and isinstance(msg.get("event"), dict):
                    self.post(EventArrived(msg["event"]))
            code = stream.close_code
            return "the server closed the stream" + (f" (code {code})" if code else "")
        except ApiError as exc:
            return f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
        except (ConnectionError, OSError) as exc:
            return f"connection lost: {exc}"
        except Exception as exc:  # noqa: BLE001 - the feed must outlive any surprise and retry
            return f"unexpected error in the live feed: {exc!r}"
        finally:
            self._stream = None
            await stream.close()
