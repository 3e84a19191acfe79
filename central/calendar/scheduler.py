"""The scheduler: fires every runbook occurrence exactly once, also across restarts and clock jumps.

How (docs/calendar.md "The scheduler"):
- The database keeps a scan mark (`scanned_to`) and one `firings` row per occurrence, keyed
  UNIQUE (runbook, occurrence key). A scan of (mark, now] records every occurrence due in it and
  moves the mark in one commit; only the rows that commit created are fired. An occurrence
  recorded once is never fired again, whatever the clock or a restart does.
- At start-up the scan covers the time the server was down: what fell due within the grace
  window (default 10 min) fires now, anything older is recorded 'missed'. A firing the previous
  run had started is 'interrupted', never repeated (its steps may have gone out).
- Idle, the scheduler sleeps until the next occurrence, but never longer than one tick (default
  60 s): the sleep runs on the monotonic clock, so a wall clock set forward is noticed within a
  tick (what it skipped is handled like downtime), and one set back finds nothing new to scan
  (the mark only moves forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..tasks import cancel_and_wait
from ..writer import Writer
from . import store
from .queries import CalendarQueries
from .store import Claim

log = logging.getLogger(__name__)

GRACE_S = 600.0
TICK_S = 60.0
# Downtime longer than this is recorded from its last week only (older occurrences are not listed).
LOOKBACK_S = 7 * 86400.0


class Plan(Protocol):
    """What is due when: the calendar service answers from its runbooks and hours."""

    def due_between(self, after: float, until: float) -> list[tuple[int, str, float]]:
        """(runbook id, occurrence key, due) of every occurrence due in (after, until]."""
        ...

    def next_due(self, after: float) -> float | None:
        ...


FireFn = Callable[[int, int, float], None]  # (firing id, runbook id, due)


class Scheduler:
    def __init__(self, writer: Writer, queries: CalendarQueries, plan: Plan, fire: FireFn, *,
                 grace_s: float = GRACE_S, tick_s: float = TICK_S, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.queries = queries
        self.plan = plan
        self.fire = fire
        self.grace_s = grace_s
        self.tick_s = tick_s
        self.clock = clock
        self.scanned_to = 0.0
        self.wakeups = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> list[tuple[int, int, float]]:
        """Settle what the last run left, catch up with the downtime, then run. Returns the
        firings left pending by the last run that are fired again now (within the grace window)."""
        now = self.clock()
        resumed = await self.writer.submit(store.settle_unfinished(now, self.grace_s))
        mark = await self.queries.scanned_to()
        if mark is None:
            # First start: nothing before now was ever scheduled.
            await self.writer.submit(store.claim_occurrences([], now))
            mark = now
        self.scanned_to = mark
        for firing_id, runbook_id, due in resumed:
            self.fire(firing_id, runbook_id, due)
        await self.scan(now)
        self._task = asyncio.create_task(self._loop(), name="dvic-calendar-scheduler")
        return list(resumed)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def wake(self) -> None:
        """Hours or runbooks changed: work out the next occurrence again."""
        self._wake.set()

    async def scan(self, now: float) -> int:
        """Record and fire what fell due in (scanned_to, now]; returns how many fire."""
        if now <= self.scanned_to:
            return 0  # the clock went back (or no time passed): everything before the mark is done
        after = max(self.scanned_to, now - LOOKBACK_S)
        claims = [self._claim(runbook_id, key, due, now) for runbook_id, key, due in self.plan.due_between(after, now)]
        if not claims:
            # Nothing due: the mark moves in memory only (an idle scheduler writes nothing). After a
            # restart the scan starts from the stored mark and finds nothing more in between.
            self.scanned_to = now
            return 0
        fresh = await self.writer.submit(store.claim_occurrences(claims, now))
        self.scanned_to = now
        for firing_id, claim in fresh:
            self.fire(firing_id, claim.runbook_id, claim.due_at)
        return len(fresh)

    def _claim(self, runbook_id: int, key: str, due: float, now: float) -> Claim:
        late = now - due
        if late <= self.grace_s:
            return Claim(runbook_id, key, due, "pending")
        return Claim(runbook_id, key, due, "missed",
                     f"due while the server was down (or its clock jumped), {late:.0f} s before it could fire: "
                     f"past the {self.grace_s:.0f} s grace window")

    def delay(self, now: float) -> float:
        """Seconds to sleep from `now`: until the next occurrence, at most one tick.

        Asked from the scan mark, the time the next scan starts from: the plan's answer (cached per
        runbook) then also tells that scan which runbooks have nothing due."""
        upcoming = self.plan.next_due(self.scanned_to)
        if upcoming is None:
            return self.tick_s
        return min(self.tick_s, max(upcoming - now, 0.0))

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # before the scan: a change told during it wakes the next sleep at once
            try:
                await self.scan(self.clock())
                delay = self.delay(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:  # a storage hiccup must not end the scheduler: try again next tick
                log.exception("calendar scan failed")
                delay = self.tick_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self.wakeups += 1
