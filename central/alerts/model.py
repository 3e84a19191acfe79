"""The values the alert engine and the notification dispatcher exchange.

The engine (rules, lifecycle, silences) decides WHAT is worth telling; the dispatcher (routes,
grouping, channels, the delivery queue) decides WHERE and WHEN it goes. They meet here only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ..dbconn import WriteConn

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")

# firing -> acknowledged -> resolved; firing -> resolved. A resolved alert is history: the same
# rule and subject firing again opens a new alert (a new id).
AlertState = Literal["firing", "acknowledged", "resolved"]
ALERT_STATES: tuple[AlertState, ...] = ("firing", "acknowledged", "resolved")

# What a notice tells: an alert started, ended, was acknowledged, or still fires unacknowledged
# after the re-notification interval.
NoticeKind = Literal["firing", "resolved", "acknowledged", "reminder"]


@dataclass(frozen=True)
class Alert:
    id: int
    rule: str            # the rule's name: "node_offline", "disk_full", or an operator rule's name
    subject: str         # what it is about, unique per rule: "node:pi-12", "demo:pi-12/robot-arm"
    node: str | None     # the node's name when the subject is a node or one of its demos
    group: str | None    # the node's group at the time the alert started
    kind: str | None     # the node's kind (desktop, pi, esp32, ...)
    severity: Severity
    state: AlertState
    summary: str         # one line for a human: "pi-12 offline for 95 s"
    started: float       # epoch seconds
    resolved: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    ack_note: str | None = None


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    alert: Alert
    at: float            # when the engine made it (epoch seconds)


class NoticeSink(Protocol):
    """Where the engine's notices go. The engine stores an alert's change and the notices that
    tell of it in ONE commit (a crash between the two would lose a notice or send one for a change
    that was never stored): `persist` runs inside that commit, `committed` after it."""

    def persist(self, conn: WriteConn, notices: Sequence[Notice]) -> object:
        """Store `notices` for delivery on `conn`, inside the engine's transaction. Runs on the
        writer's thread: database work only, no event loop."""

    def committed(self, persisted: object) -> None:
        """On the event loop, once that commit is durable, with what `persist` returned: start
        delivering. Must be quick and must not raise for a channel's failure."""
