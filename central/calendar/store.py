"""The calendar's writes: each function returns a WriteFn for the server's one writer (central/writer.py).

The checks that must not race (a booking's overlap, the scheduler's "fire once") run inside the
write itself: the writer runs one transaction at a time, so two operators booking the same machine
at the same instant are decided there, one after the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..dbconn import WriteConn, new_row_id
from ..store import WriteFn


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Conflict(Exception):
    """A booking overlaps another on a node; carries what the refusal names."""

    def __init__(self, booking_id: int, holder: str, node_id: str, starts_at: float, ends_at: float) -> None:
        super().__init__(f"booking {booking_id} of {holder} holds node {node_id}")
        self.booking_id = booking_id
        self.holder = holder
        self.node_id = node_id
        self.starts_at = starts_at
        self.ends_at = ends_at


class NotEnoughFree(Exception):
    def __init__(self, free: int) -> None:
        super().__init__(f"{free} free")
        self.free = free


class Duplicate(Exception):
    """A runbook name already taken in its group."""


# -- hours -------------------------------------------------------------------------------------
def set_hours(grp: str, zone: str, week: dict[int, list[tuple[int, int]]], ts: float, by: str) -> WriteFn:
    week_json = _dumps({str(d): spans for d, spans in week.items()})
    return lambda conn: conn.execute(
        "INSERT INTO cal_hours (grp, zone, week, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (grp) DO UPDATE SET zone = excluded.zone, week = excluded.week,"
        " updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (grp, zone, week_json, ts, by)).rowcount


def set_exception(grp: str, day: str, spans: list[tuple[int, int]], note: str) -> WriteFn:
    return lambda conn: conn.execute(
        "INSERT INTO cal_exceptions (grp, day, spans, note) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (grp, day) DO UPDATE SET spans = excluded.spans, note = excluded.note",
        (grp, day, _dumps(spans), note)).rowcount


def drop_exception(grp: str, day: str) -> WriteFn:
    return lambda conn: conn.execute("DELETE FROM cal_exceptions WHERE grp = ? AND day = ?", (grp, day)).rowcount


# -- runbooks and firings ------------------------------------------------------------------------
def add_runbook(grp: str, name: str, moment: str, steps: list[dict[str, Any]], catch_up_s: float, ts: float,
                by: str) -> WriteFn:
    def run(conn: WriteConn) -> int:
        taken = conn.execute("SELECT 1 FROM runbooks WHERE grp = ? AND name = ? AND deleted_at IS NULL",
                             (grp, name)).fetchone()
        if taken:
            raise Duplicate(name)
        # A deleted runbook's name is free again: the old row keeps its history under a new name.
        conn.execute("UPDATE runbooks SET name = name || '~' || id WHERE grp = ? AND name = ?", (grp, name))
        return new_row_id(conn, "INSERT INTO runbooks (grp, name, moment, steps, catch_up_s, created_at, created_by)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?)", (grp, name, moment, _dumps(steps), catch_up_s, ts, by))

    return run


def delete_runbook(runbook_id: int, ts: float) -> WriteFn:
    return lambda conn: conn.execute("UPDATE runbooks SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                                     (ts, runbook_id)).rowcount


@dataclass(frozen=True)
class Claim:
    """An occurrence the scheduler found due: `state` is 'pending' (to fire) or 'missed'."""

    runbook_id: int
    occurrence: str
    due_at: float
    state: str
    message: str = ""


def claim_occurrences(claims: Sequence[Claim], scanned_to: float) -> WriteFn:
    """Record the occurrences due up to `scanned_to` and move the scan mark there, in one commit.

    Returns the ids of the rows this call created with state 'pending', each with its claim: an
    occurrence already recorded (the UNIQUE key) is not returned again, so it fires once.
    """
    def run(conn: WriteConn) -> list[tuple[int, Claim]]:
        fresh: list[tuple[int, Claim]] = []
        for claim in claims:
            row = conn.execute(
                "INSERT INTO firings (runbook_id, occurrence, due_at, state, trigger, message)"
                " VALUES (?, ?, ?, ?, 'schedule', ?) ON CONFLICT (runbook_id, occurrence) DO NOTHING RETURNING id",
                (claim.runbook_id, claim.occurrence, claim.due_at, claim.state, claim.message)).fetchone()
            if row is not None and claim.state == "pending":
                fresh.append((int(row[0]), claim))
        # The mark only moves forward: a wall clock set back does not rescan what is done.
        conn.execute("INSERT INTO scheduler_state (key, value) VALUES ('scanned_to', ?)"
                     " ON CONFLICT (key) DO UPDATE SET value = CASE WHEN excluded.value > scheduler_state.value"
                     " THEN excluded.value ELSE scheduler_state.value END", (scanned_to,))
        return fresh

    return run


def add_firing(runbook_id: int, due_at: float, trigger: str, operator: str) -> WriteFn:
    """A firing that is not a scheduled occurrence (run-now): no key, never deduplicated."""
    return lambda conn: new_row_id(
        conn, "INSERT INTO firings (runbook_id, occurrence, due_at, state, trigger, operator)"
        " VALUES (?, NULL, ?, 'pending', ?, ?)", (runbook_id, due_at, trigger, operator))


def set_firing(firing_id: int, state: str, ts: float, message: str = "") -> WriteFn:
    column = "started_at" if state == "running" else "finished_at"
    return lambda conn: conn.execute(
        f"UPDATE firings SET state = ?, {column} = ?, message = ? WHERE id = ?",
        (state, ts, message, firing_id)).rowcount


def set_firing_node(firing_id: int, node_id: str, node_name: str, state: str, step: int, message: str,
                    ts: float) -> WriteFn:
    return lambda conn: conn.execute(
        "INSERT INTO firing_nodes (firing_id, node_id, node_name, state, step, message, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (firing_id, node_id) DO UPDATE SET state = excluded.state,"
        " step = excluded.step, message = excluded.message, updated_at = excluded.updated_at",
        (firing_id, node_id, node_name, state, step, message[:2000], ts)).rowcount


def settle_unfinished(now: float, grace_s: float) -> WriteFn:
    """At start-up: a firing the last run left running is 'interrupted' (its steps may have gone out:
    it is never repeated); one recorded but not started fires now if still within the grace window,
    else it is 'missed'. Returns (id, runbook id, due) of those still to fire."""
    def run(conn: WriteConn) -> list[tuple[int, int, float]]:
        conn.execute("UPDATE firings SET state = 'interrupted', finished_at = ?,"
                     " message = 'the server stopped while it ran' WHERE state = 'running'", (now,))
        conn.execute("UPDATE firing_nodes SET state = 'interrupted', updated_at = ? WHERE state IN"
                     " ('pending', 'running', 'waiting') AND firing_id IN"
                     " (SELECT id FROM firings WHERE state = 'interrupted' AND finished_at = ?)", (now, now))
        conn.execute("UPDATE firings SET state = 'missed', finished_at = ?, message = ? WHERE state = 'pending'"
                     " AND due_at < ?", (now, f"the server was down past the {grace_s:.0f} s grace window",
                                          now - grace_s))
        return [(int(r[0]), int(r[1]), float(r[2])) for r in conn.execute(
            "SELECT id, runbook_id, due_at FROM firings WHERE state = 'pending' ORDER BY due_at")]

    return run


def trim_firings(before: float, limit: int = 2000) -> WriteFn:
    """Delete up to `limit` finished firings due before `before`, with their per-node states (the
    history's retention: a write of bounded size, repeated until it returns less than `limit`)."""
    def run(conn: WriteConn) -> int:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM firings WHERE due_at < ? AND state NOT IN ('pending', 'running') ORDER BY due_at LIMIT ?",
            (before, limit))]
        if ids:
            marks = ",".join("?" * len(ids))
            conn.execute(f"DELETE FROM firing_nodes WHERE firing_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM firings WHERE id IN ({marks})", ids)
        return len(ids)

    return run


