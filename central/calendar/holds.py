"""Who holds which machine when: the live bookings per node, in memory, for the one check every
remote-control route makes (`Holds.refusal`). The store is the truth (central/calendar/store.py
decides overlaps inside the writer); this index follows each committed change and is loaded at start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Hold:
    booking_id: int
    holder: str
    node_id: str
    starts_at: float
    ends_at: float


class Holds:
    def __init__(self) -> None:
        self._by_node: dict[str, list[Hold]] = {}
        # Called after each change made here (with replicas: the others reload theirs).
        self.changed: Callable[[], None] = lambda: None

    def load(self, rows: list[tuple[int, str, str, float, float]]) -> None:
        self._by_node.clear()
        for booking_id, holder, node_id, starts_at, ends_at in rows:
            self._by_node.setdefault(node_id, []).append(Hold(booking_id, holder, node_id, starts_at, ends_at))

    def add(self, booking_id: int, holder: str, node_ids: list[str], starts_at: float, ends_at: float) -> None:
        for node_id in node_ids:
            self._by_node.setdefault(node_id, []).append(Hold(booking_id, holder, node_id, starts_at, ends_at))
        self.changed()

    def drop(self, booking_id: int) -> None:
        for node_id, holds in list(self._by_node.items()):
            kept = [h for h in holds if h.booking_id != booking_id]
            if kept:
                self._by_node[node_id] = kept
            else:
                del self._by_node[node_id]
        self.changed()

    def move_end(self, booking_id: int, ends_at: float) -> None:
        for node_id, holds in self._by_node.items():
            self._by_node[node_id] = [
                Hold(h.booking_id, h.holder, h.node_id, h.starts_at, ends_at) if h.booking_id == booking_id else h
                for h in holds]
        self.changed()

    def holding(self, node_id: str, at: float | None = None) -> Hold | None:
        """The booking that holds `node_id` at `at` (now by default); forgets the ones that are over."""
        holds = self._by_node.get(node_id)
        if not holds:
            return None
        at = time.time() if at is None else at
        live = [h for h in holds if h.ends_at > at]
        if len(live) != len(holds):
            if live:
                self._by_node[node_id] = live
            else:
                del self._by_node[node_id]
        return next((h for h in live if h.starts_at <= at), None)

    def view(self, node_id: str) -> dict[str, object] | None:
        """Who holds the node now and until when (the fleet view's `booking`), or None."""
        hold = self.holding(node_id)
        return None if hold is None else {"id": hold.booking_id, "holder": hold.holder, "until": hold.ends_at}

    def refusal(self, node_id: str, node_name: str, operator: str, role: str, at: float | None = None) -> str | None:
        """Why `operator` may not act on this node now (None: it may): held by someone else's booking.
        Admins and the booking's holder may always act."""
        if role == "admin":
            return None
        hold = self.holding(node_id, at)
        if hold is None or hold.holder == operator:
            return None
        return (f"node {node_name!r} is held by booking {hold.booking_id} of {hold.holder!r} until "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(hold.ends_at))}: only its holder and admins "
                "may act on it")
