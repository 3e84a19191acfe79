"""Node inputs on their way to the features leader, kept until it acknowledges them (issue 18;
docs/architecture.md "Several replicas: the features leader").

A replica holding a node passes the node's hello, demo_install, demo_status and unsupported to the
replica leading the feature areas on the bus. A NOTIFY to a leader that has just died, or sent
while no replica leads (a start, a change of leader), reaches nobody: so each input stays in
`Held` until the leader says it took it (`Acks`, gathered per replica), and is sent again to the
next leader known, or to the same one after `RESEND_AFTER_S` without an answer. The leader takes a
node's inputs from one sender run in order, once: a number at or below the last it took is
acknowledged again and skipped (a copy sent again, or one overtaken by a newer input of the node).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ACK = "features_ack"  # the key of the leader's acknowledgements on a replica's channel
# Held inputs beyond this many: the oldest goes (a leaderless spell far longer than a change of leader).
MAX_HELD = 10_000
# No acknowledgement this long after a send (a lost NOTIFY, a leader too busy): sent again.
RESEND_AFTER_S = 10.0
ACK_GATHER_S = 0.05


@dataclass
class Input:
    id: int
    kind: str
    node_id: str
    msg: dict[str, Any]
    sent_to: str = ""
    sent_at: float = 0.0


class Held:
    """This replica's inputs not yet acknowledged by a leader, in the order they came."""

    def __init__(self, max_held: int = MAX_HELD) -> None:
        self.max_held = max_held
        self.dropped = 0
        self._inputs: dict[int, Input] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._inputs)

    def number(self) -> int:
        """The next input number (one taken at once by this replica leading is numbered too)."""
        self._next += 1
        return self._next

    def add(self, kind: str, node_id: str, msg: dict[str, Any]) -> Input:
        self.number()
        held = self._inputs[self._next] = Input(self._next, kind, node_id, msg)
        if len(self._inputs) > self.max_held:
            oldest = next(iter(self._inputs))
            gone = self._inputs.pop(oldest)
            self.dropped += 1
            log.warning("features: %d node inputs wait for a leader; the oldest (%s of node %s) is dropped",
                        len(self._inputs), gone.kind, gone.node_id)
        return held

    def acked(self, ids: list[int]) -> None:
        for input_id in ids:
            self._inputs.pop(input_id, None)

    def due(self, leader: str, now: float) -> list[Input]:
        """To send (again) to `leader`: never sent to it, or sent RESEND_AFTER_S ago unanswered."""
        return [i for i in self._inputs.values() if i.sent_to != leader or now - i.sent_at >= RESEND_AFTER_S]

    def take_all(self) -> list[Input]:
        """Every held input, for this replica now leading to take itself."""
        inputs, self._inputs = list(self._inputs.values()), {}
        return inputs


class Acks:
    """The leader's acknowledgements, gathered per replica for ACK_GATHER_S into one message."""

    def __init__(self, send: Callable[[str, list[int]], Coroutine[Any, Any, None]]) -> None:
        self._send = send
        self._waiting: dict[str, list[int]] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, replica: str, input_id: int) -> None:
        self._waiting.setdefault(replica, []).append(input_id)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(ACK_GATHER_S, self._go)

    def _go(self) -> None:
        self._flush = None
        waiting, self._waiting = self._waiting, {}
        for replica, ids in waiting.items():
            task = asyncio.get_running_loop().create_task(self._send(replica, ids))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


class Taken:
    """On the leader: the last input number taken per (sender run, node), to take each once, in order."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def first_time(self, run: str, node_id: str, input_id: int) -> bool:
        key = (run, node_id)
        if input_id <= self._last.get(key, 0):
            return False
        self._last[key] = input_id
        return True

    def clear(self) -> None:
        self._last.clear()