# -- bookings ------------------------------------------------------------------------------------
def _first_conflict(conn: WriteConn, node_ids: Sequence[str], starts_at: float, ends_at: float,
                    exclude: int | None = None) -> Conflict | None:
    marks = ",".join("?" * len(node_ids))
    row = conn.execute(
        "SELECT bn.booking_id, b.holder, bn.node_id, bn.starts_at, bn.ends_at FROM booking_nodes bn"
        f" JOIN bookings b ON b.id = bn.booking_id WHERE bn.node_id IN ({marks}) AND bn.live = 1"
        " AND bn.ends_at > ? AND bn.starts_at < ? AND bn.booking_id != ? ORDER BY bn.starts_at LIMIT 1",
        (*node_ids, starts_at, ends_at, exclude or 0)).fetchone()
    return Conflict(int(row[0]), row[1], row[2], row[3], row[4]) if row else None


def _busy(conn: WriteConn, node_ids: Sequence[str], starts_at: float, ends_at: float) -> set[str]:
    marks = ",".join("?" * len(node_ids))
    return {r[0] for r in conn.execute(
        f"SELECT DISTINCT node_id FROM booking_nodes WHERE node_id IN ({marks}) AND live = 1"
        " AND ends_at > ? AND starts_at < ?", (*node_ids, starts_at, ends_at))}


