"""What one node may send per unit of time (docs/protocol.md, "Limits per node").

Each node gets token buckets for the messages that become stored rows: metrics samples, events and
keep-alives. A real daemon never reaches them (the numbers below say why); a node that does has
the excess dropped, counted, and reported once per window. The buckets live with the node, not the
connection, so reconnecting does not refill them.
"""

from __future__ import annotations

from functools import lru_cache

# Metrics: a daemon sends one sample per interval (the server's `--interval`, sent in `welcome`).
METRICS_PER_INTERVAL = 2.0
# While offline the daemon keeps its last 720 samples and sends them at once after `welcome`
# (docs/node-daemon.md): the bucket holds that backlog and a margin. It refills at twice the
# rate the daemon spends it, also while the node is offline, so a reconnect always finds room for
# what was buffered meanwhile.
METRICS_BURST = 750
# Keep-alives (HTTP): a daemon or an ESP32 posts one per interval.
KEEPALIVES_PER_INTERVAL = 2.0
KEEPALIVE_BURST = 10
# Events (stored rows): a daemon sends a few an hour, more right after `welcome` (pending
# `log_gap`s and errors, demo transitions: its outbox holds at most 2,000 messages).
EVENTS_PER_MINUTE = 60.0
EVENTS_BURST = 500
# Drops are told once per window (a warning in the server log, an `error` frame to the node and a
# `rate_limited` event) with the count since the previous report.
REPORT_EVERY_S = 60.0
# Frames dropped within one window past which the connection is closed (4429): more than a daemon
# can send in any case (its outbox of 2,000 messages and 720 buffered samples).
ABUSE_DROPS = 5000


class TokenBucket:
    """`capacity` tokens, refilled at `per_second`; a message costs one."""

    __slots__ = ("capacity", "per_second", "tokens", "updated")

    def __init__(self, per_second: float, capacity: float, now: float) -> None:
        self.per_second = per_second
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> bool:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class NodeLimits:
    """One node's buckets and drop counts. Made with the node's first metered message and kept for
    the server's life (20,000 on a server: slots, a bucket per attribute, the rates shared by every
    node, the drop counts made with the first drop; 0.3 KB a node where a dataclass of dicts took 0.7)."""

    __slots__ = ("metrics", "keepalives", "events", "dropped", "reported_at", "window_start", "window_frames")

    def __init__(self, metrics: TokenBucket, keepalives: TokenBucket, events: TokenBucket,
                 window_start: float = 0.0) -> None:
        self.metrics = metrics
        self.keepalives = keepalives
        self.events = events
        # Dropped since the last report, and when that report was, per kind (None: nothing dropped yet).
        self.dropped: dict[str, int] | None = None
        self.reported_at: dict[str, float] | None = None
        # Whole frames dropped in the current abuse window.
        self.window_start = window_start
        self.window_frames = 0

    @classmethod
    def for_interval(cls, interval: float, now: float) -> NodeLimits:
        metrics_rate, keepalives_rate = _rates(max(interval, 0.001))
        return cls(TokenBucket(metrics_rate, METRICS_BURST, now), TokenBucket(keepalives_rate, KEEPALIVE_BURST, now),
                   TokenBucket(_EVENTS_RATE, EVENTS_BURST, now), window_start=now)

    def allow(self, kind: str, now: float) -> bool:
        """May the node send one more `kind` ("metrics", "keepalives" or "events") now?"""
        bucket: TokenBucket = getattr(self, kind)
        return bucket.take(now)

    def drop(self, kind: str, now: float, *, frame: bool = True) -> int:
        """Count one dropped `kind`; returns how many to report now (0: not yet, the window is open)."""
        if self.dropped is None or self.reported_at is None:
            self.dropped, self.reported_at = {}, {}
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        if frame:
            if now - self.window_start >= REPORT_EVERY_S:
                self.window_start, self.window_frames = now, 0
            self.window_frames += 1
        last = self.reported_at.get(kind)
        if last is not None and now - last < REPORT_EVERY_S:
            return 0
        self.reported_at[kind] = now
        return self.dropped.pop(kind)

    @property
    def abusive(self) -> bool:
        return self.window_frames > ABUSE_DROPS


_EVENTS_RATE = EVENTS_PER_MINUTE / 60.0


@lru_cache(maxsize=4)
def _rates(interval: float) -> tuple[float, float]:
    """Metrics and keep-alives per second for an interval: one pair of floats for every node."""
    return METRICS_PER_INTERVAL / interval, KEEPALIVES_PER_INTERVAL / interval
