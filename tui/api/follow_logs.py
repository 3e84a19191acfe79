"""Following logs: the sans-IO core of `dvic logs --follow` and the console's log views.

One filter (`LogFilter`: what the server is asked for, and the same rule for live lines), one
bounded duplicate filter (`SeenLines`: a line comes once, from history or live), one way to page
through history and to fill the gap a reconnect left (`HistoryPages`, `LogFollower.gap`), and one
reconnect back-off (`Backoff`). The drivers (tui/cmds/history.py, tui/console/screens/logs.py and
widgets/log_view.py, tui/console/live.py) do the IO and the drawing.

Standard library only (the `TYPE_CHECKING = False` idiom of tui/cmds/run.py): the CLI imports it.
"""

from __future__ import annotations

from collections import deque

from dvic_core.constants import LEVELS, LOG_SOURCES

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    Json = dict[str, Any]

PAGE_LINES = 500  # lines asked for per GET /logs page
GAP_LINES = 1000  # lines fetched to fill the gap a reconnect left
SEEN_LINES = 20000  # line identities remembered to drop repeats (bounded memory on long follows)
SOURCES: tuple[str | None, ...] = (None, *LOG_SOURCES)  # the source filter's choices, None for all


def level_rank(level: object) -> int:
    try:
        return LEVELS.index(str(level).upper())
    except ValueError:
        return 1  # unknown levels count as INFO, as the log format says for unparsable lines


def line_key(line: Json) -> tuple[str, int] | None:
    """A log line's identity: (node, seq) is unique per node; live lines may come without `id`."""
    seq = line.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        return (str(line.get("node", "")), seq)
    lid = line.get("id")
    return ("#id", lid) if isinstance(lid, int) else None


class LogFilter:
    """Which lines are wanted: a scope (one node, a group, or all) and what a line must hold.

    `query()` is what the server is asked for (GET /logs filters the history); `matches()` applies
    the same to live lines, which the stream sends unfiltered (the search is a substring there: the
    server's full-text search has no live counterpart)."""

    __slots__ = ("node", "group", "demo", "source", "min_level", "text")

    def __init__(self, node: str | None = None, group: str | None = None, demo: str | None = None,
                 source: str | None = None, min_level: str = "DEBUG", text: str = "") -> None:
        self.node = node  # a node id
        self.group = group  # a group ("" is the nodes without one)
        self.demo = demo  # a demo's token
        self.source = source
        self.min_level = min_level
        self.text = text

    def in_scope(self, node_id: object, group: str | None = None) -> bool:
        """Whether a line of this node is wanted (`group`: the node's group, None when unknown)."""
        if self.node:
            return node_id == self.node
        if self.group is not None:
            return group is not None and group == self.group
        return True

    def matches(self, line: Json) -> bool:
        if level_rank(line.get("level")) < level_rank(self.min_level):
            return False
        if self.source and line.get("source") != self.source:
            return False
        if self.demo and line.get("demo") != self.demo:
            return False
        return not self.text or self.text.lower() in str(line.get("msg", "")).lower()

    def query(self) -> dict[str, str]:
        """GET /logs parameters for this filter (docs/protocol.md 4)."""
        params = {"node": self.node, "group": None if self.node else self.group, "demo": self.demo,
                  "source": self.source, "level": self.min_level if level_rank(self.min_level) else None,
                  "q": self.text or None}
        return {k: v for k, v in params.items() if v is not None}

    def next_level(self) -> None:
        """The minimum level cycles DEBUG → INFO → … → CRITICAL → DEBUG."""
        self.min_level = LEVELS[(LEVELS.index(self.min_level) + 1) % len(LEVELS)]

    def next_source(self) -> None:
        """The source cycles all → demo → system → daemon → all."""
        self.source = SOURCES[(SOURCES.index(self.source) + 1) % len(SOURCES)]


class SeenLines:
    """The identities of the last `capacity` lines taken: a line seen again is dropped (first in, first out)."""

    def __init__(self, capacity: int = SEEN_LINES) -> None:
        self.capacity = capacity
        self._keys: set[tuple[str, int]] = set()
        self._order: deque[tuple[str, int]] = deque()

    def fresh(self, lines: Iterable[Json]) -> list[Json]:
        """The lines not seen before, in order (a line without identity always passes)."""
        out: list[Json] = []
        for line in lines:
            key = line_key(line)
            if key is not None:
                if key in self._keys:
                    continue
                self._keys.add(key)
                self._order.append(key)
                if len(self._order) > self.capacity:
                    self._keys.discard(self._order.popleft())
            out.append(line)
        return out

    def clear(self) -> None:
        self._keys.clear()
        self._order.clear()

    def __len__(self) -> int:
        return len(self._keys)


class HistoryPages:
    """Up to `limit` history lines through GET /logs pages (newest first), returned oldest first.

    `next_params()` is the next page's query (None when done); the driver fetches it and gives the
    answer to `add()`."""

    def __init__(self, params: dict[str, str], limit: int) -> None:
        self.params = params
        self.limit = limit
        self.newest_first: list[Json] = []
        self._cursor: str | None = None
        self._more = limit > 0

    def next_params(self) -> dict[str, str] | None:
        if not self._more:
            return None
        params = dict(self.params, limit=str(min(PAGE_LINES, self.limit - len(self.newest_first))))
        if self._cursor:
            params["cursor"] = self._cursor
        return params

    def add(self, page: Json) -> None:
        lines = [x for x in page.get("lines") or [] if isinstance(x, dict)]
        self.newest_first.extend(lines)
        cursor = page.get("next_cursor")
        self._cursor = str(cursor) if cursor else None
        self._more = bool(self._cursor and lines) and len(self.newest_first) < self.limit

    def lines(self) -> list[Json]:
        return self.newest_first[::-1]


class LogFollower:
    """Lines of a follow, each taken once: history first, then live lines, then after a reconnect
    the history since the last line taken (the gap). `last_ts` is the newest line taken."""

    def __init__(self, log_filter: LogFilter, capacity: int = SEEN_LINES) -> None:
        self.filter = log_filter
        self.seen = SeenLines(capacity)
        self.last_ts: float | None = None

    def take(self, lines: Iterable[Json], filtered: bool = True) -> list[Json]:
        """The new lines; with `filtered` (live lines) only those the filter wants. History comes
        filtered by the server (`filtered=False`). Every new line counts as seen, wanted or not."""
        out: list[Json] = []
        for line in self.seen.fresh(lines):
            ts = line.get("ts")
            if isinstance(ts, int | float) and not isinstance(ts, bool):
                self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
            if not filtered or (self.filter.in_scope(line.get("node")) and self.filter.matches(line)):
                out.append(line)
        return out

    def history(self, limit: int, since: float | None = None, until: float | None = None) -> HistoryPages:
        params = self.filter.query()
        if since is not None:
            params["from"] = str(since)
        if until is not None:
            params["to"] = str(until)
        return HistoryPages(params, limit)

    def gap(self) -> HistoryPages:
        """After a reconnect: the history since the last line taken (repeats are dropped by `take`)."""
        return self.history(GAP_LINES, since=self.last_ts)

    def reset(self) -> None:
        """A new search or filter: what was seen no longer says what is shown."""
        self.seen.clear()
        self.last_ts = None


class Backoff:
    """The wait between reconnect attempts: `start` seconds, doubling up to `limit`; `reset()` after a success."""

    def __init__(self, start: float = 1.0, limit: float = 15.0) -> None:
        self.start = start
        self.limit = limit
        self.delay = start

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.limit)
        return delay

    def reset(self) -> None:
        self.delay = self.start
