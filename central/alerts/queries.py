"""Alert reads over the server's read-only aiosqlite connection (history, rules, silences)."""

from __future__ import annotations

import json
from typing import Any

from ..dbconn import ReadDB
from ..queries import given, where_sql
from .model import Alert
from .silences import Silence

ALERT_COLUMNS = ("id, rule, subject, node_id, node, grp, kind, severity, state, summary, started, resolved,"
                 " acked_by, acked_at, ack_note, notified, last_notice")


def alert_from_row(row: Any) -> Alert:
    return Alert(id=row["id"], rule=row["rule"], subject=row["subject"], node=row["node"], group=row["grp"],
                 kind=row["kind"], severity=row["severity"], state=row["state"], summary=row["summary"],
                 started=row["started"], resolved=row["resolved"], acked_by=row["acked_by"],
                 acked_at=row["acked_at"], ack_note=row["ack_note"])


async def open_alerts(db: ReadDB) -> list[dict[str, Any]]:
    """Every alert not resolved, with the engine's bookkeeping (node_id, notified, last_notice)."""
    async with db.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE state != 'resolved' ORDER BY id") as cur:
        rows = await cur.fetchall()
    return [{"alert": alert_from_row(r), "node_id": r["node_id"], "notified": bool(r["notified"]),
             "last_notice": r["last_notice"]} for r in rows]


async def alert_history(db: ReadDB, *, before_id: int | None = None, limit: int = 100,
                        node: str | None = None, rule: str | None = None) -> list[Alert]:
    """Alerts newest first (resolved ones included), for `dvic alerts --all`."""
    where, params = given(("id < ?", before_id), ("node = ?", node), ("rule = ?", rule))
    sql = f"SELECT {ALERT_COLUMNS} FROM alerts" + where_sql(where) + " ORDER BY id DESC LIMIT ?"
    async with db.execute(sql, (*params, limit)) as cur:
        return [alert_from_row(r) for r in await cur.fetchall()]


async def alert(db: ReadDB, alert_id: int) -> Alert | None:
    async with db.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)) as cur:
        row = await cur.fetchone()
    return alert_from_row(row) if row else None


async def alert_events(db: ReadDB, alert_id: int) -> list[dict[str, Any]]:
    async with db.execute("SELECT ts, what, who, note FROM alert_events WHERE alert_id = ? ORDER BY id",
                          (alert_id,)) as cur:
        return [dict(r) for r in await cur.fetchall()]


async def rules(db: ReadDB) -> list[dict[str, Any]]:
    async with db.execute("SELECT name, stock, spec, updated_at, updated_by FROM alert_rules ORDER BY name") as cur:
        rows = await cur.fetchall()
    return [{"name": r["name"], "stock": bool(r["stock"]), "spec": json.loads(r["spec"]),
             "updated_at": r["updated_at"], "updated_by": r["updated_by"]} for r in rows]


async def silences(db: ReadDB, since: float) -> list[Silence]:
    """Silences not removed that end after `since` (the ones that can still matter)."""
    async with db.execute("SELECT * FROM silences WHERE ends > ? AND removed_at IS NULL ORDER BY id",
                          (since,)) as cur:
        rows = await cur.fetchall()
    return [silence_from_row(r) for r in rows]


def silence_from_row(row: Any) -> Silence:
    return Silence(id=row["id"], starts=row["starts"], ends=row["ends"], note=row["note"],
                   created_by=row["created_by"], created_at=row["created_at"], group=row["grp"], node=row["node"],
                   rule=row["rule"], severity=row["severity"], removed_at=row["removed_at"],
                   removed_by=row["removed_by"])


async def demo_flag_events(db: ReadDB, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """The stored events of these kinds (the daemon's demo_crashloop, demo_unhealthy, demo_recovered),
    oldest first: a new features leader rebuilds the demo flags from them."""
    marks = ", ".join("?" for _ in kinds)
    async with db.execute(f"SELECT ts, node_id, kind, data FROM events WHERE kind IN ({marks}) ORDER BY id",
                          kinds) as cur:
        rows = await cur.fetchall()
    return [{"ts": float(r["ts"]), "node_id": r["node_id"], "kind": r["kind"], "data": json.loads(r["data"] or "{}")}
            for r in rows]
