"""The console's picture of the fleet: node summaries, short trends, filters, sorting and counts.

Plain data and functions (no widgets), so filtering and sorting 2,000 nodes is tested without a
screen, and the fleet table only has to apply the differences.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dvic_core.constants import NODE_STATES

TREND_LEN = 12
HOT_C = 80.0
DISK_FULL = 90.0

Node = dict[str, Any]


def metric(node: Node, name: str) -> float | None:
    value = (node.get("metrics") or {}).get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def alerts(node: Node) -> list[str]:
    """Why a node needs attention: failed, hot, disk nearly full."""
    out = []
    if node.get("state") == "failed":
        out.append("failed")
    temp = metric(node, "temp")
    if temp is not None and temp >= HOT_C:
        out.append(f"hot {temp:.0f}°C")
    disk = metric(node, "disk")
    if disk is not None and disk >= DISK_FULL:
        out.append(f"disk {disk:.0f}%")
    return out


@dataclass
class Filter:
    """What the fleet table shows: free text (`/`), and quick filters by state, group and kind."""

    text: str = ""
    state: str | None = None
    group: str | None = None
    kind: str | None = None
    revoked: bool = False  # show revoked nodes too (they never come back: hidden by default)

    def matches(self, node: Node) -> bool:
        if node.get("revoked") and not self.revoked:
            return False
        if self.state and node.get("state") != self.state:
            return False
        if self.group is not None and (node.get("group") or "") != self.group:
            return False
        if self.kind and node.get("kind") != self.kind:
            return False
        if self.text:
            needle = self.text.lower()
            hay = " ".join(str(node.get(k) or "") for k in ("name", "kind", "group", "state", "daemon_version", "id"))
            return needle in hay.lower()
        return True

    def describe(self) -> str:
        parts = []
        if self.state:
            parts.append(f"state={self.state}")
        if self.group is not None:
            parts.append(f"group={self.group or '(none)'}")
        if self.kind:
            parts.append(f"kind={self.kind}")
        if self.text:
            parts.append(f"text={self.text!r}")
        if self.revoked:
            parts.append("+revoked")
        return " ".join(parts)


def _num(v: float | None) -> tuple[int, float]:
    return (1, 0.0) if v is None else (0, v)  # unknown values sort last


# Sort keys by fleet-table column; every key is total (no None comparisons).
SORT_KEYS: dict[str, Callable[[Node], Any]] = {
    "name": lambda n: str(n.get("name", "")).lower(),
    "kind": lambda n: (str(n.get("kind", "")), str(n.get("name", "")).lower()),
    "group": lambda n: (str(n.get("group") or ""), str(n.get("name", "")).lower()),
    "state": lambda n: (NODE_STATES.index(n["state"]) if n.get("state") in NODE_STATES else 9, str(n.get("name", ""))),
    "seen": lambda n: -(n.get("last_seen") or 0.0),
    "cpu": lambda n: _num(metric(n, "cpu")),
    "mem": lambda n: _num(metric(n, "mem")),
    "disk": lambda n: _num(metric(n, "disk")),
    "temp": lambda n: _num(metric(n, "temp")),
    "demos": lambda n: ((n.get("demos") or {}).get("alive", 0), (n.get("demos") or {}).get("total", 0)),
    "version": lambda n: str(n.get("daemon_version") or ""),
}


@dataclass
class Fleet:
    """Every node the console knows, by id, with a short client-side trend of its main metrics."""

    nodes: dict[str, Node] = field(default_factory=dict)
    trends: dict[str, dict[str, deque[float]]] = field(default_factory=dict)
    # Ids of nodes with an alert, kept as summaries arrive: the summary bar counts them every
    # second, and checking 2,000 nodes' alerts each time cost ~10 ms of the console's pass.
    alerting: set[str] = field(default_factory=set)
    # Alerts firing on the server (not acknowledged, not silenced): the header's count when the
    # server evaluates alerts (issue 15); None with an older server, which leaves the count above.
    server_alerts: int | None = None
    # Who holds each booked node now (node id -> {"id", "holder", "until"}): read from the bookings
    # API every few seconds (the stream's node summaries do not carry bookings).
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def set_holds(self, bookings: Iterable[dict[str, Any]]) -> list[str]:
        """The bookings holding now; returns the ids of the nodes whose holder or end changed."""
        fresh: dict[str, dict[str, Any]] = {}
        for b in bookings:
            for nid in b.get("nodes") or []:
                fresh[str(nid)] = {"id": b.get("id"), "holder": b.get("holder"), "until": b.get("ends_at")}
        changed = [nid for nid in set(fresh) | set(self.holds) if fresh.get(nid) != self.holds.get(nid)]
        self.holds = fresh
        return changed

    def set_server_alerts(self, counts: dict[str, Any] | None) -> None:
        firing = (counts or {}).get("firing")
        self.server_alerts = firing if isinstance(firing, int) and not isinstance(firing, bool) else None

    def _trend(self, node: Node) -> None:
        series = self.trends.setdefault(str(node["id"]), {})
        for name in ("cpu", "mem", "temp"):
            value = metric(node, name)
            if value is not None:
                series.setdefault(name, deque(maxlen=TREND_LEN)).append(value)

    def update(self, nodes: Iterable[Node]) -> list[Node]:
        """Merges node summaries (from the stream or a snapshot); returns the valid ones."""
        changed = []
        for node in nodes:
            if not isinstance(node, dict) or not isinstance(node.get("id"), str):
                continue  # a summary without an id cannot be placed; ignore it rather than crash
            for key in ("metrics", "demos"):
                if not isinstance(node.get(key), dict):
                    node[key] = {}  # every view reads these as mappings
            self.nodes[node["id"]] = node
            self._trend(node)
            if alerts(node):
                self.alerting.add(node["id"])
            else:
                self.alerting.discard(node["id"])
            changed.append(node)
        return changed

    def replace(self, nodes: Iterable[Node]) -> tuple[list[Node], list[str]]:
        """A full snapshot (after (re)connecting): returns (current nodes, ids that disappeared)."""
        fresh = {n["id"]: n for n in nodes if isinstance(n, dict) and isinstance(n.get("id"), str)}
        gone = [i for i in self.nodes if i not in fresh]
        for i in gone:
            self.nodes.pop(i, None)
            self.trends.pop(i, None)
            self.alerting.discard(i)
        return self.update(fresh.values()), gone

    def trend(self, node_id: str, name: str) -> list[float]:
        return list(self.trends.get(node_id, {}).get(name, ()))

    def counts(self) -> dict[str, int]:
        """Nodes by state, revoked ones apart (they are not offline nodes to look after), and alerts."""
        out = dict.fromkeys(NODE_STATES, 0)
        out.update(Counter(str(node.get("state")) for node in self.nodes.values() if not node.get("revoked")))
        out["revoked"] = sum(1 for node in self.nodes.values() if node.get("revoked"))
        out["alerts"] = self.server_alerts if self.server_alerts is not None else len(self.alerting)
        return out

    def groups(self) -> list[str]:
        return sorted({str(n.get("group") or "") for n in self.nodes.values()})

    def kinds(self) -> list[str]:
        return sorted({str(n.get("kind") or "") for n in self.nodes.values()})

    def by_name(self, ref: str) -> Node | None:
        if ref in self.nodes:
            return self.nodes[ref]
        return next((n for n in self.nodes.values() if n.get("name") == ref), None)


def cycle(options: list[Any], current: Any) -> Any:
    """The next quick-filter value: None (all) -> each option -> None."""
    seq = [None, *options]
    try:
        return seq[(seq.index(current) + 1) % len(seq)]
    except ValueError:
        return None
