"""The statements of the replicas' coordination (leader.py, pgbus.py), over a plain asyncpg
connection of their own: advisory locks, the session check, who holds what, NOTIFY."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


async def try_advisory_lock(conn: Any, class_id: int, object_id: int) -> bool:
    """Take the session-level lock (class_id, object_id) if free; True when this session holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", class_id, object_id))


async def ping(conn: Any) -> None:
    """One round trip: the session is alive."""
    await conn.fetchval("SELECT 1")


async def advisory_holders(conn: Any, class_id: int) -> dict[int, str]:
    """{object id (as pg_locks shows it: unsigned): the holding session's application_name}."""
    rows = await conn.fetch(
        "SELECT l.objid::bigint AS objid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.classid::bigint = $1 AND l.granted", class_id)
    return {int(row["objid"]): str(row["application_name"]) for row in rows}


async def notify_all(conn: Any, channel: str, payloads: Sequence[str]) -> None:
    """NOTIFY every payload on `channel` in one statement (delivered together, in this order)."""
    await conn.execute("SELECT pg_notify($1, part) FROM unnest($2::text[]) AS part", channel, list(payloads))


# -- attempts counted against a budget by every replica (attempts.py; schema step 12) ---------------
async def take_attempt(conn: Any, lock_class: int, lock_ids: Sequence[int],
                       checks: Sequence[tuple[str, str, int, float]]) -> list[float]:
    """For each check (scope, subject, limit, window s): the seconds until its budget has room (0:
    room now), read under the checks' advisory locks in one transaction, so that replicas asking at
    once are counted one after the other. When every check has room, one attempt is counted for
    the first. Times are the database's clock."""
    async with conn.transaction():
        for object_id in sorted(set(lock_ids)):  # always in one order: no deadlock between askers
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", lock_class, object_id)
        now = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
        waits: list[float] = []
        for scope, subject, limit, window in checks:
            # The oldest of the budget's last `limit` attempts within the window, when there are that many.
            oldest = await conn.fetchval(
                "SELECT min(at) FROM (SELECT at FROM attempts WHERE scope = $1 AND subject = $2 AND at > $3"
                " ORDER BY at DESC LIMIT $4) AS recent HAVING count(*) >= $4",
                scope, subject, now - window, limit)
            waits.append(0.0 if oldest is None else max(float(oldest) + window - now, 1.0))
        if not any(waits):
            await conn.execute("INSERT INTO attempts (scope, subject, at) VALUES ($1, $2, $3)",
                               checks[0][0], checks[0][1], now)
        return waits


async def note_attempt(conn: Any, scope: str, subject: str) -> None:
    """Count one attempt without a check (an account created: the total's budget)."""
    await conn.execute("INSERT INTO attempts (scope, subject, at)"
                       " VALUES ($1, $2, extract(epoch FROM clock_timestamp())::float8)", scope, subject)


async def purge_attempts(conn: Any, older_than_s: float) -> int:
    """Forget the attempts older than `older_than_s` (outside every budget's window); how many."""
    status = await conn.execute("DELETE FROM attempts WHERE at < extract(epoch FROM clock_timestamp())::float8 - $1",
                                older_than_s)
    return int(str(status).rsplit(" ", 1)[-1])
