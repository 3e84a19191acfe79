"""Writes of the notification tables (channels, alert_routes, notifications): closures for central's
one batching writer (central/writer.py), so each runs inside a group commit and "awaited" means
"committed". The queue's decisions that must not race (join a group, seal it, record an attempt)
are made here, on the writer's thread, one at a time."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...dbconn import WriteConn, new_row_id
from ..model import SEVERITIES, Notice
from ..routing import Route, targets
from .message import notice_from_json, notice_json
from .spec import Channel

WriteFn = Callable[[WriteConn], Any]

PENDING, SENT, FAILED = "pending", "sent", "failed"
NOTIFICATION_STATES = (PENDING, SENT, FAILED)
CHANNEL_REMOVED = "the channel was removed before this was delivered"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Scheduled:
    """A queued notification a channel worker must try at `due` (epoch seconds)."""

    id: int
    channel: str
    due: float


@dataclass(frozen=True)
class Claim:
    """One attempt's material, read in the same commit that sealed the group."""

    id: int
    channel: Channel
    kind: str
    notices: tuple[Notice, ...]
    attempts: int
    created: float


# -- channels and routes ------------------------------------------------------------------------

def add_channel(channel: Channel, ts: float, operator: str) -> WriteFn:
    """Insert; False when the name is taken."""
    def run(conn: WriteConn) -> bool:
        return conn.execute(
            "INSERT INTO channels (name, kind, settings, secrets, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (channel.name, channel.kind, _dumps(dict(channel.settings)), _dumps(dict(channel.secrets)), ts, operator),
        ).rowcount == 1

    return run


def remove_channel(name: str, ts: float) -> WriteFn:
    """Delete the channel and its routes; what it still had queued is kept as failed (visible).
    Returns whether it existed."""
    def run(conn: WriteConn) -> bool:
        if conn.execute("DELETE FROM channels WHERE name = ?", (name,)).rowcount == 0:
            return False
        conn.execute(
            "UPDATE notifications SET state = ?, last_error = ?, updated_at = ? WHERE channel = ? AND state = ?",
            (FAILED, CHANNEL_REMOVED, ts, name, PENDING),
        )
        return True

    return run


def add_route(group: str, severity: str, channel: str, ts: float, operator: str) -> WriteFn:
    """Returns the new route's id, None when the channel does not exist, 0 when the route does."""
    def run(conn: WriteConn) -> int | None:
        if conn.execute("SELECT 1 FROM channels WHERE name = ?", (channel,)).fetchone() is None:
            return None
        row = conn.execute(
            "INSERT INTO alert_routes (grp, severity, channel, created_at, created_by) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (grp, severity, channel) DO NOTHING RETURNING id",
            (group, severity, channel, ts, operator),
        ).fetchone()
        return 0 if row is None else int(row[0])

    return run


def remove_route(route_id: int) -> WriteFn:
    def run(conn: WriteConn) -> bool:
        return conn.execute("DELETE FROM alert_routes WHERE id = ?", (route_id,)).rowcount > 0

    return run


def _routes(conn: WriteConn) -> list[Route]:
    return [Route(int(r[0]), r[1], r[2], r[3])
            for r in conn.execute("SELECT id, grp, severity, channel FROM alert_routes ORDER BY id")]


# -- the queue ----------------------------------------------------------------------------------

def enqueue(notices: Sequence[Notice], now: float, window: float, quiet: float) -> WriteFn:
    """Persist notices as deliveries: each joins its (channel, route, kind) group while the group is
    open (younger than `window`, not yet sealed), else opens one. A group is due when nothing has
    joined it for `quiet` seconds, and at the latest `window` after it opened.
    Returns the groups created or moved, for the channel workers."""
    def run(conn: WriteConn) -> list[Scheduled]:
        routes = _routes(conn)
        channels = [r[0] for r in conn.execute("SELECT name FROM channels ORDER BY name")]
        groups: dict[tuple[str, str], _Group] = {}
        rows: list[tuple[int, str]] = []
        for notice in notices:
            encoded = _dumps(notice_json(notice))
            for channel, route_key in targets(notice.alert, routes, channels).items():
                key = (channel, f"{route_key}:{notice.kind}")
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _open_group(conn, channel, key[1], notice, now, window)
                group.add(notice)
                rows.append((group.id, encoded))
        conn.executemany("INSERT INTO notification_notices (notification_id, notice) VALUES (?, ?)", rows)
        out = []
        for (channel, _), group in groups.items():
            due = min(group.until, now + quiet)
            conn.execute(
                "UPDATE notifications SET subjects = subjects + ?, due_at = ?, severity = ?, updated_at = ? WHERE id = ?",
                (group.added, due, group.severity, now, group.id),
            )
            out.append(Scheduled(group.id, channel, due))
        return out

    return run


@dataclass
class _Group:
    id: int
    until: float
    severity: str
    added: int = 0

    def add(self, notice: Notice) -> None:
        self.added += 1
        self.severity = min(self.severity, notice.alert.severity, key=SEVERITIES.index)


