"""The calendar's reads, over the server's read-only connection (beside the writer, WAL)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..dbconn import ReadDB

BOOKING_COLUMNS = ("b.id, b.holder, b.starts_at, b.ends_at, b.note, b.deploy, b.state, b.created_at, b.created_by,"
                   " b.cancelled_at, b.cancelled_by, b.deploy_state, b.deploy_message")


class CalendarQueries:
    def __init__(self, db: ReadDB) -> None:
        self.db = db

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        async with self.db.execute(sql, params) as cur:
            return [dict(r) for r in await cur.fetchall()]

    # -- hours ---------------------------------------------------------------------------------
    async def hours(self) -> list[dict[str, Any]]:
        rows = await self._all("SELECT grp, zone, week, updated_at, updated_by FROM cal_hours ORDER BY grp")
        for row in rows:
            row["week"] = {int(d): [tuple(s) for s in spans] for d, spans in json.loads(row["week"]).items()}
        return rows

    async def exceptions(self) -> list[dict[str, Any]]:
        rows = await self._all("SELECT grp, day, spans, note FROM cal_exceptions ORDER BY grp, day")
        for row in rows:
            row["spans"] = [tuple(s) for s in json.loads(row["spans"])]
        return rows

    # -- runbooks --------------------------------------------------------------------------------
    async def runbooks(self) -> list[dict[str, Any]]:
        rows = await self._all("SELECT * FROM runbooks WHERE deleted_at IS NULL ORDER BY grp, name")
        for row in rows:
            row["steps"] = json.loads(row["steps"])
        return rows

    async def firings(self, runbook_id: int | None, limit: int, grp: str | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if runbook_id is not None:
            where.append("f.runbook_id = ?")
            params.append(runbook_id)
        if grp is not None:
            where.append("r.grp = ?")
            params.append(grp)
        sql = ("SELECT f.*, r.name AS runbook, r.grp AS grp FROM firings f JOIN runbooks r ON r.id = f.runbook_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.due_at DESC, f.id DESC LIMIT ?")
        rows = await self._all(sql, [*params, limit])
        if rows:
            nodes = await self.firing_nodes([r["id"] for r in rows])
            for row in rows:
                row["nodes"] = nodes.get(row["id"], [])
        return rows

    async def firing_nodes(self, firing_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        marks = ",".join("?" * len(firing_ids))
        out: dict[int, list[dict[str, Any]]] = {}
        for row in await self._all(f"SELECT * FROM firing_nodes WHERE firing_id IN ({marks}) ORDER BY node_name",
                                   firing_ids):
            out.setdefault(row.pop("firing_id"), []).append(row)
        return out

    async def firing(self, firing_id: int) -> dict[str, Any] | None:
        rows = await self._all("SELECT f.*, r.name AS runbook, r.grp AS grp FROM firings f"
                               " JOIN runbooks r ON r.id = f.runbook_id WHERE f.id = ?", (firing_id,))
        if not rows:
            return None
        rows[0]["nodes"] = (await self.firing_nodes([firing_id])).get(firing_id, [])
        return rows[0]

    async def scanned_to(self) -> float | None:
        rows = await self._all("SELECT value FROM scheduler_state WHERE key = 'scanned_to'")
        return float(rows[0]["value"]) if rows else None

    # -- bookings ---------------------------------------------------------------------------------
    async def _with_nodes(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return rows
        marks = ",".join("?" * len(rows))
        nodes: dict[int, list[str]] = {}
        for r in await self._all(f"SELECT booking_id, node_id FROM booking_nodes WHERE booking_id IN ({marks})"
                                 " ORDER BY node_id", [r["id"] for r in rows]):
            nodes.setdefault(r["booking_id"], []).append(r["node_id"])
        for row in rows:
            row["nodes"] = nodes.get(row["id"], [])
        return rows

    async def bookings_at(self, at: float, holder: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Active bookings holding at instant `at`."""
        sql = (f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.state = 'active' AND b.ends_at > ? AND b.starts_at <= ?"
               + (" AND b.holder = ?" if holder else "") + " ORDER BY b.starts_at, b.id LIMIT ?")
        params: list[Any] = [at, at, *([holder] if holder else []), limit]
        return await self._with_nodes(await self._all(sql, params))

    async def bookings_from(self, now: float, holder: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Active bookings not over at `now` (holding or to come)."""
        sql = (f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.state = 'active' AND b.ends_at > ?"
               + (" AND b.holder = ?" if holder else "") + " ORDER BY b.starts_at, b.id LIMIT ?")
        params: list[Any] = [now, *([holder] if holder else []), limit]
        return await self._with_nodes(await self._all(sql, params))

    async def booking(self, booking_id: int) -> dict[str, Any] | None:
        rows = await self._with_nodes(await self._all(f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.id = ?",
                                                      (booking_id,)))
        return rows[0] if rows else None

    async def deploy_edges(self) -> list[dict[str, Any]]:
        """Bookings whose deployment is still to apply (at the start) or to undo (at the end or cancel)."""
        return await self._with_nodes(await self._all(
            f"SELECT {BOOKING_COLUMNS} FROM bookings b WHERE b.deploy != '' AND b.deploy_state IN ('', 'applied')"))

    async def live_holds(self, now: float) -> list[tuple[int, str, str, float, float]]:
        """(booking id, holder, node id, start, end) of every live booking not over at `now`."""
        async with self.db.execute(
                "SELECT bn.booking_id, b.holder, bn.node_id, bn.starts_at, bn.ends_at FROM booking_nodes bn"
                " JOIN bookings b ON b.id = bn.booking_id WHERE bn.live = 1 AND bn.ends_at > ?", (now,)) as cur:
            return [(int(r[0]), r[1], r[2], float(r[3]), float(r[4])) for r in await cur.fetchall()]