def create_booking(holder: str, by: str, starts_at: float, ends_at: float, note: str, deploy: str, now: float,
                   node_ids: Sequence[str], count: int | None = None) -> WriteFn:
    """Book `node_ids` (all of them), or with `count` the first `count` of them that are free.

    Raises Conflict (the first booking in the way) or NotEnoughFree; returns (id, the booked node ids).
    """
    def run(conn: WriteConn) -> tuple[int, list[str]]:
        if count is None:
            conflict = _first_conflict(conn, node_ids, starts_at, ends_at)
            if conflict is not None:
                raise conflict
            chosen = list(node_ids)
        else:
            busy = _busy(conn, node_ids, starts_at, ends_at) if node_ids else set()
            free = [n for n in node_ids if n not in busy]
            if len(free) < count:
                raise NotEnoughFree(len(free))
            chosen = free[:count]
        booking_id = new_row_id(
            conn, "INSERT INTO bookings (holder, starts_at, ends_at, note, deploy, state, created_at, created_by)"
            " VALUES (?, ?, ?, ?, ?, 'active', ?, ?)", (holder, starts_at, ends_at, note, deploy, now, by))
        conn.executemany("INSERT INTO booking_nodes (booking_id, node_id, starts_at, ends_at) VALUES (?, ?, ?, ?)",
                         [(booking_id, n, starts_at, ends_at) for n in chosen])
        return booking_id, chosen

    return run


def cancel_booking(booking_id: int, now: float, by: str) -> WriteFn:
    """Cancel: the booking stops holding its machines at once; its row stays, as cancelled, in the history."""
    def run(conn: WriteConn) -> int:
        changed = conn.execute(
            "UPDATE bookings SET state = 'cancelled', cancelled_at = ?, cancelled_by = ? WHERE id = ? AND state = 'active'",
            (now, by, booking_id)).rowcount
        conn.execute("UPDATE booking_nodes SET live = 0 WHERE booking_id = ?", (booking_id,))
        return int(changed)

    return run


def extend_booking(booking_id: int, node_ids: Sequence[str], starts_at: float, ends_at: float) -> WriteFn:
    """Move a booking's end (longer or shorter); raises Conflict when the new end overlaps another."""
    def run(conn: WriteConn) -> int:
        conflict = _first_conflict(conn, node_ids, starts_at, ends_at, exclude=booking_id)
        if conflict is not None:
            raise conflict
        conn.execute("UPDATE booking_nodes SET ends_at = ? WHERE booking_id = ?", (ends_at, booking_id))
        return int(conn.execute("UPDATE bookings SET ends_at = ? WHERE id = ? AND state = 'active'",
                                (ends_at, booking_id)).rowcount)

    return run


def set_deploy_state(booking_id: int, state: str, message: str) -> WriteFn:
    """A booking's deployment: '' (not applied yet), 'applied' (at its start), 'restored' (at its end)."""
    return lambda conn: conn.execute("UPDATE bookings SET deploy_state = ?, deploy_message = ? WHERE id = ?",
                                     (state, message[:2000], booking_id)).rowcount


def insert_bookings_bulk(rows: Sequence[tuple[str, float, float, str, Sequence[str]]], now: float) -> WriteFn:
    """Many bookings at once without overlap checks: the benchmark's fixture (bench/calendar.py)."""
    def run(conn: WriteConn) -> int:
        for holder, starts_at, ends_at, note, node_ids in rows:
            booking_id = new_row_id(
                conn, "INSERT INTO bookings (holder, starts_at, ends_at, note, deploy, state, created_at, created_by)"
                " VALUES (?, ?, ?, ?, '', 'active', ?, ?)", (holder, starts_at, ends_at, note, now, holder))
            conn.executemany("INSERT INTO booking_nodes (booking_id, node_id, starts_at, ends_at) VALUES (?, ?, ?, ?)",
                             [(booking_id, n, starts_at, ends_at) for n in node_ids])
        return len(rows)

    return run
