"""Silences and quiet hours: what keeps a notice from going out while the alert is still recorded.

A silence matches alerts by group, node, rule and/or severity (every given field must be equal) for
a limited time. Quiet hours are a hook for the venue calendar (issue 16): a callable
`quiet(group, severity) -> bool` the engine asks before each notice; the default is never quiet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .model import SEVERITIES, Alert
from .rules import RuleError, parse_duration

MATCHERS = ("group", "node", "rule", "severity")
MAX_SILENCE_S = 30 * 24 * 3600.0
MAX_NOTE_CHARS = 1000

# Issue 16 (venue calendar) plugs in here: True while notices of this group and severity must wait
# (closed hours). Called for each notice the engine would send and for each open alert whenever
# alerts are counted or shown, so it must answer from memory, quickly.
QuietHook = Callable[[str | None, str], bool]


def never_quiet(group: str | None, severity: str) -> bool:
    return False


@dataclass(frozen=True)
class Silence:
    id: int
    starts: float
    ends: float
    note: str
    created_by: str
    created_at: float
    group: str | None = None
    node: str | None = None
    rule: str | None = None
    severity: str | None = None
    removed_at: float | None = None
    removed_by: str | None = None

    def active(self, now: float) -> bool:
        return self.removed_at is None and self.starts <= now < self.ends

    def matches(self, alert: Alert) -> bool:
        return ((self.group is None or self.group == alert.group) and (self.node is None or self.node == alert.node)
                and (self.rule is None or self.rule == alert.rule)
                and (self.severity is None or self.severity == alert.severity))

    def matcher(self) -> dict[str, str]:
        return {k: v for k, v in (("group", self.group), ("node", self.node), ("rule", self.rule),
                                  ("severity", self.severity)) if v is not None}

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"id": self.id, **self.matcher(), "starts": self.starts, "ends": self.ends, "note": self.note,
                "created_by": self.created_by, "created_at": self.created_at, "active": self.active(now),
                "removed_at": self.removed_at, "removed_by": self.removed_by}


@dataclass(frozen=True)
class SilenceRequest:
    """A checked request for a new silence (the id and the times come when it is stored)."""

    matcher: dict[str, str]
    duration_s: float
    note: str


def silence_request(body: Mapping[str, Any]) -> SilenceRequest:
    """{"group"?, "node"?, "rule"?, "severity"?, "for": "2h", "note"} -> SilenceRequest, or RuleError."""
    unknown = set(body) - {*MATCHERS, "for", "note"}
    if unknown:
        raise RuleError("bad_silence", f"unknown field(s) {', '.join(sorted(unknown))}; "
                                       f"a silence has {', '.join(MATCHERS)}, for and note")
    matcher: dict[str, str] = {}
    for key in MATCHERS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value or len(value) > 64:
            raise RuleError("bad_silence", f"{key}: expected a name (1-64 characters), got {value!r}")
        matcher[key] = value
    if not matcher:
        raise RuleError("bad_silence", "a silence needs at least one of group, node, rule, severity "
                                       "(silencing everything is a maintenance window: say what it covers)")
    if "severity" in matcher and matcher["severity"] not in SEVERITIES:
        raise RuleError("bad_silence", f"severity: expected one of {', '.join(SEVERITIES)}")
    if "for" not in body:
        raise RuleError("bad_duration", "for: say how long the silence lasts (e.g. 2h); at most 30d")
    seconds = parse_duration(body["for"], "for", limit=MAX_SILENCE_S)
    if seconds <= 0:
        raise RuleError("bad_duration", f"for: expected more than 0 and at most 30d, got {body['for']!r}")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise RuleError("bad_silence", f"note: expected text of at most {MAX_NOTE_CHARS} characters")
    return SilenceRequest(matcher, seconds, note)
