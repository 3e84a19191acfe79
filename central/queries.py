"""Read side of the store: history queries over the read connection (dbconn.ReadDB: a read-only
aiosqlite connection, which WAL lets run beside the writer, or an asyncpg pool). The SQL is
portable; the full-text search and the metric buckets differ per engine (`db.dialect`)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from dvic_core.constants import LEVEL_NUMBERS, LEVELS

from .db import PG_LOG_WORDS, SQLITE_MINUTE
from .dbconn import ReadDB
from .messages import MAX_METRIC_ABS
from .strictjson import MAX_INT

# A stored level number back to its name.
LEVEL_NAMES = {number: name for name, number in LEVEL_NUMBERS.items()}


class QueryError(ValueError):
    """A query parameter the caller got wrong; the message says which and why."""


def given(*terms: tuple[str, Any]) -> tuple[list[str], list[Any]]:
    """The clauses of the (clause, value) terms whose value is given (not None), and their values."""
    kept = [(clause, value) for clause, value in terms if value is not None]
    return [clause for clause, _ in kept], [value for _, value in kept]


def where_sql(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(last: int, kind: str = "id") -> str:
    return base64.urlsafe_b64encode(f"{kind}:{last}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kinds: tuple[str, ...] = ("id",)) -> tuple[str, int] | None:
    """(kind, value) of a cursor this server issued for this kind of query; None for no cursor."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, value = raw.split(":", 1)
        number = int(value)
        if kind not in kinds or not 0 <= number <= MAX_INT:  # (beyond it SQLite raises OverflowError)
            raise ValueError
        return kind, number
    except (ValueError, UnicodeDecodeError):
        raise QueryError("cursor: not a cursor this server issued for this query") from None


def before_id(cursor: str | None) -> int | None:
    decoded = decode_cursor(cursor)
    return decoded[1] if decoded else None


_FTS_TOKEN = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str) -> str:
    """User text -> a safe FTS5 query: every word must appear (prefix match on the last one).

    Users type plain words, not FTS syntax; quoting each token means `"`, `-`, `OR`, `*` in their
    text can never raise an FTS syntax error or change the meaning.
    """
    tokens = _FTS_TOKEN.findall(text)
    if not tokens:
        raise QueryError("q: give at least one word to search for")
    quoted = [f'"{t}"' for t in tokens[:16]]
    quoted[-1] += "*"
    return " AND ".join(quoted)


_TS_PART = re.compile(r"[^\W_]+", re.UNICODE)


def tsquery(text: str) -> str:
    """User text -> a safe PostgreSQL `to_tsquery` text with the meaning of `fts_query`: every word
    must appear, the last one as a prefix. A word FTS5 would split (`foo_bar`) is a phrase of its
    parts. Only letters and digits reach the query, each quoted, so nothing is syntax."""
    tokens = _FTS_TOKEN.findall(text)[:16]
    words = [parts for parts in (_TS_PART.findall(t) for t in tokens) if parts]
    if not words:
        raise QueryError("q: give at least one word to search for")
    phrases = [[f"'{part.lower()}'" for part in parts] for parts in words]
    phrases[-1][-1] += ":*"
    return " & ".join("(" + " <-> ".join(parts) + ")" for parts in phrases)


# SQLite: the minutes (as metrics_1m holds them) of a node's raw samples that store.MetricRollup has
# not rolled up yet (db step 13's metrics_rollup: not up to `done`, nor up to `upto` for a node
# up to `node`), read in the same statement as metrics_1m, so from the same snapshot. A sample's
# minute starts at most 60 s before it: ts from `since` to `until` + 60 finds every minute in range.
_NOT_ROLLED_MINUTES = (
    f"SELECT name, {SQLITE_MINUTE} AS bucket, min(value) AS min, avg(value) AS avg, max(value) AS max,"
    " count(*) AS count FROM metrics_raw WHERE node_id = ? AND ts >= ? AND ts < ? + 60{names}"
    " AND abs(value) <= {bound} AND rowid > (SELECT CASE WHEN r.node IS NOT NULL AND ? <= r.node"
    " THEN r.upto ELSE r.done END FROM metrics_rollup r)"
    " GROUP BY name, bucket HAVING bucket >= ? AND bucket < ?"
)


