"""One notification as people read it: a title and lines built from the notices it groups.

Every channel renders the same `Message` (plain functions, no I/O): a title that says how many and
what, at most `max_lines` subject lines and "and K more", and the full list for machine receivers.
Text from nodes (summaries, names) is cleaned of control characters here, once, so no channel can
be handed a line break in an e-mail header or a terminal escape.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, fields

from ..model import SEVERITIES, Alert, Notice, NoticeKind, Severity

MAX_LINE = 300
MAX_TITLE = 200
DEFAULT_MAX_LINES = 20

KIND_LABEL: dict[str, str] = {
    "firing": "FIRING", "resolved": "RESOLVED", "acknowledged": "ACKNOWLEDGED", "reminder": "STILL FIRING",
    "test": "TEST",
}


def clean(text: str, limit: int = MAX_LINE) -> str:
    """One line of text: control characters become spaces, cut to `limit` characters."""
    line = "".join(" " if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029") else c for c in text)
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True)
class Message:
    id: int                          # the notification's id (0 for a channel test)
    kind: NoticeKind | str           # a notice kind, or "test"
    notices: tuple[Notice, ...]
    max_lines: int = DEFAULT_MAX_LINES
    created: float = 0.0

    @property
    def severity(self) -> Severity:
        """The most severe of the grouped alerts (info for a test)."""
        present = {n.alert.severity for n in self.notices}
        return next((s for s in SEVERITIES if s in present), "info")

    @property
    def label(self) -> str:
        return KIND_LABEL.get(self.kind, self.kind.upper())

    @property
    def title(self) -> str:
        if not self.notices:
            return clean(f"{self.label}: DVIC notification test", MAX_TITLE)
        if len(self.notices) == 1:
            return clean(f"{self.label} ({self.severity}): {self.notices[0].alert.summary}", MAX_TITLE)
        return clean(f"{self.label} ({self.severity}): {len(self.notices)} alerts{self._common()}", MAX_TITLE)

    def _common(self) -> str:
        """What the grouped alerts share, for the title: ' node_offline in hall-a'."""
        rules = Counter(n.alert.rule for n in self.notices)
        groups = Counter(n.alert.group or "" for n in self.notices)
        out = ""
        if len(rules) == 1:
            out += f", {next(iter(rules))}"
        if len(groups) == 1 and next(iter(groups)):
            out += f" in {next(iter(groups))}"
        return out

    @property
    def lines(self) -> list[str]:
        """At most `max_lines` lines, one a subject; `more` says how many were left out."""
        return [line_for(n) for n in self.notices[: self.max_lines]]

    @property
    def more(self) -> int:
        return max(0, len(self.notices) - self.max_lines)

    @property
    def more_line(self) -> str:
        return f"and {self.more} more" if self.more else ""

    def text(self) -> str:
        """The body as plain text: the lines, then 'and K more'."""
        if not self.notices:
            return "This is a test message from DVIC Demo Monitor: the channel works."
        lines = self.lines
        if self.more:
            lines.append(self.more_line)
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        """The machine-readable form (the generic webhook's body): every alert, not only the first lines."""
        return {
            "version": 1,
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "text": self.text(),
            "count": len(self.notices),
            "created": self.created,
            "sent": round(time.time(), 3),
            "alerts": [{**alert_json(n.alert), "notice": n.kind, "notice_at": n.at} for n in self.notices],
        }


def line_for(notice: Notice) -> str:
    a = notice.alert
    where = ", ".join(p for p in (a.subject, f"group {a.group}" if a.group else "") if p)
    line = f"{a.summary} ({where})"
    if notice.kind == "acknowledged" and a.acked_by:
        line += f" acknowledged by {a.acked_by}" + (f": {a.ack_note}" if a.ack_note else "")
    return clean(line)


_ALERT_FIELDS = tuple(f.name for f in fields(Alert))


def alert_json(alert: Alert) -> dict[str, object]:
    # Not dataclasses.asdict: it deep-copies every value, a third of queuing 500 notices.
    return {name: getattr(alert, name) for name in _ALERT_FIELDS}


def alert_from_json(data: dict[str, object]) -> Alert:
    return Alert(**{k: v for k, v in data.items() if k in _ALERT_FIELDS})  # type: ignore[arg-type]


def notice_json(notice: Notice) -> dict[str, object]:
    return {"kind": notice.kind, "at": notice.at, "alert": alert_json(notice.alert)}


def notice_from_json(data: dict[str, object]) -> Notice:
    alert = data["alert"]
    assert isinstance(alert, dict)
    return Notice(kind=data["kind"], alert=alert_from_json(alert), at=float(data["at"]))  # type: ignore[arg-type]


def channel_test_message() -> Message:
    return Message(id=0, kind="test", notices=(), created=time.time())
