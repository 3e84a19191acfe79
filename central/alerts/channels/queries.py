"""Reads of the notification tables on the server's read connection (aiosqlite).

Only `channel_with_secrets` selects the secrets column, for sending a test message on the server;
everything the API returns is built from the other functions, which never read it.
"""

from __future__ import annotations

import json
from typing import Any

from ...dbconn import ReadDB
from ...queries import given, where_sql
from ..routing import Route
from .message import notice_from_json
from .spec import Channel
from .store import FAILED, PENDING

MAX_PAGE = 500


async def channels(db: ReadDB) -> list[dict[str, Any]]:
    """Every channel's public view, with when and by whom it was added."""
    out = []
    async with db.execute("SELECT name, kind, settings, created_at, created_by FROM channels ORDER BY name") as cur:
        async for row in cur:
            view = Channel(row[0], row[1], json.loads(row[2]), {}).public()
            view.pop("secrets")
            out.append({**view, "created_at": row[3], "created_by": row[4]})
    secrets = await _secret_names(db)
    for view in out:
        view["secrets"] = secrets.get(view["name"], [])
    return out


async def _secret_names(db: ReadDB) -> dict[str, list[str]]:
    """Which secrets each channel has set (names only: json_each never hands the values to Python)."""
    names: dict[str, list[str]] = {}
    sql = ("SELECT c.name, j.key FROM channels c, json_each(c.secrets) j WHERE j.key != 'url' ORDER BY c.name, j.key"
           if db.dialect == "sqlite" else
           "SELECT c.name, k FROM channels c, jsonb_object_keys(CAST(c.secrets AS JSONB)) AS k WHERE k != 'url'"
           " ORDER BY c.name, k")
    async with db.execute(sql) as cur:
        async for row in cur:
            names.setdefault(row[0], []).append(row[1])
    return names


async def channel_with_secrets(db: ReadDB, name: str) -> Channel | None:
    """The whole channel, secrets included: for the server's own use (sending), never for an answer."""
    async with db.execute("SELECT name, kind, settings, secrets FROM channels WHERE name = ?", (name,)) as cur:
        row = await cur.fetchone()
    return None if row is None else Channel(row[0], row[1], json.loads(row[2]), json.loads(row[3]))


async def routes(db: ReadDB) -> list[dict[str, Any]]:
    async with db.execute("SELECT id, grp, severity, channel, created_at, created_by FROM alert_routes ORDER BY id") as cur:
        return [{"id": r[0], "group": r[1], "severity": r[2], "channel": r[3], "created_at": r[4],
                 "created_by": r[5]} async for r in cur]


async def route_list(db: ReadDB) -> list[Route]:
    async with db.execute("SELECT id, grp, severity, channel FROM alert_routes ORDER BY id") as cur:
        return [Route(int(r[0]), r[1], r[2], r[3]) async for r in cur]


_NOTIFICATION_COLUMNS = ("id, channel, group_key, kind, severity, state, subjects, created_at, due_at, attempts,"
                         " last_error, answer, updated_at, sent_at")


def _notification(row: Any) -> dict[str, Any]:
    keys = [k.strip() for k in _NOTIFICATION_COLUMNS.split(",")]
    out = dict(zip(keys, tuple(row), strict=True))
    out["route"] = out.pop("group_key").rsplit(":", 1)[0]
    return out


async def notifications(db: ReadDB, *, state: str | None = None, channel: str | None = None,
                        before: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first; `before`: only ids below it (the next page)."""
    where, params = given(("state = ?", state), ("channel = ?", channel), ("id < ?", before))
    params.append(max(1, min(limit, MAX_PAGE)))
    async with db.execute(f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications{where_sql(where)}"
                          " ORDER BY id DESC LIMIT ?", params) as cur:
        return [_notification(r) async for r in cur]


async def notification(db: ReadDB, notification_id: int) -> dict[str, Any] | None:
    """One notification with the subjects it lists."""
    async with db.execute(f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE id = ?",
                          (notification_id,)) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    out = _notification(row)
    async with db.execute("SELECT notice FROM notification_notices WHERE notification_id = ? ORDER BY id",
                          (notification_id,)) as cur:
        notices = [notice_from_json(json.loads(r[0])) async for r in cur]
    out["alerts"] = [{"notice": n.kind, "alert_id": n.alert.id, "rule": n.alert.rule, "subject": n.alert.subject,
                      "severity": n.alert.severity, "summary": n.alert.summary} for n in notices]
    return out


async def counts(db: ReadDB) -> dict[str, int]:
    """Notifications per state (pending ones are the queue: /metrics shows them)."""
    out = {PENDING: 0, FAILED: 0, "sent": 0}
    async with db.execute("SELECT state, count(*) FROM notifications GROUP BY state") as cur:
        async for row in cur:
            out[row[0]] = int(row[1])
    return out
