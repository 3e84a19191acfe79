"""The console's picture of the server's alerts and silences (docs/alerts.md): plain data, no widgets.

Alerts come from `GET /api/v1/alerts` and then from the stream's `alert` frames. An alert only
moves forward (firing → acknowledged → resolved), so the book keeps, for each id, the furthest
state it has seen: a frame that was on its way while the list was being read cannot put an
acknowledged alert back to firing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Alert = dict[str, Any]
Silence = dict[str, Any]

RECENT_S = 3600.0  # resolved alerts stay in the view this long
PROGRESS = {"firing": 0, "acknowledged": 1, "resolved": 2}
# The view's order: firing first (silenced ones after the others), then acknowledged, then resolved.
RANK = {"firing": 0, "silenced": 1, "acknowledged": 2, "resolved": 3}
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
MATCHERS = ("group", "node", "rule", "severity")


def shown_state(alert: Alert) -> str:
    """The state as the view shows it: a silenced firing alert reads `silenced`."""
    state = str(alert.get("state") or "?")
    return "silenced" if state == "firing" and alert.get("silenced") else state


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def order_key(alert: Alert) -> tuple[Any, ...]:
    """Firing first, most severe first, newest first; resolved ones by when they ended, newest first."""
    state = shown_state(alert)
    when = _number(alert.get("resolved") if state == "resolved" else alert.get("started"))
    return (RANK.get(state, 4), SEVERITY_RANK.get(str(alert.get("severity")), 3), -when, -_number(alert.get("id")))


def subject_label(alert: Alert) -> str:
    """`node:pi-12` reads `pi-12`; a demo's or a unit's subject is shown whole."""
    subject = str(alert.get("subject") or alert.get("node") or "?")
    return subject.removeprefix("node:")


def matcher_text(silence: Silence) -> str:
    return " ".join(f"{k}={silence[k]}" for k in MATCHERS if silence.get(k)) or "(everything)"


@dataclass
class AlertBook:
    """Alerts by id (open ones and those resolved in the last `RECENT_S`), and current silences by id."""

    node: str | None = None  # only this node's alerts (its name), as the node view wants them
    alerts: dict[int, Alert] = field(default_factory=dict)
    silences: dict[int, Silence] = field(default_factory=dict)

    def wants(self, alert: Alert) -> bool:
        return self.node is None or alert.get("node") == self.node

    def apply(self, alert: Alert) -> bool:
        """Takes one alert (from a list or a frame); True if the book changed."""
        try:
            alert_id = int(alert["id"])
        except (KeyError, TypeError, ValueError):
            return False
        if not self.wants(alert):
            return False
        known = self.alerts.get(alert_id)
        if known is not None and PROGRESS.get(str(known.get("state")), 0) > PROGRESS.get(str(alert.get("state")), 0):
            return False  # older news than what is shown
        if known == alert:
            return False
        self.alerts[alert_id] = alert
        return True

    def replace(self, alerts: Iterable[Alert], now: float | None = None) -> None:
        """A fresh read of the server's list (open alerts and recently resolved ones)."""
        self.alerts.clear()
        for alert in alerts:
            self.apply(alert)
        self.prune(now)

    def prune(self, now: float | None = None) -> list[int]:
        """Forgets alerts resolved more than `RECENT_S` ago; returns their ids."""
        cutoff = (time.time() if now is None else now) - RECENT_S
        old = [i for i, a in self.alerts.items()
               if a.get("state") == "resolved" and _number(a.get("resolved")) < cutoff]
        for alert_id in old:
            del self.alerts[alert_id]
        return old

    def ordered(self) -> list[Alert]:
        return sorted(self.alerts.values(), key=order_key)

    def set_silences(self, silences: Iterable[Silence]) -> None:
        self.silences = {int(s["id"]): s for s in silences if isinstance(s.get("id"), int)}

    def apply_silence(self, change: str, silence: Silence) -> bool:
        if not isinstance(silence.get("id"), int):
            return False
        if change == "removed":
            return self.silences.pop(int(silence["id"]), None) is not None
        self.silences[int(silence["id"])] = silence
        return True

    def ordered_silences(self) -> list[Silence]:
        return sorted(self.silences.values(), key=lambda s: _number(s.get("ends")))

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(RANK, 0)
        for alert in self.alerts.values():
            out[shown_state(alert)] = out.get(shown_state(alert), 0) + 1
        return out


@dataclass
class LiveAlerts:
    """An AlertBook kept by a screen: read once, then kept by the stream's frames.

    Frames that arrive while the lists are being read wait, and are applied after them (an alert
    only moves forward, so one that is no newer than the read changes nothing)."""

    book: AlertBook = field(default_factory=AlertBook)
    loaded: bool = False
    waiting: list[tuple[str, Any]] = field(default_factory=list)

    def start_load(self) -> None:
        self.loaded = False
        self.waiting.clear()

    def loaded_now(self, alerts: Iterable[Alert], silences: Iterable[Silence] | None = None) -> None:
        self.book.replace(alerts)
        if silences is not None:
            self.book.set_silences(silences)
        self.loaded = True
        for kind, frame in self.waiting:
            if kind == "alert":
                self.book.apply(frame)
            else:
                self.book.apply_silence(*frame)
        self.waiting.clear()

    def alert(self, alert: Alert) -> Alert | None:
        """A frame's alert: the alert as the book now has it if it changed, else None."""
        if not self.loaded:
            self.waiting.append(("alert", alert))
            return None
        if not self.book.apply(alert):
            return None
        return self.book.alerts[int(alert["id"])]

    def silence(self, change: str, silence: Silence) -> bool:
        if not self.loaded:
            self.waiting.append(("silence", (change, silence)))
            return False
        return self.book.apply_silence(change, silence)
