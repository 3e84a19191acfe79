"""Node websocket heartbeats by one sweep, instead of aiohttp's per connection.

aiohttp's heartbeat gives every websocket a ping timer and a pong timer and schedules a callback
on every read that arrives: about 1.8 KB per connected node, and a callback per frame (20,000
nodes: docs/performance.md, "memory per node"). One task per event loop does the same job here:
every `interval / 4` it pings each watched node from which nothing was read for `interval` (its
pings and pongs count: the reads are timed where they arrive, `tlsconn.TlsConnection`), and
drops a node from which nothing was read within `interval / 2` of that ping, as aiohttp does,
with aiohttp's reason; the sweep's step makes both happen up to `interval / 4` later than
aiohttp's timers would. The sweep runs only while some node is watched.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from .listener import ReadTimes

log = logging.getLogger(__name__)


class Watched:
    """One node websocket under the sweep."""

    __slots__ = ("sweep", "ws", "reads", "transport", "ping_sent", "silent")

    def __init__(self, sweep: Heartbeats, ws: web.WebSocketResponse, reads: ReadTimes,
                 transport: asyncio.Transport) -> None:
        self.sweep = sweep
        self.ws = ws
        self.reads = reads
        self.transport = transport
        self.ping_sent = 0.0  # monotonic time of the unanswered ping, 0 when none
        self.silent = False  # dropped for not answering


class Heartbeats:
    """The sweep of one event loop (see the module doc): `watch` and `unwatch` use it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pong_wait = interval / 2
        self.step = interval / 4
        self.reason = f"No PONG received after {self.pong_wait} seconds"  # aiohttp's words
        self._watched: set[Watched] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, ws: web.WebSocketResponse, reads: ReadTimes, transport: asyncio.Transport) -> Watched:
        watched = Watched(self, ws, reads, transport)
        self._watched.add(watched)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return watched

    def unwatch(self, watched: Watched) -> None:
        self._watched.discard(watched)
        if not self._watched and self._task is not None:
            self._task.cancel()
            self._task = None
            _by_loop.pop(asyncio.get_running_loop(), None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.step)
            due = self.sweep(time.monotonic())
            if due:
                await self._ping(due)

    def sweep(self, now: float) -> list[web.WebSocketResponse]:
        """Drop the nodes that did not answer; the websockets to ping now."""
        due = []
        for watched in list(self._watched):  # a drop may end a session, and unwatch it, before this ends
            last_read = watched.reads.last_read
            if watched.ping_sent:
                if last_read <= watched.ping_sent:
                    if now - watched.ping_sent >= self.pong_wait:
                        self._drop(watched)
                    continue
                watched.ping_sent = 0.0
            if now - last_read >= self.interval:
                watched.ping_sent = now
                due.append(watched.ws)
        return due

    def _drop(self, watched: Watched) -> None:
        watched.silent = True
        # Abort, as for a dead peer: a TLS close would wait for its close_notify.
        watched.transport.abort()

    async def _ping(self, sockets: list[web.WebSocketResponse]) -> None:
        # Together: one waiting for room in a full send buffer holds up no other, nor the next
        # sweep for longer than a step. A ping that fails belongs to a closing connection, whose
        # session ends on its own.
        pings = asyncio.gather(*(ws.ping() for ws in sockets), return_exceptions=True)
        try:
            await asyncio.wait_for(pings, self.step)
        except TimeoutError:
            log.debug("heartbeat pings still waiting for room after %.1f s", self.step)


_by_loop: dict[asyncio.AbstractEventLoop, Heartbeats] = {}


def watch(ws: web.WebSocketResponse, reads: ReadTimes, transport: asyncio.Transport,
          interval: float) -> Watched:
    """Put a node websocket under the running loop's sweep (made on first use)."""
    loop = asyncio.get_running_loop()
    heartbeats = _by_loop.get(loop)
    if heartbeats is None:
        heartbeats = _by_loop[loop] = Heartbeats(interval)
    return heartbeats.watch(ws, reads, transport)


def unwatch(watched: Watched) -> None:
    """Take it off again (its connection is over); the sweep stops when nothing is left."""
    watched.sweep.unwatch(watched)
