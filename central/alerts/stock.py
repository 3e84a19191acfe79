"""What each kind of rule reads from the registry's live state: one evaluator per rule type.

An evaluator looks at one node and returns readings `(subject, level, value, since)`:
FIRE (the condition holds), HOLD (between the clear and the fire threshold: an open alert stays
open, a pending one starts over), CLEAR. `since` (or None) says when the condition began, for
"for" durations measured from the fact rather than from the pass that saw it. Returning None
means "nothing known now" (an offline node's metrics): open alerts of that rule and node are
kept as they are. Subjects the node had alerts for and no longer reports are resolved.

Evaluators run for every node and rule on every pass (2,000 x 20 every 10 s), so they only read
attributes and dicts, and build text only when an alert starts (`summary`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..registry import NodeState
from ..release import parse_version
from .rules import METRICS, Rule

FIRE, HOLD, CLEAR = 2, 1, 0
Reading = tuple[str, int, float | None, float | None]
Evaluator = Callable[[Rule, NodeState, "EvalContext"], Iterable[Reading] | None]
# The Raspberry Pi's get_throttled bits that mean "now" (16-19 say "since boot").
THROTTLE_NOW = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit"}
LOG_WINDOW_S = 60.0
_BUCKET_S = 10.0
_BUCKETS = int(LOG_WINDOW_S // _BUCKET_S)


class RateWindow:
    """Counts over the last minute in six 10 s buckets (server time: node clocks may be wrong)."""

    __slots__ = ("counts", "ids")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.ids = [-1] * _BUCKETS

    def add(self, now: float, n: int = 1) -> None:
        bucket = int(now // _BUCKET_S)
        slot = bucket % _BUCKETS
        if self.ids[slot] != bucket:
            self.ids[slot], self.counts[slot] = bucket, 0
        self.counts[slot] += n

    def total(self, now: float) -> int:
        oldest = int(now // _BUCKET_S) - _BUCKETS + 1
        return sum(c for c, b in zip(self.counts, self.ids, strict=True) if b >= oldest)


@dataclass
class EvalContext:
    now: float
    # No new node_offline alert before this time: after a start every node is offline until it reconnects.
    offline_from: float
    # Exits before this time are not news (the server was not watching): they open no demo_exited alert.
    watching_since: float
    release: tuple[int, ...] | None
    # Set by demo events and demo_status: node id -> rule -> demo name -> since.
    demo_flags: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # Log lines counted per node: node id -> (rule, subject) -> window.
    log_counts: dict[str, dict[tuple[str, str], RateWindow]] = field(default_factory=dict)
    versions: dict[str, tuple[int, ...]] = field(default_factory=dict)


def judge(rule: Rule, value: float) -> int:
    """FIRE past the threshold, CLEAR past the clear threshold, HOLD in between (hysteresis)."""
    threshold = rule.threshold if rule.threshold is not None else 0.0
    clear = rule.clear_at if rule.clear_at is not None else threshold
    if rule.op == ">":
        return FIRE if value > threshold else HOLD if value > clear else CLEAR
    return FIRE if value < threshold else HOLD if value < clear else CLEAR


def node_subject(node: NodeState) -> str:
    return "node:" + node.name


def demo_subject(node: NodeState, demo: str) -> str:
    return f"demo:{node.name}/{demo}"


def node_offline(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    if node.liveness != "offline":
        return ((node_subject(node), CLEAR, None, None),)
    if ctx.now < ctx.offline_from:
        return None
    return ((node_subject(node), FIRE, ctx.now - node.state_since, max(node.state_since, ctx.offline_from)),)


def metric(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    if node.liveness != "online":
        return None
    value = node.clock_skew if rule.metric == "clock_skew" else node.metrics.get(rule.metric or "")
    if value is None:
        return None
    return ((node_subject(node), judge(rule, value), value, None),)


def clock_skew(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    if node.liveness != "online" or node.clock_skew is None:
        return None
    return ((node_subject(node), judge(rule, abs(node.clock_skew)), node.clock_skew, None),)


def pi_throttled(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    if node.liveness != "online":
        return None
    flags = throttle_flags(node.throttled)
    if flags is None:
        return ()
    return ((node_subject(node), FIRE if flags & 0xF else CLEAR, float(flags), None),)


def throttle_flags(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def daemon_outdated(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    if node.liveness != "online" or not node.daemon_version or ctx.release is None:
        return None
    version = ctx.versions.get(node.daemon_version)
    if version is None:
        version = ctx.versions[node.daemon_version] = parse_version(node.daemon_version)
    return ((node_subject(node), FIRE if version < ctx.release else CLEAR, None, None),)


def demo_exited(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    """The latest run of each demo name: exited (during this server's watch) and none came back."""
    if node.liveness != "online":
        return None
    latest: dict[str, dict[str, Any]] = {}
    for demo in node.demos.values():
        name = demo.get("name") or demo["token"]
        known = latest.get(name)
        if known is None or (demo.get("started_at") or 0) >= (known.get("started_at") or 0):
            latest[name] = demo
    readings: list[Reading] = []
    for name, demo in latest.items():
        if demo.get("state") == "exited":
            exited_at = demo.get("exited_at") or 0.0
            level = FIRE if exited_at >= ctx.watching_since else HOLD
            readings.append((demo_subject(node, name), level, None, exited_at))
    cannot_start = ctx.demo_flags.get(node.id, {}).get("demo_exited", {})
    readings.extend((demo_subject(node, name), FIRE, None, since) for name, since in cannot_start.items())
    return readings


def demo_flagged(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    """demo_crashloop / demo_unhealthy: raised by the daemon's events, cleared by demo_recovered."""
    if node.liveness != "online":
        return None
    flagged = ctx.demo_flags.get(node.id, {}).get(rule.type)
    if not flagged:
        return ()
    return [(demo_subject(node, name), FIRE, None, since) for name, since in flagged.items()]


def log_rate(rule: Rule, node: NodeState, ctx: EvalContext) -> Iterable[Reading] | None:
    counts = ctx.log_counts.get(node.id)
    if not counts:
        return ()
    readings: list[Reading] = []
    for (name, subject), window in counts.items():
        if name == rule.name:
            rate = float(window.total(ctx.now))
            readings.append((subject, judge(rule, rate), rate, None))
    return readings


EVALUATORS: dict[str, Evaluator] = {
    "node_offline": node_offline, "metric": metric, "clock_skew": clock_skew, "pi_throttled": pi_throttled,
    "daemon_outdated": daemon_outdated, "demo_exited": demo_exited, "demo_crashloop": demo_flagged,
    "demo_unhealthy": demo_flagged, "log_errors": log_rate, "log": log_rate,
}


def summary(rule: Rule, node: NodeState, subject: str, value: float | None) -> str:
    """One line for a human, made when an alert starts."""
    what = subject.split(":", 1)[1]
    if rule.type == "node_offline":
        return f"{node.name} offline for {value or 0:.0f} s"
    if rule.type == "metric":
        unit = METRICS.get(rule.metric or "", "")
        word = "above" if rule.op == ">" else "below"
        return f"{node.name} {rule.metric} at {value or 0:.4g}{unit and ' ' + unit} ({word} {rule.threshold:g})"
    if rule.type == "clock_skew":
        return f"{node.name} clock off by {value or 0:+.1f} s (more than {rule.threshold:g} s)"
    if rule.type == "pi_throttled":
        flags = int(value or 0)
        said = ", ".join(text for bit, text in THROTTLE_NOW.items() if flags & (1 << bit))
        return f"{node.name} throttled: {said} (0x{flags:x})"
    if rule.type == "daemon_outdated":
        return f"{node.name} runs daemon {node.daemon_version}, older than the release"
    if rule.type == "demo_exited":
        return f"demo {what} exited and did not come back"
    if rule.type == "demo_crashloop":
        return f"demo {what} is crash-looping"
    if rule.type == "demo_unhealthy":
        return f"demo {what} is unhealthy (no heartbeat)"
    if rule.type in ("log", "log_errors"):
        counted = f"{rule.level}+ lines" if rule.type == "log_errors" else f"lines matching {rule.pattern!r}"
        return f"{what}: {value or 0:.0f} {counted} in the last minute (more than {rule.threshold:g})"
    return f"{rule.name} on {what}"
