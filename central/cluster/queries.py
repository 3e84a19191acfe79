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
