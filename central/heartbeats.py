"""Node websocket heartbeats by one sweep, instead of a ping and a pong timer per connection.

aiohttp's heartbeat gives every websocket a ping timer and a pong timer and schedules a callback
on every read that arrives: about 1.8 KB per connected node, and a callback per frame (20,000
nodes: docs/performance.md, "memory per node"). One task per event loop does the same job for
every node link (central/nodelink.py): every `interval / 4` it pings each node from which nothing
was read for `interval` (its pings and pongs count: the link times its reads), and drops a node
from which nothing was read within `interval / 2` of that ping, as aiohttp does, with aiohttp's
reason; the sweep's step makes both happen up to `interval / 4` later than aiohttp's timers would.
The sweep runs only while some node is watched. A node websocket served by aiohttp (plain-HTTP
development mode) keeps aiohttp's own heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)


class Beating(Protocol):
    """What the sweep needs of a connection (central/nodelink.py NodeLink has it)."""

    last_read: float  # time.monotonic() of the last read from the peer
    ping_sent: float  # of the unanswered ping, 0 when none
    silent: bool  # set when dropped for not answering

    def ping(self) -> None: ...

    def abort(self) -> None: ...


def silence_reason(interval: float) -> str:
    """Why a node that did not answer was dropped (aiohttp's words, which the events keep)."""
    return f"No PONG received after {interval / 2} seconds"


class Heartbeats:
    """The sweep of one event loop (see the module doc): `watch` and `unwatch` use it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pong_wait = interval / 2
        self.step = interval / 4
        self._watched: set[Beating] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, link: Beating) -> None:
        self._watched.add(link)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unwatch(self, link: Beating) -> None:
        self._watched.discard(link)
        if not self._watched and self._task is not None:
            self._task.cancel()
            self._task = None
            _by_loop.pop(asyncio.get_running_loop(), None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.step)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Drop the nodes that did not answer; ping those quiet for an interval."""
        for link in list(self._watched):  # a drop may end a session, and unwatch it, before this ends
            last_read = link.last_read
            if link.ping_sent:
                if last_read <= link.ping_sent:
                    if now - link.ping_sent >= self.pong_wait:
                        link.silent = True
                        # Abort, as for a dead peer: a TLS close would wait for its close_notify.
                        link.abort()
                    continue
                link.ping_sent = 0.0
            if now - last_read >= self.interval:
                link.ping_sent = now
                # A ping never waits: written to the transport (a node whose send buffer is full
                # stops being read until it drains, central/nodelink.py).
                link.ping()


_by_loop: dict[asyncio.AbstractEventLoop, Heartbeats] = {}


def watch(link: Beating, interval: float) -> None:
    """Put a node link under the running loop's sweep (made on first use)."""
    loop = asyncio.get_running_loop()
    heartbeats = _by_loop.get(loop)
    if heartbeats is None:
        heartbeats = _by_loop[loop] = Heartbeats(interval)
    heartbeats.watch(link)


def unwatch(link: Beating) -> None:
    """Take it off again (its connection is over); the sweep stops when nothing is left."""
    heartbeats = _by_loop.get(asyncio.get_running_loop())
    if heartbeats is not None:
        heartbeats.unwatch(link)
