"""Alert rules: what one is, how an operator's settings are checked, and the stock rules' defaults.

A rule is a frozen value. Stock rules (STOCK) are always there and can be tuned (threshold, clear,
for, severity, enabled, scope) or reset; operator rules are a metric threshold or a log pattern with
a rate, scoped to a node, a group or a kind. Every refusal is a RuleError with a code and a message
that says what to change (the API answers it as 400).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dvic_core.constants import LEVEL_NUMBERS, NODE_KINDS
from dvic_core.schema import given

from ..errors import BadInput
from .model import SEVERITIES, Severity
from .patterns import PatternError, compile_pattern

# The series the server keeps per node (docs/protocol.md section 5) and what else a node has.
METRICS: dict[str, str] = {
    "cpu": "%", "mem": "%", "swap": "%", "disk": "%", "temp": "°C", "load1": "", "uptime": "s",
    "procs": "", "net_rx": "B", "net_tx": "B", "free_mem": "B", "rssi": "dBm", "clock_skew": "s",
}
RULE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
MAX_FOR_S = 7 * 24 * 3600.0
MAX_OPERATOR_RULES = 200
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class RuleError(BadInput):
    pass


def parse_duration(value: Any, what: str = "for", limit: float = MAX_FOR_S) -> float:
    """'90', 90, '30s', '5m', '1h30m', '2d' -> seconds; RuleError('bad_duration') otherwise."""
    if isinstance(value, bool):
        raise RuleError("bad_duration", f"{what}: expected a duration such as 30s, 5m, 2h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise RuleError("bad_duration", f"{what}: expected a duration such as 30s, 5m, 2h or 1h30m, "
                                                f"got {value!r}")
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise RuleError("bad_duration", f"{what}: expected a duration such as 30s, 5m, 2h, got {value!r}")
    if not 0 <= seconds <= limit:
        raise RuleError("bad_duration", f"{what}: expected 0 to {format_duration(limit)}, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Scope:
    """Which nodes a rule watches: all of them, or one node, group or kind (names, not ids)."""

    node: str | None = None
    group: str | None = None
    kind: str | None = None

    def matches(self, name: str, group: str, kind: str) -> bool:
        return ((self.node is None or self.node == name) and (self.group is None or self.group == group)
                and (self.kind is None or self.kind == kind))

    @property
    def everything(self) -> bool:
        return self.node is None and self.group is None and self.kind is None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("node", self.node), ("group", self.group), ("kind", self.kind)) if v is not None}


@dataclass(frozen=True)
class Rule:
    name: str
    # A stock evaluator ("node_offline", ...), or "metric" / "log" for an operator's rule.
    type: str
    severity: Severity
    stock: bool = False
    enabled: bool = True
    for_s: float = 0.0
    # Fires at `threshold`, clears only past `clear` (hysteresis); `op` says which side is bad.
    threshold: float | None = None
    clear: float | None = None
    op: str = ">"
    metric: str | None = None
    pattern: str | None = None
    level: str | None = None  # log rules: the least level counted
    scope: Scope = field(default_factory=Scope)
    description: str = ""

    @property
    def clear_at(self) -> float | None:
        return self.clear if self.clear is not None else self.threshold

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "type": self.type, "stock": self.stock, "enabled": self.enabled,
            "severity": self.severity, "for": format_duration(self.for_s), "for_s": self.for_s,
            "scope": self.scope.as_dict(), "description": self.description,
        }
        if self.threshold is not None:
            out.update(threshold=self.threshold, clear=self.clear_at, op=self.op)
        out.update(given(metric=self.metric, pattern=self.pattern, level=self.level))
        return out


# What the stock rules watch (central/alerts/stock.py evaluates them); all on by default.
STOCK: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("node_offline", "node_offline", "critical", stock=True,
         description="the node is offline (silent beyond the server's --offline-after)"),
    Rule("demo_exited", "demo_exited", "warning", stock=True, for_s=30.0,
         description="a demo's process exited and no run of it came back (or a supervised demo cannot start)"),
    Rule("demo_crashloop", "demo_crashloop", "critical", stock=True,
         description="a supervised demo keeps crashing (the daemon's crash-loop detection)"),
    Rule("demo_unhealthy", "demo_unhealthy", "warning", stock=True,
         description="a supervised demo runs but sends no heartbeat within its heartbeat_s"),
    Rule("disk_full", "metric", "warning", stock=True, metric="disk", threshold=90.0, clear=85.0,
         description="the fullest filesystem is above the threshold (percent)"),
    Rule("memory_high", "metric", "warning", stock=True, metric="mem", threshold=95.0, clear=90.0, for_s=60.0,
         description="memory in use is above the threshold (percent)"),
    Rule("temperature_high", "metric", "warning", stock=True, metric="temp", threshold=80.0, clear=75.0,
         for_s=60.0, description="the hottest sensor is above the threshold (°C)"),
    Rule("pi_throttled", "pi_throttled", "warning", stock=True,
         description="a Raspberry Pi reports under-voltage, a capped frequency or throttling now"),
    Rule("log_errors", "log_errors", "warning", stock=True, threshold=30.0, clear=15.0, level="ERROR",
         description="a demo logs ERROR (or worse) lines above the threshold per minute"),
    Rule("daemon_outdated", "daemon_outdated", "info", stock=True, for_s=3600.0,
         description="the node's daemon is older than the server's release (dvic update)"),
    Rule("clock_skew", "clock_skew", "warning", stock=True, threshold=30.0, clear=10.0, for_s=300.0,
         description="the node's clock differs from the server's by more than the threshold (seconds)"),
)}
TUNABLE = ("enabled", "severity", "for", "threshold", "clear", "scope")


def _severity(value: Any) -> Severity:
    for severity in SEVERITIES:
        if value == severity:
            return severity
    raise RuleError("bad_severity", f"severity: expected one of {', '.join(SEVERITIES)}, got {value!r}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e15:
        raise RuleError("bad_threshold", f"{what}: expected a number, got {value!r}")
    return float(value)


def _scope(value: Any) -> Scope:
    if value is None:
        return Scope()
    if not isinstance(value, Mapping) or not set(value) <= {"node", "group", "kind"}:
        raise RuleError("bad_scope", f"scope: expected an object with node, group and/or kind, got {value!r}")
    for key, item in value.items():
        if item is not None and (not isinstance(item, str) or not item or len(item) > 64):
            raise RuleError("bad_scope", f"scope.{key}: expected a name (1-64 characters), got {item!r}")
    kind = value.get("kind")
    if kind is not None and kind not in NODE_KINDS:
        raise RuleError("bad_scope", f"scope.kind: expected one of {', '.join(NODE_KINDS)}, got {kind!r}")
    return Scope(node=value.get("node"), group=value.get("group"), kind=kind)


def _check_hysteresis(rule: Rule) -> Rule:
    if rule.threshold is None or rule.clear is None:
        return rule
    wrong = rule.clear > rule.threshold if rule.op == ">" else rule.clear < rule.threshold
    if wrong:
        side = "at or below" if rule.op == ">" else "at or above"
        raise RuleError("bad_threshold", f"clear ({rule.clear:g}) must be {side} the threshold "
                                         f"({rule.threshold:g}): the alert clears past it")
    return rule


def tune(rule: Rule, settings: Mapping[str, Any]) -> Rule:
    """A rule with an operator's changes applied (the keys of TUNABLE, plus pattern/level/op for
    operator rules); RuleError for an unknown key or a bad value."""
    allowed = set(TUNABLE) | (set() if rule.stock else {"op", "metric", "pattern", "level"})
    unknown = set(settings) - allowed
    if unknown:
        raise RuleError("bad_rule", f"cannot set {', '.join(sorted(unknown))} on rule {rule.name!r}; "
                                    f"settable: {', '.join(sorted(allowed))}")
    changes: dict[str, Any] = {}
    if "enabled" in settings:
        if not isinstance(settings["enabled"], bool):
            raise RuleError("bad_rule", f"enabled: expected true or false, got {settings['enabled']!r}")
        changes["enabled"] = settings["enabled"]
    if "severity" in settings:
        changes["severity"] = _severity(settings["severity"])
    if "for" in settings:
        changes["for_s"] = parse_duration(settings["for"])
    if "scope" in settings:
        changes["scope"] = _scope(settings["scope"])
    if "op" in settings:
        if rule.type != "metric":
            raise RuleError("bad_rule", "op: only a metric rule has one (a log rule fires above its rate)")
        if settings["op"] not in (">", "<"):
            raise RuleError("bad_rule", f"op: expected '>' or '<', got {settings['op']!r}")
        changes["op"] = settings["op"]
    if "metric" in settings:
        if rule.type != "metric":
            raise RuleError("bad_rule", "metric: only a metric rule watches a metric")
        changes["metric"] = _metric(settings["metric"])
    if "pattern" in settings or "level" in settings:
        if rule.type != "log":
            raise RuleError("bad_rule", "pattern, level: only a log rule has them")
        if "pattern" in settings:
            changes["pattern"] = _pattern(settings["pattern"])
        if "level" in settings:
            changes["level"] = _level(settings["level"])
    for key in ("threshold", "clear"):
        if key in settings:
            if rule.threshold is None:
                raise RuleError("bad_rule", f"{key}: rule {rule.name!r} has no threshold")
            changes[key] = None if key == "clear" and settings[key] is None else _number(settings[key], key)
    if "threshold" in changes and "clear" not in changes and rule.clear is not None:
        # A moved threshold keeps its hysteresis band rather than leaving clear on the wrong side.
        changes["clear"] = changes["threshold"] - (rule.threshold or 0.0) + rule.clear
    tuned = replace(rule, **changes)
    if tuned.type == "log" and tuned.threshold is not None and tuned.threshold < 1:
        raise RuleError("bad_threshold", f"rate: expected at least 1 line per minute, got {tuned.threshold:g}")
    return _check_hysteresis(tuned)


def _metric(value: Any) -> str:
    if value not in METRICS:
        raise RuleError("unknown_metric", f"metric: unknown metric {value!r}; known: {', '.join(METRICS)}")
    return str(value)


def _pattern(value: Any) -> str:
    if not isinstance(value, str):
        raise RuleError("bad_pattern", f"pattern: expected a regular expression, got {value!r}")
    try:
        compile_pattern(value)
    except PatternError as exc:
        raise RuleError("bad_pattern", f"pattern: {exc}") from None
    return value


def _level(value: Any) -> str:
    if value not in LEVEL_NUMBERS:
        raise RuleError("bad_rule", f"level: expected one of {', '.join(LEVEL_NUMBERS)}, got {value!r}")
    return str(value)


def operator_rule(spec: Mapping[str, Any]) -> Rule:
    """A new operator rule from its JSON form:

    {"name", "type": "metric", "metric", "op": ">"|"<", "threshold", "clear"?, "for"?, "severity"?, "scope"?}
    {"name", "type": "log", "pattern", "rate" (lines per minute), "clear"?, "level"?, "for"?, ...}
    """
    if not isinstance(spec, Mapping):
        raise RuleError("bad_rule", "expected a JSON object")
    name = spec.get("name")
    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        raise RuleError("bad_name", "name: 1-63 characters of a-z, 0-9, '_', '.', '-' (starting with a letter "
                                    f"or digit), got {name!r}")
    if name in STOCK:
        raise RuleError("name_taken", f"{name!r} is a stock rule: tune it with `dvic rule set {name}` instead")
    kind = spec.get("type")
    settings = {k: v for k, v in spec.items() if k not in ("name", "type", "rate")}
    if kind == "metric":
        if "metric" not in spec or "threshold" not in spec:
            raise RuleError("bad_rule", "a metric rule needs metric and threshold")
        base = Rule(name, "metric", "warning", metric=_metric(spec["metric"]), threshold=0.0)
    elif kind == "log":
        if "pattern" not in spec or "rate" not in spec:
            raise RuleError("bad_rule", "a log rule needs pattern and rate (matching lines per minute)")
        settings["threshold"] = spec["rate"]
        base = Rule(name, "log", "warning", pattern="", threshold=1.0)
    else:
        raise RuleError("bad_rule", f"type: expected 'metric' or 'log', got {kind!r}")
    settings.setdefault("clear", None)
    return tune(base, settings)


def rule_from_row(stock: bool, name: str, spec: Mapping[str, Any]) -> Rule | None:
    """A stored rule back (stock: the defaults with the stored tuning). None if it no longer applies
    (a stock rule this release dropped)."""
    if stock:
        base = STOCK.get(name)
        return None if base is None else tune(base, spec)
    return operator_rule({"name": name, **spec})


def stored_form(rule: Rule) -> dict[str, Any]:
    """What is stored of an operator rule: its JSON form without the name (operator_rule's input)."""
    out: dict[str, Any] = {"type": rule.type, "severity": rule.severity, "enabled": rule.enabled,
                           "for": rule.for_s, "scope": rule.scope.as_dict(), "clear": rule.clear}
    if rule.type == "metric":
        out.update(metric=rule.metric, threshold=rule.threshold, op=rule.op)
    else:
        out.update(pattern=rule.pattern, rate=rule.threshold)
        if rule.level is not None:
            out["level"] = rule.level
    return out