class Queries:
    def __init__(self, db: ReadDB) -> None:
        self.db = db

    async def nodes(self) -> list[dict[str, Any]]:
        async with self.db.execute("SELECT * FROM nodes ORDER BY name") as cur:
            rows = await cur.fetchall()
        return [dict(r) for r in rows]

    async def node(self, node_id: str) -> dict[str, Any] | None:
        """One node's row (as `nodes` gives them): a node another replica enrolled."""
        async with self.db.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)) as cur:
            row = await cur.fetchone()
        return dict(row) if row is not None else None

    async def sessions(self) -> list[dict[str, Any]]:
        """Every node's latest session with its replica's heartbeat (replicas: issue 18): node_id,
        replica ('' none), epoch, heartbeat_at and stopped_at of that replica (None if unknown)."""
        async with self.db.execute(
                "SELECT s.node_id, s.replica, s.epoch, r.heartbeat_at, r.stopped_at FROM node_sessions s"
                " LEFT JOIN replicas r ON r.name = s.replica") as cur:
            rows = await cur.fetchall()
        return [dict(r) for r in rows]

    async def demos(self, node_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM demos" + (" WHERE node_id = ?" if node_id else "") + " ORDER BY started_at"
        async with self.db.execute(sql, (node_id,) if node_id else ()) as cur:
            rows = await cur.fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["header"] = json.loads(d["header"] or "{}")
            out.append(d)
        return out

    async def last_seq(self, node_id: str) -> int:
        async with self.db.execute("SELECT max(seq) FROM logs WHERE node_id = ?", (node_id,)) as cur:
            row = await cur.fetchone()
        return int(row[0] or 0) if row else 0

    async def lines_after(self, node_id: str, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """The node's stored lines above `after_seq`, oldest first, at most `limit`, in the stream's
        fields (a replica catching its clients up on what another replica stored)."""
        async with self.db.execute(
                "SELECT seq, ts, source, unit, demo, level, msg FROM logs WHERE node_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?", (node_id, after_seq, limit)) as cur:
            rows = await cur.fetchall()
        return [{"seq": r["seq"], "ts": r["ts"], "source": r["source"], "unit": r["unit"], "demo": r["demo"],
                 "level": LEVEL_NAMES.get(r["level"], "INFO"), "msg": r["msg"]} for r in rows]

    async def recent_lines(self, since: float, min_level: int, limit: int) -> list[dict[str, Any]]:
        """Stored lines with a `ts` from `since` on and a level of at least `min_level`, by node then
        seq, at most `limit` (a new features leader counting the last window for its log rules)."""
        async with self.db.execute(
                "SELECT node_id, seq, ts, source, unit, demo, level, msg FROM logs WHERE ts >= ? AND level >= ?"
                " ORDER BY node_id, seq LIMIT ?", (since, min_level, limit)) as cur:
            rows = await cur.fetchall()
        return [{"node_id": r["node_id"], "seq": r["seq"], "ts": r["ts"], "source": r["source"], "unit": r["unit"],
                 "demo": r["demo"], "level": LEVEL_NAMES.get(r["level"], "INFO"), "msg": r["msg"]} for r in rows]

    async def logs(
        self, *, node_ids: list[str] | None = None, source: str | None = None, min_level: str | None = None,
        text: str | None = None, since: float | None = None, until: float | None = None,
        cursor: str | None = None, limit: int = 100, demo: str | None = None,
    ) -> Page:
        sql, params = log_query(node_ids=node_ids, source=source, min_level=min_level, text=text, since=since,
                                until=until, cursor=cursor, limit=limit, demo=demo, dialect=self.db.dialect)
        async with self.db.execute(sql, params) as cur:
            rows = list(await cur.fetchall())
        items = [log_row(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit and items:
            kind = "seq" if pages_by_seq(node_ids) else "id"
            next_cursor = encode_cursor(items[-1][kind], kind)
        return Page(items, next_cursor)

    async def events(
        self, *, node_id: str | None = None, kind: str | None = None, since: float | None = None,
        until: float | None = None, cursor: str | None = None, limit: int = 100,
    ) -> Page:
        where, params = given(("e.node_id = ?", node_id), ("e.kind = ?", kind), ("e.ts >= ?", since),
                              ("e.ts < ?", until), ("e.id < ?", before_id(cursor)))
        sql = ("SELECT e.*, n.name AS node_name FROM events e LEFT JOIN nodes n ON n.id = e.node_id"
               + where_sql(where) + " ORDER BY e.id DESC LIMIT ?")
        params.append(limit + 1)
        async with self.db.execute(sql, params) as cur:
            rows = list(await cur.fetchall())
        items = [event_row(r) for r in rows[:limit]]
        return Page(items, encode_cursor(items[-1]["id"]) if len(rows) > limit and items else None)

    async def metrics(
        self, node_id: str, names: list[str] | None, since: float, until: float, step: int
    ) -> dict[str, list[list[float]]]:
        """Series of [bucket, min, avg, max]; raw samples below one minute, aggregates above.

        Values beyond MAX_METRIC_ABS are left out: the server stores none since it refuses them, but
        a database from before that holds some, and their average overflows to Infinity.
        """
        bound = repr(MAX_METRIC_ABS)
        params: list[Any] = [node_id, since, until]
        name_filter = ""
        if names:
            name_filter = f" AND name IN ({','.join('?' * len(names))})"
            params += names
        if step < 60:
            # The sample's bucket: SQLite's CAST truncates (ts >= 0: the floor); PostgreSQL's rounds.
            bucket = (f"CAST(ts / {step} AS INTEGER) * {step}" if self.db.dialect == "sqlite"
                      else f"CAST(floor(ts / {step}) AS BIGINT) * {step}")
            sql = (
                f"SELECT name, {bucket} AS b, min(value), avg(value), max(value)"
                f" FROM metrics_raw WHERE node_id = ? AND ts >= ? AND ts < ?{name_filter} AND abs(value) <= {bound}"
                " GROUP BY name, b ORDER BY name, b"
            )
        else:
            minutes = (
                f"SELECT name, bucket, min, avg, max, count FROM metrics_1m WHERE node_id = ?"
                f" AND bucket >= CAST(? AS DOUBLE PRECISION) AND bucket < CAST(? AS DOUBLE PRECISION){name_filter}"
                f" AND abs(min) <= {bound} AND abs(max) <= {bound} AND abs(avg) <= {bound}"
            )
            if self.db.dialect == "sqlite":
                # With the minutes of the raw samples not rolled up yet (store.MetricRollup).
                minutes += " UNION ALL " + _NOT_ROLLED_MINUTES.format(names=name_filter, bound=bound)
                params += [node_id, since, until, *(names or ()), node_id, since, until]
            sql = (
                f"SELECT name, (bucket / {step}) * {step} AS b, min(min), sum(avg * count) / sum(count), max(max)"
                f" FROM ({minutes}) AS m GROUP BY name, b ORDER BY name, b"
            )
        series: dict[str, list[list[float]]] = {}
        async with self.db.execute(sql, params) as cur:
            async for row in cur:
                series.setdefault(row[0], []).append([row[1], row[2], row[3], row[4]])
        return series

    async def operators(self) -> list[dict[str, Any]]:
        sql = (
            "SELECT o.*, (SELECT count(*) FROM tokens t WHERE t.operator = o.name AND t.revoked_at IS NULL)"
            " AS tokens FROM operators o ORDER BY o.created_at"
        )
        async with self.db.execute(sql) as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def operator(self, name: str) -> dict[str, Any] | None:
        async with self.db.execute("SELECT * FROM operators WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return dict(row) if row else None

    # -- remote control history ---------------------------------------------------------------
    async def recent_commands(self, node_id: str | None, limit: int) -> list[dict[str, Any]]:
        sql = ("SELECT c.*, count(r.id) AS nodes,"
               " CAST(sum(CASE WHEN r.state = 'exited' AND r.code = 0 THEN 1 ELSE 0 END) AS BIGINT) AS ok"
               " FROM commands c JOIN command_runs r ON r.command_id = c.id"
               + (" WHERE c.id IN (SELECT command_id FROM command_runs WHERE node_id = ?)" if node_id else "")
               + " GROUP BY c.id ORDER BY c.created_at DESC LIMIT ?")
        params: list[Any] = ([node_id] if node_id else []) + [limit]
        async with self.db.execute(sql, params) as cur:
            rows = [dict(r) for r in await cur.fetchall()]
        for row in rows:
            row["argv"] = json.loads(row["argv"]) if row["argv"] else None
        return rows

    async def command(self, command_id: str) -> dict[str, Any] | None:
        """A command with its runs and their stored output (three queries, whatever the node count)."""
        async with self.db.execute("SELECT * FROM commands WHERE id = ?", (command_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        out = dict(row)
        out["argv"] = json.loads(out["argv"]) if out["argv"] else None
        async with self.db.execute(
                "SELECT r.*, n.name AS node_name FROM command_runs r LEFT JOIN nodes n ON n.id = r.node_id"
                " WHERE r.command_id = ? ORDER BY n.name", (command_id,)) as cur:
            runs = [dict(r) for r in await cur.fetchall()]
        by_id = {}
        for run in runs:
            # Same names as the POST answer and the stream use.
            run["run_id"], run["node"] = run["id"], run["node_id"]
            run["truncated"] = bool(run["truncated"])
            run["output"] = []
            by_id[run["id"]] = run
        async with self.db.execute(
                "SELECT o.id, o.run_id, o.stream, o.data FROM command_output o JOIN command_runs r ON r.id = o.run_id"
                " WHERE r.command_id = ? ORDER BY o.id", (command_id,)) as cur:
            async for chunk, run_id, stream, data in cur:
                # `chunk` as the stream's output events name it: a follower applies each piece once.
                by_id[run_id]["output"].append({"chunk": chunk, "stream": stream, "data": data})
        out["runs"] = runs
        return out

    async def command_chunks(self, command_id: str) -> list[tuple[int, str, str, str]]:
        """Stored output of a command as (chunk id, run id, stream, data), in order."""
        async with self.db.execute(
                "SELECT o.id, o.run_id, o.stream, o.data FROM command_output o JOIN command_runs r ON r.id = o.run_id"
                " WHERE r.command_id = ? ORDER BY o.id", (command_id,)) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def recent_sessions(self, node_id: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._recent("shell_sessions", "started_at", node_id, limit)

    async def session_recording(self, session_id: str) -> str | None:
        async with self.db.execute("SELECT recording FROM shell_sessions WHERE id = ?", (session_id,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def recent_actions(self, node_id: str | None, limit: int) -> list[dict[str, Any]]:
        return [_public_action(r) for r in await self._recent("actions", "requested_at", node_id, limit)]

    async def action(self, action_id: str) -> dict[str, Any] | None:
        async with self.db.execute(
                "SELECT a.*, n.name AS node_name FROM actions a LEFT JOIN nodes n ON n.id = a.node_id WHERE a.id = ?",
                (action_id,)) as cur:
            row = await cur.fetchone()
        return _public_action(dict(row)) if row else None

    async def _recent(self, table: str, order: str, node_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest rows of a per-node history table, with the node's name."""
        sql = (f"SELECT t.*, n.name AS node_name FROM {table} t LEFT JOIN nodes n ON n.id = t.node_id"
               + (" WHERE t.node_id = ?" if node_id else "") + f" ORDER BY t.{order} DESC LIMIT ?")
        params: list[Any] = ([node_id] if node_id else []) + [limit]
        async with self.db.execute(sql, params) as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def audit(self, *, cursor: str | None = None, limit: int = 100) -> Page:
        before = before_id(cursor)
        sql = "SELECT * FROM audit" + (" WHERE id < ?" if before is not None else "") + " ORDER BY id DESC LIMIT ?"
        params: list[Any] = ([before] if before is not None else []) + [limit + 1]
        async with self.db.execute(sql, params) as cur:
            rows = list(await cur.fetchall())
        items = []
        for r in rows[:limit]:
            d = dict(r)
            d["detail"] = json.loads(d["detail"] or "{}")
            items.append(d)
        return Page(items, encode_cursor(items[-1]["id"]) if len(rows) > limit and items else None)


# -- accounts and enrollments (schema step 5), over the read-only connection -----------------------
async def registration(db: ReadDB, name: str) -> dict[str, Any] | None:
    async with db.execute("SELECT * FROM registrations WHERE name = ?", (name,)) as cur:
        row = await cur.fetchone()
    return dict(row) if row else None


async def registrations(db: ReadDB) -> dict[str, dict[str, Any]]:
    async with db.execute("SELECT name, remote, created_at FROM registrations") as cur:
        return {row["name"]: dict(row) for row in await cur.fetchall()}


async def pending_count(db: ReadDB) -> int:
    async with db.execute("SELECT count(*) FROM operators WHERE status = 'pending'") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def token_owner(db: ReadDB, token_hash: str) -> dict[str, Any] | None:
    """The account of an unrevoked token, with the token's expiry and last use."""
    sql = (
        "SELECT o.name, o.role, o.status, t.expires_at, t.last_used_at FROM tokens t"
        " JOIN operators o ON o.name = t.operator WHERE t.hash = ? AND t.revoked_at IS NULL"
    )
    async with db.execute(sql, (token_hash,)) as cur:
        row = await cur.fetchone()
    return dict(row) if row else None


async def token_summaries(db: ReadDB, now: float) -> dict[str, dict[str, Any]]:
    """Per operator: the last use of any of its tokens and the soonest expiry of a usable one."""
    sql = (
        "SELECT operator, max(last_used_at) AS last_used_at,"
        " min(CASE WHEN revoked_at IS NULL AND expires_at > ? THEN expires_at END) AS expires_at"
        " FROM tokens GROUP BY operator"
    )
    async with db.execute(sql, (now,)) as cur:
        return {row["operator"]: dict(row) for row in await cur.fetchall()}


async def enrolled_by(db: ReadDB, node_id: str) -> str:
    async with db.execute("SELECT enrolled_by FROM nodes WHERE id = ?", (node_id,)) as cur:
        row = await cur.fetchone()
    return str(row[0]) if row and row[0] else ""


def _public_action(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("boot_time", None)  # internal: how the server tells a reboot happened
    return row


def log_row(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"], "node": row["node_id"], "node_name": row["node_name"], "seq": row["seq"],
        "ts": row["ts"], "source": row["source"], "unit": row["unit"], "demo": row["demo"],
        "level": LEVEL_NAMES.get(row["level"], "INFO"), "msg": row["msg"],
    }


def event_row(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"], "ts": row["ts"], "node": row["node_id"], "node_name": row["node_name"],
        "kind": row["kind"], "message": row["message"], "data": json.loads(row["data"] or "{}"),
    }


def pages_by_seq(node_ids: list[str] | None) -> bool:
    """A query on one node reads (and pages) its lines by seq; any other query by id."""
    return node_ids is not None and len(node_ids) == 1


def log_query(
    *, node_ids: list[str] | None = None, source: str | None = None, min_level: str | None = None,
    text: str | None = None, since: float | None = None, until: float | None = None,
    cursor: str | None = None, limit: int = 100, demo: str | None = None, dialect: str = "sqlite",
) -> tuple[str, list[Any]]:
    """The SQL and parameters of a log query (one row more than `limit`: is there a next page?)."""
    if min_level and min_level.upper() not in LEVEL_NUMBERS:
        raise QueryError(f"level: expected one of {', '.join(LEVELS)}")
    where, params = given(("l.source = ?", source or None), ("l.demo = ?", demo or None),
                          ("l.level >= ?", LEVEL_NUMBERS[min_level.upper()] if min_level else None),
                          ("l.ts >= ?", since), ("l.ts < ?", until))
    if node_ids is not None:
        where.insert(0, f"l.node_id IN ({','.join('?' * len(node_ids))})")
        params[:0] = node_ids
    # One node's lines come newest first from UNIQUE (node_id, seq): a node's seq grows with the
    # row id (lines are stored in the order the node numbered them; a replay is not stored
    # again), so it is the same order as id without sorting all of the node's lines. Its pages
    # go by seq; an id cursor (several nodes, or an older page) still works.
    one_node = pages_by_seq(node_ids)
    before = decode_cursor(cursor, ("id", "seq") if one_node else ("id",))
    if before is not None:
        where.append(f"l.{before[0]} < ?")
        params.append(before[1])
    joins = ""
    if text and dialect == "sqlite":
        joins = " JOIN logs_fts f ON f.rowid = l.id"
        where.append("logs_fts MATCH ?")
        params.append(fts_query(text))
    elif text:
        # The expression of the GIN index logs_search (db.HISTORY_PG).
        where.append(PG_LOG_WORDS.format(msg="l.msg") + " @@ to_tsquery('simple', ?)")
        params.append(tsquery(text))
    sql = (
        "SELECT l.id, l.node_id, n.name AS node_name, l.seq, l.ts, l.source, l.unit, l.demo, l.level, l.msg"
        f" FROM logs l{joins} LEFT JOIN nodes n ON n.id = l.node_id"
        + where_sql(where)
        + (" ORDER BY l.seq DESC LIMIT ?" if one_node else " ORDER BY l.id DESC LIMIT ?")
    )
    return sql, params + [limit + 1]
