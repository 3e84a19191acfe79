"""A booking's deployment (`book ... --deploy NAME@VERSION`): applied to its machines at its start,
and the machines given back their group's desired state at its end or when it is cancelled.

Through the Deployments port (central/calendar/ports.py); without it no booking carries a
deployment (refused at creation), and this does nothing. Each edge is written to the booking
(`deploy_state`: '' -> applied -> restored, or failed / skipped) once it is done: desired state is
idempotent, so an edge a crash interrupted is simply done again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..tasks import cancel_and_wait
from ..writer import Writer
from . import store
from .ports import Deployments
from .queries import CalendarQueries

log = logging.getLogger(__name__)


class BookingDeploys:
    def __init__(self, writer: Writer, queries: CalendarQueries, deployments: Callable[[], Deployments | None],
                 tick_s: float, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.queries = queries
        self.deployments = deployments
        self.tick_s = tick_s
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dvic-calendar-booking-deploys")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def step(self, now: float) -> float | None:
        """Do every edge due at `now`; returns when the next one is due (None: none known)."""
        deployments = self.deployments()
        if deployments is None:
            return None
        upcoming: float | None = None
        for row in await self.queries.deploy_edges():
            due = await self._edge(deployments, row, now)
            if due is not None and (upcoming is None or due < upcoming):
                upcoming = due
        return upcoming

    async def _edge(self, deployments: Deployments, row: dict[str, Any], now: float) -> float | None:
        over = row["state"] != "active" or row["ends_at"] <= now
        by = f"booking:{row['id']}"
        if row["deploy_state"] == "":
            if over:
                await self.writer.submit(store.set_deploy_state(row["id"], "skipped", "over before it began"))
                return None
            if row["starts_at"] > now:
                return float(row["starts_at"])
            demo, _, version = row["deploy"].partition("@")
            state, message = await _attempt(deployments.deploy_nodes(row["nodes"], demo, version, by), "applied")
            await self.writer.submit(store.set_deploy_state(row["id"], state, message))
            return float(row["ends_at"]) if state == "applied" else None
        if not over:  # applied, still holding
            return float(row["ends_at"])
        state, message = await _attempt(deployments.restore_nodes(row["nodes"], by), "restored")
        await self.writer.submit(store.set_deploy_state(row["id"], state, message))
        return None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                upcoming = await self.step(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:  # a storage hiccup must not end the loop: try again next tick
                log.exception("booking deployments failed")
                upcoming = None
            delay = self.tick_s if upcoming is None else min(self.tick_s, max(upcoming - self.clock(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)


async def _attempt(call: Any, success: str) -> tuple[str, str]:
    try:
        return success, str(await call)
    except Exception as exc:  # the deployments feature says why; the booking keeps the reason
        log.warning("booking deployment: %s", exc)
        return "failed", str(exc)
