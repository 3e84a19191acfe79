"""The console's live feed: keeps the events websocket open, reconnects, and hands updates over.

Node updates are coalesced per node (`take_nodes`) so 2,000 nodes reporting every 5 s cost the
console one table pass every fraction of a second instead of one message per update.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from textual.message import Message

from tui.api.aio import AsyncClient, Stream
from tui.api.errors import ApiError
from tui.api.follow_logs import Backoff
from tui.console.messages import AlertCounts, Connected, Disconnected, ForScreens
from tui.console.screens.base import DvicScreen

REFUSED_WAIT_S = 30.0  # after a 401/403: retrying sooner would not change the answer


class LiveFeed:
    def __init__(self, api: AsyncClient, post: Callable[[Message], Any]) -> None:
        self.api = api
        self.post = post
        self.subscription: list[str] = []
        self.pending: dict[str, dict[str, Any]] = {}
        self.connected = False
        self._stream: Stream | None = None
        self._wake = asyncio.Event()

    def take_nodes(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The latest summary of each node updated since the last take (at most `limit`, oldest first)."""
        if limit is None or len(self.pending) <= limit:
            nodes = list(self.pending.values())
            self.pending.clear()
            return nodes
        ids = list(itertools.islice(self.pending, limit))
        return [self.pending.pop(i) for i in ids]

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
        backoff = Backoff()  # the reconnect rule of `dvic logs --follow` too
        while True:
            reason = await self._session()
            self.connected = False
            if self._had_session:
                backoff.reset()
            fatal = reason.startswith(("HTTP 401", "HTTP 403"))
            wait = REFUSED_WAIT_S if fatal else backoff.next()
            self.post(Disconnected(reason, wait, fatal))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)  # back-off, cut short by retry_now()
            except TimeoutError:
                pass

    async def _session(self) -> str:
        """One connection's life; returns why it ended."""
        self._had_session = False
        # Who we are is asked while the stream opens: start-up waits for one round trip, not two.
        me_call = asyncio.ensure_future(self.api.me())
        try:
            stream = await self.api.stream()
        except ApiError as exc:
            _drop(me_call)
            return f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
        self._stream = stream
        try:
            await stream.subscribe(self.subscription)
            me = await me_call
            messages = aiter(stream)
            # The stream's first message, `hello`, is the whole fleet as of the connection: the
            # snapshot, with no separate GET /nodes (docs/protocol.md 4.2). Every change after it
            # follows on the same socket, so none is missed.
            nodes = None
            alerts = None
            async for msg in messages:
                if msg.get("type") == "hello" and isinstance(msg.get("nodes"), list):
                    nodes = [n for n in msg["nodes"] if isinstance(n, dict) and "id" in n]
                    alerts = msg.get("alerts") if isinstance(msg.get("alerts"), dict) else None
                    break
                self._handle(msg)
            if nodes is None:
                code = stream.close_code
                return "the server closed the stream before its greeting" + (f" (code {code})" if code else "")
            self.pending.clear()
            self.connected = True
            self._had_session = True
            self.post(Connected(nodes, me, alerts))
            async for msg in messages:
                self._handle(msg)
            code = stream.close_code
            return "the server closed the stream" + (f" (code {code})" if code else "")
        except ApiError as exc:
            return f"HTTP {exc.status}: {exc.message}" if exc.status else exc.message
        except (ConnectionError, OSError) as exc:
            return f"connection lost: {exc}"
        except Exception as exc:  # noqa: BLE001 - the feed must outlive any surprise and retry
            return f"unexpected error in the live feed: {exc!r}"
        finally:
            _drop(me_call)
            self._stream = None
            await stream.close()

    def _handle(self, msg: dict[str, Any]) -> None:
        """One stream message: node updates wait in `pending` for the next pass, the rest is posted."""
        kind = msg.get("type")
        if kind == "node" and isinstance(msg.get("node"), dict) and "id" in msg["node"]:
            if self.connected:  # before the greeting's snapshot, an update is older than it
                self.pending[str(msg["node"]["id"])] = msg["node"]
        elif kind == "logs" and isinstance(msg.get("lines"), list):
            # One frame may carry several nodes' lines (then it names no node): split them.
            by_node: dict[str, list[dict[str, Any]]] = {}
            for line in msg["lines"]:
                if isinstance(line, dict):
                    by_node.setdefault(str(msg.get("node") or line.get("node", "")), []).append(line)
            for node_id, lines in by_node.items():
                self.post(ForScreens(DvicScreen.live_logs, node_id, lines))
        elif kind == "event" and isinstance(msg.get("event"), dict):
            self.post(ForScreens(DvicScreen.live_event, msg["event"]))
        elif kind == "alerts" and isinstance(msg.get("counts"), dict):
            self.post(AlertCounts(msg["counts"]))
        elif kind == "alert" and isinstance(msg.get("alert"), dict):
            self.post(ForScreens(DvicScreen.live_alert, str(msg.get("change") or ""), msg["alert"]))
        elif kind == "silence" and isinstance(msg.get("silence"), dict):
            self.post(ForScreens(DvicScreen.live_silence, str(msg.get("change") or ""), msg["silence"]))
        elif kind == "demo_status" and msg.get("demo"):
            node = msg.get("node")
            if node:
                self.post(ForScreens(DvicScreen.live_demo_status, {**msg, "node": str(node)}))
        elif kind == "deployment" and isinstance(msg.get("deployment"), dict):
            self.post(ForScreens(DvicScreen.live_deployment, msg["deployment"]))


def _drop(call: asyncio.Future[Any]) -> None:
    """Cancels a call whose answer is no longer wanted, and takes its error so none is reported."""
    call.cancel()
    call.add_done_callback(lambda done: done.cancelled() or done.exception())
