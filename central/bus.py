"""Live fan-out to operator clients: node updates, log tails and events, never blocking the server.

Each subscriber has a queue of pre-serialised frames, bounded in frames and in bytes. Publishing
never awaits: a client whose queue is over either bound is marked too slow and cut off by its own
connection task. A client that does not read at all leaves that task stuck in a send; a watchdog
hangs such a connection up (docs/protocol.md section 4.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .strictjson import dumps

log = logging.getLogger(__name__)

DEFAULT_BYTE_BUDGET = 32 * 1024 * 1024
# A send still waiting for the client after this long: it stopped reading (even if it still
# writes, e.g. pings, which keep the websocket heartbeat content).
SEND_STALL_S = 20.0
# A client already cut off as too slow gets this long to take its close frame, then is hung up.
CUT_OFF_GRACE_S = 2.0
WATCH_EVERY_S = 1.0


@dataclass(eq=False)
class Subscriber:
    limit: int
    byte_budget: int = DEFAULT_BYTE_BUDGET
    queue: asyncio.Queue[bytes] = field(init=False)
    # Node ids whose log lines this client wants; "*" means every node.
    log_nodes: frozenset[str] = frozenset()
    too_slow: asyncio.Event = field(default_factory=asyncio.Event)
    # Bytes offered and not yet handed to the socket (queued, or the frame being sent).
    queued_bytes: int = 0
    # Loop time the connection's current send (or close) began; None while it is not sending.
    sending_since: float | None = None
    # Drops the connection without a goodbye (set by the connection; aborts its transport).
    hang_up: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.limit)

    def wants_logs(self, node_id: str) -> bool:
        return "*" in self.log_nodes or node_id in self.log_nodes

    def offer(self, frame: bytes) -> None:
        if self.too_slow.is_set():
            return
        size = len(frame)
        # A frame always fits an empty queue, so one large frame cannot cut off a reading client.
        if self.queued_bytes and self.queued_bytes + size > self.byte_budget:
            self._fall_behind()
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._fall_behind()
            return
        self.queued_bytes += size

    def _fall_behind(self) -> None:
        self.too_slow.set()
        # Wake the connection's task so it cuts the client off now, even with nothing queued
        # (over budget with only the frame being sent): an empty frame, never sent.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(b"")

    def sent(self, frame: bytes) -> None:
        """The connection handed `frame` to its socket."""
        self.sending_since = None
        self.queued_bytes -= len(frame)

    def drop(self) -> None:
        """Hang the connection up and free what it had queued."""
        self.too_slow.set()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0
        if self.hang_up is not None:
            self.hang_up()


class Bus:
    def __init__(self, client_queue_limit: int = 5000, flush_interval: float = 0.02,
                 client_byte_budget: int = DEFAULT_BYTE_BUDGET, send_stall_s: float = SEND_STALL_S) -> None:
        self.client_queue_limit = client_queue_limit
        self.client_byte_budget = client_byte_budget
        self.send_stall_s = send_stall_s
        self.flush_interval = flush_interval
        self._subscribers: set[Subscriber] = set()
        self._pending_logs: dict[str, list[dict[str, Any]]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._watch_handle: asyncio.TimerHandle | None = None
        self.published = 0
        self.hung_up = 0

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self.client_queue_limit, self.client_byte_budget)
        self._subscribers.add(sub)
        if self._watch_handle is None:
            self._watch_handle = asyncio.get_running_loop().call_later(WATCH_EVERY_S, self._watch)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    async def subscriptions_changed(self) -> None:
        """A client's choice of log lines changed (with replicas, the others are told and have applied
        it when this returns: cluster/fanout.py)."""

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def has_audience(self) -> bool:
        """Is any stream client, here or (with replicas) on another replica, shown what is published
        now? (Lets callers skip building frames nobody gets.)"""
        return bool(self._subscribers)

    def _watch(self) -> None:
        self._watch_handle = None
        loop = asyncio.get_running_loop()
        self.hang_up_stalled(loop.time())
        if self._subscribers:
            self._watch_handle = loop.call_later(WATCH_EVERY_S, self._watch)

    def hang_up_stalled(self, now: float) -> int:
        """Drop the clients whose send has waited too long for them to read; returns how many."""
        dropped = 0
        for sub in list(self._subscribers):
            since = sub.sending_since
            if since is None:
                continue
            patience = CUT_OFF_GRACE_S if sub.too_slow.is_set() else self.send_stall_s
            if now - since > patience:
                log.warning("stream client not reading (%d bytes queued): hanging up", sub.queued_bytes)
                self._subscribers.discard(sub)
                sub.drop()
                dropped += 1
        self.hung_up += dropped
        return dropped

    def publish(self, message: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        frame = encode_frame(message)
        self.published += 1
        for sub in self._subscribers:
            sub.offer(frame)

    def wants_logs(self, node_id: str) -> bool:
        """Is anyone subscribed to this node's lines? (Lets callers skip building them.)"""
        return any(s.wants_logs(node_id) for s in self._subscribers)

    def publish_logs(self, node_id: str, lines: list[dict[str, Any]]) -> None:
        """Queue committed lines; they leave in one frame per subscriber per flush window, not one
        frame per node batch (2,000 nodes would otherwise mean thousands of frames a second)."""
        if not lines:
            return
        self._pending_logs.setdefault(node_id, []).extend(lines)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.flush_interval, self._flush_logs)

    def _flush_logs(self) -> None:
        self._flush_handle = None
        pending, self._pending_logs = self._pending_logs, {}
        everything: list[bytes] | None = None
        for sub in self._subscribers:
            if "*" in sub.log_nodes:
                if everything is None:
                    everything = _log_frames(pending)
                frames = everything
            else:
                frames = _log_frames({n: ls for n, ls in pending.items() if n in sub.log_nodes})
            for frame in frames:
                sub.offer(frame)
        self.published += 1


def encode_frame(message: dict[str, Any]) -> bytes:
    """A message as the UTF-8 text of one websocket frame (what subscribers queue)."""
    return _encode(message).encode()


def _encode(message: dict[str, Any]) -> str:
    return dumps(message, separators=(",", ":"), ensure_ascii=False)


MAX_LINES_PER_FRAME = 1000
# Frames past this size are split (lines are up to 64 KiB), so a client's byte budget holds many
# frames and a reading client is never cut off by the size of one batch.
MAX_FRAME_BYTES = 1024 * 1024


def _log_frames(by_node: dict[str, list[dict[str, Any]]]) -> list[bytes]:
    """`logs` frames for these nodes' lines; `node` is named when a frame holds one node only."""
    frames: list[bytes] = []
    lines = [line for node_lines in by_node.values() for line in node_lines]
    single = next(iter(by_node)) if len(by_node) == 1 else None
    for start in range(0, len(lines), MAX_LINES_PER_FRAME):
        _add_log_frames(frames, lines[start:start + MAX_LINES_PER_FRAME], single)
    return frames


def _add_log_frames(frames: list[bytes], lines: list[dict[str, Any]], single: str | None) -> None:
    frame: dict[str, Any] = {"type": "logs", "lines": lines}
    if single is not None:
        frame["node"] = single
    data = encode_frame(frame)
    if len(data) <= MAX_FRAME_BYTES or len(lines) == 1:
        frames.append(data)
        return
    # Split into as many parts as the size asks for; a part still too big (uneven lines) splits again.
    parts = min(len(lines), -(-len(data) // MAX_FRAME_BYTES))
    step = -(-len(lines) // parts)
    for start in range(0, len(lines), step):
        _add_log_frames(frames, lines[start:start + step], single)
