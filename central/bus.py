"""Live fan-out to operator clients: node updates, log tails and events, never blocking the server.

Each subscriber has a bounded queue of pre-serialised frames. Publishing never awaits: a client
whose queue is full is marked too slow and cut off by its own connection task.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any


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
    def __init__(self, client_queue_limit: int = 5000) -> None:
        self.client_queue_limit = client_queue_limit
        self._subscribers: set[Subscriber] = set()
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
        targets = [s for s in self._subscribers if s.wants_logs(node_id)]
        if not targets or not lines:
            return
        frame = _encode({"type": "logs", "node": node_id, "lines": lines})
        self.published += 1
        for sub in targets:
            sub.offer(frame)


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)
