"""Attempt budgets that every replica counts alike (issue 18; docs/security.md).

On one server the brute-force budgets live in its memory (central/accounts.py `SlidingLimit`, the
auth middleware's `Refusals`): self-registrations per client address and accounts created in
total, anonymous refusals audited per address. Behind a balancer each replica would give an
address the whole budget again, so with several replicas the budgets are counted in the database
(`attempts`, schema step 12): one row per attempt counted, a sliding window over the rows,
checked and counted in one short transaction under an advisory lock per budget and subject, so
that replicas asking at once are counted one after the other, never both within the last slot.

These are rare events (a registration, the first ten anonymous refusals of an address in a
minute), so a round trip to the database each is cheap; what keeps a flood from becoming a
flood of transactions is in front of it: each replica's own budget (a subset of the shared
count) answers first, and a shared refusal is remembered here until the budget has room again.
The one server on SQLite asks nothing of this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..dbconn import DatabaseUnavailable, mask_url, unavailable
from . import queries

log = logging.getLogger(__name__)

LOCK_CLASS = 0x6476_6961  # "dvia": apart from the once-only jobs' locks (leader.py, "dvic")
# Rows older than this are outside every budget's window (the longest is an hour): deleted, at
# most once per PURGE_EVERY_S per replica.
PURGE_AFTER_S = 24 * 3600.0
PURGE_EVERY_S = 3600.0


@dataclass(frozen=True)
class Budget:
    """At most `limit` attempts per `window` seconds, per subject (a client address, or "" for one
    count in total); `scope` names it in the table."""

    scope: str
    limit: int
    window: float


@dataclass(frozen=True)
class Full:
    """A budget without room: the seconds until it has some."""

    budget: Budget
    wait: float


def lock_id(scope: str, subject: str) -> int:
    """The advisory lock's second key for one budget's subject (a signed 32-bit int, as int4)."""
    value = zlib.crc32(f"{scope}\0{subject}".encode()) & 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class SharedAttempts:
    """Budgets counted in the PostgreSQL every replica uses (see the module's docstring).

    `pool` is an asyncpg pool (the reads' pool: a take holds one connection for a few round trips).
    """

    def __init__(self, pool: Any, url: str, *, max_remembered: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.url = url
        self.max_remembered = max_remembered
        self.clock = clock
        self.asked = 0  # transactions made (the tests look)
        # (scope, subject) -> monotonic time its budget has room again, as the database last said
        self._full_until: dict[tuple[str, str], float] = {}
        self._last_purge = clock()
        self._purging: asyncio.Task[None] | None = None

    async def take(self, budget: Budget, subject: str, also: Sequence[tuple[Budget, str]] = ()) -> Full | None:
        """Count one attempt of `subject` against `budget` if it, and every budget in `also`, has
        room (None); else the budget that is full the longest (nothing counted)."""
        checks = [(budget, subject), *also]
        now = self.clock()
        known = [Full(b, self._full_until.get((b.scope, s), now) - now) for b, s in checks]
        full = max(known, key=lambda f: f.wait)
        if full.wait > 0:
            return full
        waits = await self._ask(lambda conn: queries.take_attempt(
            conn, LOCK_CLASS, [lock_id(b.scope, s) for b, s in checks],
            [(b.scope, s, b.limit, b.window) for b, s in checks]))
        for (b, s), wait in zip(checks, waits, strict=True):
            if wait > 0:
                self._remember(b.scope, s, now + wait)
        self._purge_now_and_then(now)
        full = max((Full(b, w) for (b, _), w in zip(checks, waits, strict=True)), key=lambda f: f.wait)
        return full if full.wait > 0 else None

    async def note(self, budget: Budget, subject: str) -> None:
        """Count one attempt without a check (an account created: counted against the total)."""
        await self._ask(lambda conn: queries.note_attempt(conn, budget.scope, subject))

    async def close(self) -> None:
        if self._purging is not None:
            self._purging.cancel()

    async def _ask(self, work: Any) -> Any:
        self.asked += 1
        try:
            async with self.pool.acquire() as conn:
                return await work(conn)
        except Exception as exc:
            if not unavailable(exc):
                raise
            raise DatabaseUnavailable(f"the database {mask_url(self.url)} is unavailable: {exc}") from exc

    def _remember(self, scope: str, subject: str, until: float) -> None:
        if len(self._full_until) >= self.max_remembered:
            now = self.clock()
            self._full_until = {k: t for k, t in self._full_until.items() if t > now}
            if len(self._full_until) >= self.max_remembered:
                self._full_until.clear()  # (the database still counts: only a round trip more each)
        self._full_until[(scope, subject)] = until

    def _purge_now_and_then(self, now: float) -> None:
        if now - self._last_purge < PURGE_EVERY_S or (self._purging is not None and not self._purging.done()):
            return
        self._last_purge = now
        self._purging = asyncio.get_running_loop().create_task(self._purge(), name="dvic-attempts-purge")

    async def _purge(self) -> None:
        try:
            gone = await self._ask(lambda conn: queries.purge_attempts(conn, PURGE_AFTER_S))
        except Exception as exc:  # the next one, an hour later
            log.warning("old attempts not deleted: %s", exc)
            return
        if gone:
            log.info("deleted %d attempts older than %.0f h", gone, PURGE_AFTER_S / 3600)
