"""The SQL of demos: writes as closures for the one batching writer (central/writer.py), reads over
the read-only connection. Tables: schema step 7 in central/db.py."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..dbconn import ReadDB, WriteConn

WriteFn = Any  # Callable[[WriteConn], T], as central/store.py's WriteFn

RELEASE_COLUMNS = ("name", "version", "sha256", "size", "manifest", "unpacked_bytes", "members", "published_at",
                   "published_by")
DEPLOYMENT_COLUMNS = ("id", "demo", "kind", "version", "scope", "target", "batch", "released", "previous_version",
                      "state", "message", "operator", "created_at", "updated_at")
ROLLOUT_COLUMNS = ("deployment_id", "node_id", "batch", "previous_version", "previous_rollout", "state", "message",
                   "bytes", "total", "updated_at")
STATUS_COLUMNS = ("node_id", "demo", "version", "state", "pid", "restarts", "since", "last_exit", "last_heartbeat",
                  "message", "updated_at")


# Each table's key: a row saved again replaces the one with the same key (an upsert, on both engines).
KEYS = {"demo_releases": ("name", "version"), "demo_deployments": ("id",),
        "demo_rollout_nodes": ("deployment_id", "node_id"), "demo_status": ("node_id", "demo"),
        "demo_assignments": ("demo", "scope", "target")}


def _insert(table: str, columns: Sequence[str], replace: bool = True) -> str:
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    if not replace:
        return sql
    key = KEYS[table]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"{sql} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


def add_release(row: dict[str, Any]) -> WriteFn:
    """Insert a release unless its name and version exist. Returns the sha256 already stored under
    them (the caller compares) or None when the row is new."""
    def run(conn: WriteConn) -> str | None:
        found = conn.execute("SELECT sha256 FROM demo_releases WHERE name = ? AND version = ?",
                             (row["name"], row["version"])).fetchone()
        if found is not None:
            return str(found[0])
        values = {**row, "manifest": json.dumps(row["manifest"], separators=(",", ":"))}
        conn.execute(_insert("demo_releases", RELEASE_COLUMNS, replace=False),
                     tuple(values[c] for c in RELEASE_COLUMNS))
        return None

    return run


def delete_releases(keys: Iterable[tuple[str, str]]) -> WriteFn:
    """Delete releases by (name, version); returns the sha256s that no release holds any more."""
    keys = list(keys)

    def run(conn: WriteConn) -> list[str]:
        orphans: list[str] = []
        for name, version in keys:
            found = conn.execute("SELECT sha256 FROM demo_releases WHERE name = ? AND version = ?",
                                 (name, version)).fetchone()
            if found is None:
                continue
            conn.execute("DELETE FROM demo_releases WHERE name = ? AND version = ?", (name, version))
            if conn.execute("SELECT 1 FROM demo_releases WHERE sha256 = ?", (found[0],)).fetchone() is None:
                orphans.append(str(found[0]))
        return orphans

    return run


def save_deployment(dep: dict[str, Any]) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(_insert("demo_deployments", DEPLOYMENT_COLUMNS), tuple(dep[c] for c in DEPLOYMENT_COLUMNS))

    return run


def set_assignment(demo: str, scope: str, target: str, version: str | None, deployment_id: str) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(_insert("demo_assignments", ("demo", "scope", "target", "version", "deployment_id")),
                     (demo, scope, target, version, deployment_id))

    return run


def clear_assignments(demo: str) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute("DELETE FROM demo_assignments WHERE demo = ?", (demo,))

    return run


def delete_node_assignments(node_ids: Sequence[str]) -> WriteFn:
    marks = ", ".join("?" * len(node_ids))

    def run(conn: WriteConn) -> None:
        conn.execute(f"DELETE FROM demo_assignments WHERE scope = 'node' AND target IN ({marks})", tuple(node_ids))

    return run


def save_rollout_nodes(rows: Iterable[dict[str, Any]]) -> WriteFn:
    values = [tuple(r[c] for c in ROLLOUT_COLUMNS) for r in rows]

    def run(conn: WriteConn) -> None:
        conn.executemany(_insert("demo_rollout_nodes", ROLLOUT_COLUMNS), values)

    return run


def save_status(row: dict[str, Any]) -> WriteFn:
    values = {**row, "last_exit": json.dumps(row["last_exit"]) if row.get("last_exit") is not None else None}

    def run(conn: WriteConn) -> None:
        conn.execute(_insert("demo_status", STATUS_COLUMNS), tuple(values.get(c) for c in STATUS_COLUMNS))

    return run


def forget_status(node_id: str, demo: str) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute("DELETE FROM demo_status WHERE node_id = ? AND demo = ?", (node_id, demo))

    return run


# -- reads -------------------------------------------------------------------------------------
async def _rows(db: ReadDB, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    async with db.execute(sql, params) as cur:
        return [dict(r) for r in await cur.fetchall()]


async def releases(db: ReadDB) -> list[dict[str, Any]]:
    rows = await _rows(db, "SELECT * FROM demo_releases ORDER BY name, published_at")
    for row in rows:
        row["manifest"] = json.loads(row["manifest"])
    return rows


async def assignments(db: ReadDB) -> list[dict[str, Any]]:
    return await _rows(db, "SELECT * FROM demo_assignments")


async def live_deployments(db: ReadDB) -> list[dict[str, Any]]:
    """The deployments the server follows after a start: those an assignment names, and rolling ones."""
    return await _rows(db, "SELECT * FROM demo_deployments WHERE state = 'rolling'"
                           " OR id IN (SELECT deployment_id FROM demo_assignments) ORDER BY created_at")


async def deployments(db: ReadDB, demo: str | None, limit: int) -> list[dict[str, Any]]:
    if demo is None:
        return await _rows(db, "SELECT * FROM demo_deployments ORDER BY created_at DESC LIMIT ?", (limit,))
    return await _rows(db, "SELECT * FROM demo_deployments WHERE demo = ? ORDER BY created_at DESC LIMIT ?",
                       (demo, limit))


async def deployment(db: ReadDB, deployment_id: str) -> dict[str, Any] | None:
    rows = await _rows(db, "SELECT * FROM demo_deployments WHERE id = ?", (deployment_id,))
    return rows[0] if rows else None


async def rollout_nodes(db: ReadDB, deployment_ids: Sequence[str]) -> list[dict[str, Any]]:
    if not deployment_ids:
        return []
    marks = ", ".join("?" * len(deployment_ids))
    return await _rows(db, f"SELECT * FROM demo_rollout_nodes WHERE deployment_id IN ({marks})",  # noqa: S608
                       tuple(deployment_ids))


async def statuses(db: ReadDB) -> list[dict[str, Any]]:
    rows = await _rows(db, "SELECT * FROM demo_status")
    for row in rows:
        row["last_exit"] = json.loads(row["last_exit"]) if row["last_exit"] else None
    return rows