def _open_group(conn: WriteConn, channel: str, key: str, notice: Notice, now: float,
                window: float) -> _Group:
    """The channel's open group for `key`, or a new one."""
    row = conn.execute(
        "SELECT id, group_until, severity FROM notifications"
        " WHERE channel = ? AND group_key = ? AND state = ? AND sealed = 0 AND group_until > ?"
        " ORDER BY id DESC LIMIT 1",
        (channel, key, PENDING, now),
    ).fetchone()
    if row is not None:
        return _Group(int(row[0]), float(row[1]), row[2])
    until = now + window
    new_id = new_row_id(
        conn, "INSERT INTO notifications (channel, group_key, kind, severity, state, subjects, created_at,"
        " group_until, due_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
        (channel, key, notice.kind, notice.alert.severity, PENDING, now, until, until, now),
    )
    return _Group(new_id, until, notice.alert.severity)


def claim(notification_id: int, now: float) -> WriteFn:
    """Seal the group (nothing joins it any more) and read what to send; or say when it is due
    (a notice joined and moved it) with a float, or None when there is nothing to send (sent,
    failed, or its channel is gone, which fails it)."""
    def run(conn: WriteConn) -> Claim | float | None:
        row = conn.execute(
            "SELECT n.state, n.due_at, n.kind, n.attempts, n.created_at, n.channel, c.kind, c.settings, c.secrets"
            " FROM notifications n LEFT JOIN channels c ON c.name = n.channel WHERE n.id = ?",
            (notification_id,),
        ).fetchone()
        if row is None or row[0] != PENDING:
            return None
        if row[1] > now:
            return float(row[1])
        if row[6] is None:
            conn.execute("UPDATE notifications SET state = ?, last_error = ?, updated_at = ? WHERE id = ?",
                         (FAILED, CHANNEL_REMOVED, now, notification_id))
            return None
        conn.execute("UPDATE notifications SET sealed = 1 WHERE id = ?", (notification_id,))
        notices = tuple(notice_from_json(json.loads(r[0])) for r in conn.execute(
            "SELECT notice FROM notification_notices WHERE notification_id = ? ORDER BY id", (notification_id,)))
        channel = Channel(row[5], row[6], json.loads(row[7]), json.loads(row[8]))
        return Claim(notification_id, channel, row[2], notices, int(row[3]), float(row[4]))

    return run


def record_sent(notification_id: int, now: float, answer: str) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(
            "UPDATE notifications SET state = ?, attempts = attempts + 1, answer = ?, last_error = '', sent_at = ?,"
            " updated_at = ? WHERE id = ? AND state = ?",
            (SENT, answer, now, now, notification_id, PENDING),
        )

    return run


def record_failure(notification_id: int, now: float, error: str, retry_at: float | None) -> WriteFn:
    """One failed attempt: due again at `retry_at`, or failed for good when it is None."""
    def run(conn: WriteConn) -> None:
        conn.execute(
            "UPDATE notifications SET state = ?, attempts = attempts + 1, last_error = ?, due_at = ?, updated_at = ?"
            " WHERE id = ? AND state = ?",
            (PENDING if retry_at is not None else FAILED, error, retry_at if retry_at is not None else now, now,
             notification_id, PENDING),
        )

    return run


def resend(notification_ids: Sequence[int] | None, now: float) -> WriteFn:
    """Queue sent or failed notifications again, with a fresh count of attempts; None: every failed one.
    Returns the rescheduled ones (a pending one, or one whose channel is gone, is left alone)."""
    def run(conn: WriteConn) -> list[Scheduled]:
        if notification_ids is None:
            rows = conn.execute("SELECT n.id, n.channel FROM notifications n JOIN channels c ON c.name = n.channel"
                                " WHERE n.state = ?", (FAILED,)).fetchall()
        else:
            rows = [r for i in notification_ids for r in conn.execute(
                "SELECT n.id, n.channel FROM notifications n JOIN channels c ON c.name = n.channel"
                " WHERE n.id = ? AND n.state IN (?, ?)", (i, FAILED, SENT))]
        for row in rows:
            conn.execute(
                "UPDATE notifications SET state = ?, sealed = 1, attempts = 0, due_at = ?, updated_at = ? WHERE id = ?",
                (PENDING, now, now, row[0]),
            )
        return [Scheduled(int(r[0]), r[1], now) for r in rows]

    return run


def pending() -> WriteFn:
    """Every queued notification (at start-up: what a stop or a crash left behind)."""
    def run(conn: WriteConn) -> list[Scheduled]:
        return [Scheduled(int(r[0]), r[1], float(r[2])) for r in conn.execute(
            "SELECT id, channel, due_at FROM notifications WHERE state = ? ORDER BY due_at, id", (PENDING,))]

    return run


def forget_before(before: float, limit: int = 1000) -> WriteFn:
    """Delete up to `limit` sent or failed notifications last updated before `before` (retention)."""
    def run(conn: WriteConn) -> int:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM notifications WHERE state != ? AND updated_at < ? ORDER BY id LIMIT ?",
            (PENDING, before, limit))]
        conn.executemany("DELETE FROM notification_notices WHERE notification_id = ?", [(i,) for i in ids])
        conn.executemany("DELETE FROM notifications WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    return run
