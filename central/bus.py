"""Live fan-out to operator clients: node updates, log tails and events, never blocking the server.

Each subscriber has a bounded queue of pre-serialised frames. Publishing never awaits: a client
whose queue is full is marked too slow and cut off by its own connection task.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .strictjson import dumps


@dataclass(eq=False)
class Subscriber:
    limit: int
    queue: asyncio.Queue[str] = field(init=False)
    # Node ids whose log lines this client wants; "*" means every node.
    log_nodes: frozenset[str] = frozenset()
    too_slow: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.limit)

    def wants_logs(self, node_id: str) -> bool:
        return "*" in self.log_nodes or node_id in self.log_nodes

    def offer(self, frame: str) -> None:
        if self.too_slow.is_set():
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.too_slow.set()


class Bus:
    def __init__(self, client_queue_limit: int = 5000, flush_interval: float = 0.02) -> None:
        self.client_queue_limit = client_queue_limit
        self.flush_interval = flush_interval
        self._subscribers: set[Subscriber] = set()
        self._pending_logs: dict[str, list[dict[str, Any]]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self.published = 0

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self.client_queue_limit)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, message: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        frame = _encode(message)
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
        everything: list[str] | None = None
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


def _encode(message: dict[str, Any]) -> str:
    return dumps(message, separators=(",", ":"), ensure_ascii=False)


MAX_LINES_PER_FRAME = 1000


def _log_frames(by_node: dict[str, list[dict[str, Any]]]) -> list[str]:
    """`logs` frames for these nodes' lines; `node` is named when a frame holds one node only."""
    frames: list[str] = []
    lines = [line for node_lines in by_node.values() for line in node_lines]
    single = next(iter(by_node)) if len(by_node) == 1 else None
    for start in range(0, len(lines), MAX_LINES_PER_FRAME):
        chunk = lines[start:start + MAX_LINES_PER_FRAME]
        frame: dict[str, Any] = {"type": "logs", "lines": chunk}
        if single is not None:
            frame["node"] = single
        frames.append(_encode(frame))
    return frames
