"""Alert writes: plain functions over a `WriteConn`, run by the batching writer.

The engine composes several of them into one closure per evaluation pass, so every alert that
starts or ends in a pass (500 nodes of a hall losing power) costs one commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..dbconn import WriteConn, new_row_id
from .model import Alert


def insert_alert(conn: WriteConn, alert: Alert, node_id: str | None) -> int:
    alert_id = new_row_id(
        conn, "INSERT INTO alerts (rule, subject, node_id, node, grp, kind, severity, state, summary, started)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (alert.rule, alert.subject, node_id, alert.node, alert.group, alert.kind, alert.severity, alert.state,
         alert.summary, alert.started),
    )
    add_event(conn, alert_id, alert.started, "fired", note=alert.summary)
    return alert_id


def resolve_alert(conn: WriteConn, alert_id: int, ts: float, reason: str) -> None:
    conn.execute("UPDATE alerts SET state = 'resolved', resolved = ? WHERE id = ? AND state != 'resolved'",
                 (ts, alert_id))
    add_event(conn, alert_id, ts, "resolved", note=reason)


def acknowledge(conn: WriteConn, alert_id: int, who: str, ts: float, note: str) -> int:
    changed = conn.execute(
        "UPDATE alerts SET state = 'acknowledged', acked_by = ?, acked_at = ?, ack_note = ?"
        " WHERE id = ? AND state = 'firing'", (who, ts, note, alert_id)).rowcount
    if changed:
        add_event(conn, alert_id, ts, "acknowledged", who=who, note=note)
    return changed


def record_notice(conn: WriteConn, alert_id: int, ts: float, kind: str) -> None:
    """A notice went to the sink: the alert's firing was told (reminders count from here)."""
    conn.execute("UPDATE alerts SET notified = 1, last_notice = ? WHERE id = ?", (ts, alert_id))
    add_event(conn, alert_id, ts, f"notice_{kind}")


def record_suppressed(conn: WriteConn, alert_id: int, ts: float, kind: str, why: str) -> None:
    add_event(conn, alert_id, ts, f"suppressed_{kind}", note=why)


def add_event(conn: WriteConn, alert_id: int, ts: float, what: str, who: str = "", note: str = "") -> None:
    conn.execute("INSERT INTO alert_events (alert_id, ts, what, who, note) VALUES (?, ?, ?, ?, ?)",
                 (alert_id, ts, what, who, note))


def trim_history(conn: WriteConn, before: float, chunk: int = 5000) -> int:
    """Forget alerts resolved before `before` (with their history) and silences that ended before it,
    at most `chunk` alerts a call. Returns how many alerts went."""
    ids = [row[0] for row in conn.execute(
        "SELECT id FROM alerts WHERE state = 'resolved' AND resolved < ? ORDER BY id LIMIT ?", (before, chunk))]
    if ids:
        marks = ",".join("?" * len(ids))
        conn.execute(f"DELETE FROM alert_events WHERE alert_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM alerts WHERE id IN ({marks})", ids)
    conn.execute("DELETE FROM silences WHERE ends < ?", (before,))
    return len(ids)


def save_rule(conn: WriteConn, name: str, stock: bool, spec: Mapping[str, Any], ts: float, by: str) -> None:
    conn.execute(
        "INSERT INTO alert_rules (name, stock, spec, updated_at, updated_by) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at,"
        " updated_by = excluded.updated_by",
        (name, 1 if stock else 0, json.dumps(spec, separators=(",", ":")), ts, by),
    )


def delete_rule(conn: WriteConn, name: str) -> int:
    return conn.execute("DELETE FROM alert_rules WHERE name = ?", (name,)).rowcount


def insert_silence(conn: WriteConn, matcher: Mapping[str, str], starts: float, ends: float, note: str,
                   by: str) -> int:
    return new_row_id(
        conn, "INSERT INTO silences (grp, node, rule, severity, starts, ends, note, created_by, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (matcher.get("group"), matcher.get("node"), matcher.get("rule"), matcher.get("severity"), starts, ends,
         note, by, starts),
    )


def remove_silence(conn: WriteConn, silence_id: int, ts: float, by: str) -> int:
    return conn.execute("UPDATE silences SET removed_at = ?, removed_by = ? WHERE id = ? AND removed_at IS NULL",
                        (ts, by, silence_id)).rowcount
