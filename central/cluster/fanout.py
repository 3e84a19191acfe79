"""The live stream across replicas (issue 18; docs/architecture.md "Several replicas").

`SharedBus` is the local fan-out to operator websockets (central/bus.py) that also hands what this
replica publishes to the `Outbox`: node views (built at send time from the registry, the latest
wins), every other live frame (events, alerts, deployments) and, while another replica's stream
clients want them, log lines. What other replicas send comes back in through `publish_local` and
`publish_logs_local`, which reach this replica's clients only.

The outbox never makes the registry wait: publishing only queues; a task of its own gathers what
came within `FLUSH_S` into one message per channel (`dvic_events`, `dvic_logs`), which the bus sends
in one statement however many NOTIFYs its size takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ..bus import Bus, Subscriber
from ..registry import NodeState
from .pgbus import BusError
from .replica import ReplicaBus

log = logging.getLogger(__name__)

EVENTS = "dvic_events"
LOGS = "dvic_logs"
FLUSH_S = 0.03


class Outbox:
    """What this replica tells the others, gathered for `flush_s` and sent by a task of its own."""

    def __init__(self, bus: ReplicaBus, replica: str, view: Callable[[str], dict[str, Any] | None],
                 flush_s: float = FLUSH_S) -> None:
        self.bus = bus
        self.replica = replica
        self.view = view
        self.flush_s = flush_s
        self.sent = {"events": 0, "logs": 0, "lines": 0, "views": 0}
        self._nodes: dict[str, None] = {}  # node ids whose view is due (ordered, once each)
        self._frames: list[dict[str, Any]] = []
        self._lines: dict[str, list[dict[str, Any]]] = {}
        self._beat: dict[str, Any] | None = None
        self._acks: dict[str, int] = {}
        # Other parts of a message, each asked at send time (given whether a heartbeat goes with
        # it) for the fields it adds: the shared connection counts (conns.py).
        self.parts: list[Callable[[bool], dict[str, Any]]] = []
        self._sent_parts: dict[str, tuple[int, int]] = {}  # node id: what its facts and demos were sent as
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"dvic-outbox-{self.replica}")

    async def close(self, final: dict[str, Any] | None = None) -> None:
        """Send what is queued (and `final`'s fields with it), then take nothing more."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(BusError):
            await self._flush(final or {})
        for task in list(self._background):
            task.cancel()

    @property
    def waiting(self) -> int:
        """Node views, frames and nodes' line batches queued for the next message."""
        return len(self._nodes) + len(self._frames) + len(self._lines)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- queueing (never awaits) -----------------------------------------------------------------
    def node_changed(self, node_id: str) -> None:
        if not self._closed:
            self._nodes[node_id] = None
            self._wake.set()

    def frame(self, message: dict[str, Any]) -> None:
        if not self._closed:
            self._frames.append(message)
            self._wake.set()

    def lines(self, node_id: str, lines: list[dict[str, Any]]) -> None:
        if not self._closed:
            self._lines.setdefault(node_id, []).extend(lines)
            self._wake.set()

    def beat(self, beat: dict[str, Any]) -> None:
        if not self._closed:
            self._beat = beat
            self._wake.set()

    def poke(self) -> None:
        """A part has something to say: a message goes at the end of this window."""
        if not self._closed:
            self._wake.set()

    def ack(self, replica: str, interest: int) -> None:
        """`replica`'s wish for lines number `interest` is applied here."""
        if not self._closed:
            self._acks[replica] = interest
            self._wake.set()

    def presence_of(self, node: NodeState, replica: str) -> dict[str, Any]:
        """The presence part of a node's view, sent by the replica keeping its presence. Facts and
        demos only when they changed since this replica last sent them (the others read them from
        the tables when they start or after a gap)."""
        part: dict[str, Any] = {
            "epoch": node.epoch, "replica": replica if node.send is not None else node.replica,
            "liveness": node.liveness, "state_since": node.state_since, "last_seen": node.last_seen,
            "metrics": node.metrics, "sample": node.sample, "clock_skew": node.clock_skew,
            "daemon_version": node.daemon_version,
        }
        facts, demos = hash(repr(sorted(node.facts.items()))), hash(repr(sorted(node.demos.items())))
        sent_facts, sent_demos = self._sent_parts.get(node.id, (None, None))
        if facts != sent_facts:
            part["facts"] = node.facts
        if demos != sent_demos:
            part["demos"], part["demo_seen"] = node.demos, node.demo_seen
        self._sent_parts[node.id] = (facts, demos)
        return part

    # -- sending ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_s)  # gather what else comes meanwhile
            self._wake.clear()
            try:
                await self._flush({})
            except asyncio.CancelledError:
                raise
            except BusError as exc:  # the receivers see the gap in our numbers and reread the tables
                log.warning("replica %s: %s", self.replica, exc)
            except Exception:
                log.exception("replica %s: the outbox failed", self.replica)

    async def _flush(self, extra: dict[str, Any]) -> None:
        nodes, self._nodes = self._nodes, {}
        frames, self._frames = self._frames, []
        lines, self._lines = self._lines, {}
        beat, self._beat = self._beat, None
        acks, self._acks = self._acks, {}
        message: dict[str, Any] = {"from": self.replica, **extra}
        views = [v for v in map(self.view, nodes) if v is not None]
        if views:
            message["views"] = views
        if frames:
            message["frames"] = frames
        if beat is not None:
            message["beat"] = beat
        if acks:
            message["acks"] = acks
        for part in self.parts:
            message.update(part(beat is not None))
        if len(message) > 1:
            self.sent["events"] += 1
            self.sent["views"] += len(views)
            await self.bus.publish(EVENTS, message)
        if lines:
            self.sent["logs"] += 1
            self.sent["lines"] += sum(len(v) for v in lines.values())
            await self.bus.publish(LOGS, {"from": self.replica, "lines": lines})


class Sharing(Protocol):
    """What the shared fan-out needs of shared presence (central/cluster/presence.py)."""

    outbox: Outbox

    def wants(self) -> list[str]: ...
    def remote_wants(self, node_id: str) -> bool: ...
    def remote_audience(self) -> bool: ...
    def beat_now(self) -> None: ...
    async def announce_interest(self) -> None: ...


class SharedBus(Bus):
    """The local fan-out (central/bus.py), whose publications also go to the other replicas."""

    presence: Sharing | None = None

    def attach(self, presence: Sharing) -> None:
        self.presence = presence

    def subscribe(self) -> Subscriber:
        sub = super().subscribe()
        if self.presence is not None and self.subscriber_count == 1:
            self.presence.beat_now()  # the others now build frames for this replica's clients too
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        had = self.subscriber_count
        super().unsubscribe(sub)
        if self.presence is not None and had == 1 and self.subscriber_count == 0:
            self.presence.beat_now()

    def has_audience(self) -> bool:
        """Stream clients here, or on another live replica (its heartbeat says it has some)."""
        return super().has_audience() or (self.presence is not None and self.presence.remote_audience())

    def publish(self, message: dict[str, Any]) -> None:
        super().publish(message)
        if self.presence is None:
            return
        if message.get("type") == "node":  # the node's view is built when it leaves (the latest)
            self.presence.outbox.node_changed(str(message["node"]["id"]))
        else:
            self.presence.outbox.frame(message)

    def publish_local(self, message: dict[str, Any]) -> None:
        """Another replica's frame: to this replica's clients only."""
        super().publish(message)

    def wants_logs(self, node_id: str) -> bool:
        return super().wants_logs(node_id) or (self.presence is not None and self.presence.remote_wants(node_id))

    def publish_logs(self, node_id: str, lines: list[dict[str, Any]]) -> None:
        if self.presence is None:
            super().publish_logs(node_id, lines)
        elif super().wants_logs(node_id):
            super().publish_logs(node_id, lines)
        if self.presence is not None and self.presence.remote_wants(node_id):
            self.presence.outbox.lines(node_id, lines)

    def publish_logs_local(self, node_id: str, lines: list[dict[str, Any]]) -> None:
        if super().wants_logs(node_id):
            super().publish_logs(node_id, lines)

    def local_interest(self) -> set[str]:
        """The node ids (or "*") this replica's stream clients want lines of."""
        wanted: set[str] = set()
        for sub in self._subscribers:
            wanted |= sub.log_nodes
        return {"*"} if "*" in wanted else wanted

    async def subscriptions_changed(self) -> None:
        if self.presence is not None:
            await self.presence.announce_interest()
