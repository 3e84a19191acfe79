"""The feature areas on one replica, the features leader (issue 18; docs/architecture.md "Several
replicas: the features leader").

Alerts (rules, open alerts, silences, acknowledgements), notifications (channels, routes, the
delivery queue), the calendar (hours, runbooks, bookings, its scheduler) and demos (releases,
assignments, rollouts) keep their state in memory, changed by API calls and node messages. With
several replicas that state lives on one of them: the replica holding the "features" job's advisory
lock (central/cluster/leader.py). On gaining the lock it reads every area again from the database
(what it had may be stale), then evaluates alerts, delivers notifications, runs the calendar's jobs
and follows rollouts; on losing it, it stops all of that. The others:

- forward operators' API calls of those areas to it (central/cluster/forward.py);
- pass it their nodes' inputs of those areas on the bus (`dvic_r_<leader>`, key `features`): a
  hello (its desired demos), demo_install, demo_status, an `unsupported` answer; log lines reach it
  on `dvic_logs` only while it has log rules (it then announces interest in every node's lines);
- ask it whether a node may download a release (`features_release`, a bus request);
- keep their booking holds (the one check remote control makes everywhere) fresh: the leader says
  on `dvic_features` when they changed, and they read them again.

The leader announces itself in its heartbeat (`features`: its own HTTPS address, `Services.base_url`).
Its messages to nodes held by other replicas (`demos_desired`) go through the router's `deliver`.
On SQLite there is one server: it leads always and nothing here is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from ..alerts import queries as alert_queries
from ..alerts.engine import DEMO_FLAG_EVENTS, DemoFact
from ..alerts.metrics_export import NO_FIGURES, AlertFigures
from ..alerts.stock import LOG_WINDOW_S
from ..demos.deployments import IN_PROGRESS
from ..registry import NodeState
from ..tasks import Background
from .fanout import EVENTS
from .inputs import ACK, Acks, Held, Input, Taken
from .pgbus import BusError, NoReply, channel_of
from .routing import Lanes

if TYPE_CHECKING:
    from ..alerts.dispatcher import Dispatcher
    from ..alerts.engine import AlertEngine
    from ..calendar.service import Calendar
    from ..dbconn import ReadDB
    from ..demos.deployments import DeploymentHub
    from ..queries import Queries
    from ..registry import Registry
    from .presence import Presence
    from .replica import Cluster

log = logging.getLogger(__name__)

JOB = "features"
INPUT = "features"  # the key of a node input on the leader's channel
HOLDS_CHANNEL = "dvic_features"
RELEASE_CHECK = "features_release"
ALERT_FIGURES = "features_alert_figures"
KINDS = ("hello", "demo_install", "demo_status", "unsupported")
# How long a call waits for a leader to be known before it is refused (a start, a change of leader
# after a replica was killed: 1.7-1.9 s on this machine, docs/operations.md).
LEADER_WAIT_S = 5.0
# The log rules' last window read from the table by a new leader: lines whose node clock is up to
# this much behind still come (the engine drops those outside the window by the node's skew), at
# most this many.
STORED_LINES_SKEW_S = 300.0
STORED_LINES_MAX = 200_000
HELD_CHECK_S = 0.5  # how often inputs waiting for an acknowledgement look for a leader


@dataclass(frozen=True)
class Leader:
    replica: str
    url: str


class Services(Protocol):
    """What the feature areas are made of (central/services.py's Services; a Protocol: services.py
    imports this module)."""

    cluster: Cluster
    presence: Presence
    registry: Registry
    read_db: ReadDB
    queries: Queries
    alerts: AlertEngine
    notices: Dispatcher
    calendar: Calendar
    deployments: DeploymentHub
    base_url: str  # where this replica listens (set once it does)


class LeaderUnavailable(Exception):
    """No replica leads the feature areas now, or the one that does cannot be reached."""


class Features:
    """This replica's side of the feature areas; see the module's docstring."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.replica = services.cluster.replica
        self.shared = services.cluster.shared
        self.leading = not self.shared  # one server leads always
        self.gained = 0  # times this replica took the lead (tests)
        self.received: dict[str, int] = {}  # node inputs taken from other replicas, per kind (tests)
        self._lanes = Lanes()
        self._background = Background("the feature areas' background work")
        self._news = asyncio.Event()  # set when who leads may have changed (wait_for_leader)
        # Node inputs passed to a leader and not yet acknowledged, and what this replica took as leader.
        self._held = Held()
        self._resender: asyncio.Task[None] | None = None
        self._run = uuid.uuid4().hex[:12]  # this process's inputs are numbered from 1: a restart is a new run
        self._taken = Taken()
        self._acks = Acks(self._send_acks)
        # The log rules' lines: the last seq counted per node, and the lines kept aside while the
        # stored ones are read (before leading).
        self._counted: dict[str, int] = {}
        self._gathered: list[tuple[NodeState, list[dict[str, Any]]]] | None = None
        if not self.shared:
            return
        bus, presence = services.cluster.bus, services.presence
        bus.subscribe(channel_of(self.replica), self._on_input)
        bus.subscribe(HOLDS_CHANNEL, self._on_holds)
        bus.subscribe(EVENTS, self._on_events)  # (after Presence's handler: its peers are up to date)
        bus.on_gap(lambda: self._spawn(self._reload_holds()))
        bus.responder(RELEASE_CHECK, self._answer_release)
        bus.responder(ALERT_FIGURES, self._answer_alert_figures)
        presence.announce.append(self._announce)
        presence.jobs_want_lines = self._wants_every_line
        presence.line_observers.append(self._lines_from_elsewhere)
        presence.frame_observers.append(self._frame_from_elsewhere)
        services.calendar.holds.changed = self._holds_changed

    # -- who leads -------------------------------------------------------------------------------
    def leader(self, other_than: str = "") -> Leader | None:
        """The replica leading now as this one knows it (itself, or the last to announce it), not
        `other_than` (one found unreachable)."""
        if self.leading:
            return Leader(self.replica, self.services.base_url)
        heard = [p for p in self.services.presence.peers.values() if not p.gone and p.name != other_than
                 and p.said and isinstance(p.said.get(JOB), str) and p.said[JOB]]
        if not heard:
            return None
        newest = max(heard, key=lambda p: p.heard)
        return Leader(newest.name, str(newest.said[JOB]))  # type: ignore[index]

    async def wait_for_leader(self, timeout: float, other_than: str = "") -> Leader | None:
        """The leader, waiting up to `timeout` s for one to be known (a start, a change of leader)."""
        deadline = time.monotonic() + timeout
        leader = self.leader(other_than)
        while leader is None and (left := deadline - time.monotonic()) > 0:
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)
            leader = self.leader(other_than)
        return leader

    def _on_events(self, message: dict[str, Any]) -> None:
        beat = message.get("beat")
        if message.get("stopping") or (isinstance(beat, dict) and beat.get(JOB)):
            self._news.set()

    def why_no_leader(self) -> str:
        gone = [p.name for p in self.services.presence.peers.values() if p.gone and p.said and p.said.get(JOB)]
        last = f" (the last leader, replica {gone[0]}, is gone)" if gone else ""
        return (f"no replica leads the feature areas now{last}: another takes the lead within a few seconds, "
                "try again")

    def _announce(self) -> dict[str, Any]:
        return {JOB: self.services.base_url} if self.leading and self.services.base_url else {}

    # -- the job ---------------------------------------------------------------------------------
    async def lead(self) -> None:
        """The "features" job (Leadership): reload, then run every area's work until cancelled."""
        s = self.services
        try:
            await self._reload()
            self._taken.clear()
            self._counted.clear()
            self._gathered = [] if s.alerts.watches_logs else None  # (see _count_stored_lines)
            self.leading = True
            self.gained += 1
            self._news.set()
            s.presence.beat_now()
            await s.notices.start()
            s.deployments.start()
            self._spawn(self._push_in_progress())
            log.info("replica %s leads the feature areas (alerts, notifications, calendar, demos)", self.replica)
            await asyncio.gather(s.alerts.run(), s.calendar.run_jobs(), self._count_stored_lines())
        finally:
            self.leading = False
            self._gathered = None
            s.deployments.stop()
            await s.notices.pause()
            if not s.presence.stopping:
                s.presence.beat_now()

    async def _reload(self) -> None:
        s = self.services
        await s.alerts.reload(s.read_db)
        await s.calendar.reload()
        await s.deployments.read(s.read_db)
        # The demo flags of the alert engine (crash loop, unhealthy, cannot start) from the stored
        # demo events and statuses: an open demo alert is then still true, not ended and raised again.
        events = await alert_queries.demo_flag_events(s.read_db, DEMO_FLAG_EVENTS)
        s.alerts.rebuild_demo_flags(
            [DemoFact(e["ts"], e["node_id"], e["kind"], e["data"]) for e in events]
            + [DemoFact(float(row["updated_at"]), node_id, "demo_status", row)
               for (node_id, _demo), row in list(s.deployments.status.items())])

    async def _count_stored_lines(self) -> None:
        """Once leading, the log rules' counts of the last window from the stored lines, so that a
        line sent while no replica led (or to the leader that died) still counts. Every replica is
        first asked for every node's lines, and acknowledges once what it accepted before is
        stored: a line is then either in what is read here or relayed to this replica, kept aside
        meanwhile (`observe_logs`) and counted after (once per node and seq)."""
        if self._gathered is None:
            return
        s = self.services
        try:
            await s.presence.announce_interest()
            since = time.time() - LOG_WINDOW_S - STORED_LINES_SKEW_S
            lines = await s.queries.recent_lines(since, s.alerts.least_log_level, STORED_LINES_MAX)
            if len(lines) >= STORED_LINES_MAX:
                log.warning("replica %s: the log rules count only the first %d lines of the last window",
                            self.replica, STORED_LINES_MAX)
            for node_id, of_node in itertools.groupby(lines, key=lambda line: str(line["node_id"])):
                node = s.registry.get(node_id)
                if node is not None:
                    self._count(node, list(of_node))
        except asyncio.CancelledError:
            raise
        except Exception:  # counted from the lines that come then, as before
            log.exception("replica %s: could not read the last window's lines for the log rules", self.replica)
        gathered, self._gathered = self._gathered, None
        for node, kept in gathered or ():
            self._count(node, kept)

    def _count(self, node: NodeState, lines: list[dict[str, Any]]) -> None:
        """Lines for the log rules, each once (a line read from the table may also come relayed)."""
        last = self._counted.get(node.id, 0)
        fresh = [line for line in lines if line["seq"] > last]
        if fresh:
            self._counted[node.id] = max(line["seq"] for line in fresh)
            self.services.alerts.observe_logs(node, fresh)

    async def _push_in_progress(self) -> None:
        """Nodes with a rollout row in progress get their desired set again: what they reported while
        no replica led is asked for again (a push that changes nothing is answered with the results)."""
        hub = self.services.deployments
        ids = {node_id for dep in hub.deployments.values() for node_id, row in dep.nodes.items()
               if row.state in IN_PROGRESS}
        for node_id in sorted(ids):
            node = self.services.registry.get(node_id)
            if node is not None and node.connected:
                await hub.on_hello(node)

    # -- node inputs (nodehub calls these on the replica holding the node) -------------------------
    async def hello(self, node: NodeState) -> None:
        await self._input("hello", node, {})

    async def demo_install(self, node: NodeState, msg: dict[str, Any]) -> None:
        await self._input("demo_install", node, msg)

    async def demo_status(self, node: NodeState, msg: dict[str, Any]) -> None:
        await self._input("demo_status", node, msg)

    async def unsupported(self, node: NodeState, msg: dict[str, Any]) -> bool:
        """An old daemon's `unsupported`: True when it answered a push of the deployments. Elsewhere
        than on the leader the push ids are not known: it goes to the leader too (rare)."""
        return await self._input("unsupported", node, msg)

    async def _input(self, kind: str, node: NodeState, msg: dict[str, Any]) -> bool:
        if not self.leading:
            await self._to_leader(kind, node, msg)
            return False
        # Numbered as the held ones: one of those older than this, taken after it, is skipped.
        self._taken.first_time(self._run, node.id, self._held.number())
        return await self._apply(kind, node, msg)

    async def _apply(self, kind: str, node: NodeState, msg: dict[str, Any]) -> bool:
        """A node input on the leader (True: an `unsupported` answered a push of the deployments)."""
        s = self.services
        if kind == "hello":
            await s.deployments.on_hello(node)
        elif kind == "demo_install":
            await s.deployments.on_install(node, msg)
        elif kind == "demo_status":
            s.alerts.on_demo_status(node, msg)
            await s.deployments.on_status(node, msg)
        else:
            return await s.deployments.on_unsupported(node, str(msg.get("id")))
        return False

    def observe_logs(self, node: NodeState, lines: list[dict[str, Any]]) -> None:
        """Lines of a node held here; the leader's log rules get other replicas' lines on dvic_logs
        (kept aside while a replica about to lead reads the last window's: `_count_stored_lines`)."""
        if self._gathered is not None:
            self._gathered.append((node, lines))
        elif self.leading and self.services.alerts.watches_logs:  # (every line of every node: skip early)
            self._count(node, lines)

    async def _to_leader(self, kind: str, node: NodeState, msg: dict[str, Any]) -> None:
        """Pass a node input to the leader, and keep it until the leader acknowledges it (inputs.py):
        sent again to the next leader when this one dies first, or when none leads yet."""
        held = self._held.add(kind, node.id, msg)
        leader = self.leader()
        if leader is None:
            log.info("replica %s: %s of node %s waits for a leader: %s", self.replica, kind, node.name,
                     self.why_no_leader())
        else:
            await self._send(held, leader.replica)
        if self._resender is None or self._resender.done():
            self._resender = asyncio.create_task(self._resend_held(), name="dvic-features-held")

    async def _send(self, held: Input, leader: str) -> None:
        body = {INPUT: held.kind, "from": self.replica, "run": self._run, "id": held.id, "node": held.node_id,
                "msg": held.msg, "again": bool(held.sent_to)}
        held.sent_to, held.sent_at = leader, time.monotonic()
        try:
            await self.services.cluster.bus.publish(channel_of(leader), body)
        except BusError as exc:
            log.warning("replica %s: %s of node %s not passed on to %s yet: %s", self.replica, held.kind,
                        held.node_id, leader, exc)

    async def _resend_held(self) -> None:
        """While inputs wait for an acknowledgement: to the leader known now, or taken here once this
        replica leads."""
        while self._held:
            await asyncio.sleep(HELD_CHECK_S)  # (a poll while inputs wait: nothing else to wake it)
            if self.leading:
                for held in self._held.take_all():
                    self._lanes.put(held.node_id, partial(self._take_held_here, held))
                continue
            leader = self.leader()
            if leader is not None:
                for held in self._held.due(leader.replica, time.monotonic()):
                    await self._send(held, leader.replica)

    async def _take_held_here(self, held: Input) -> None:
        """An input this replica held, now that it leads: once, unless a newer one of the node came
        first (checked when its turn comes: the node's newer inputs are taken at once here)."""
        if self.leading and self._taken.first_time(self._run, held.node_id, held.id):
            await self._take(held.kind, held.node_id, held.msg, "")

    def _on_input(self, message: dict[str, Any]) -> None:
        if isinstance(message.get(ACK), list):
            self._held.acked([i for i in message[ACK] if isinstance(i, int)])
            return
        kind = message.get(INPUT)
        if kind not in KINDS:
            return  # the router's messages share this channel
        node_id, msg = str(message.get("node")), message.get("msg")
        if not isinstance(msg, dict):
            return
        holder = str(message.get("from") or "")
        if not self.leading:
            log.info("replica %s: %s of node %s from %s, but this replica does not lead: not taken (it is "
                     "sent again to the leader)", self.replica, kind, node_id, holder)
            return
        input_id, run = message.get("id"), str(message.get("run") or "")
        if isinstance(input_id, int) and not self._taken.first_time(run, node_id, input_id):
            self._acks.add(holder, input_id)  # a copy sent again, or overtaken by a newer one: taken
            return
        self.received[str(kind)] = self.received.get(str(kind), 0) + 1

        async def take() -> None:
            # (a hello sent again may be older than the holder's news of the node: no guess from it)
            await self._take(str(kind), node_id, msg, "" if message.get("again") else holder)
            if isinstance(input_id, int) and self.leading:
                self._acks.add(holder, input_id)

        self._lanes.put(node_id, take)  # in order, per node

    async def _send_acks(self, replica: str, ids: list[int]) -> None:
        with contextlib.suppress(BusError):  # not acknowledged: the replica sends them again, taken once
            await self.services.cluster.bus.publish(channel_of(replica), {ACK: ids})

    async def _take(self, kind: str, node_id: str, msg: dict[str, Any], holder: str) -> None:
        node = self.services.registry.get(node_id)
        if node is None or not self.leading:
            return
        try:
            if kind == "hello":
                self._seen_connected(node, holder)
            await self._apply(kind, node, msg)
        except Exception:  # one bad message must not stop the node's lane
            log.exception("replica %s: %s of node %s failed", self.replica, kind, node_id)

    def _seen_connected(self, node: NodeState, holder: str) -> None:
        """A hello passed on may come before the holder's view of the node (sent in its next 30 ms
        window): the holder greeted the session, so the node is connected there (the view, when it
        comes, says the same), and its desired set goes there."""
        if not node.connected and holder:
            node.replica = holder
    def _wants_every_line(self) -> bool:
        return (self.leading or self._gathered is not None) and self.services.alerts.watches_logs

    def _lines_from_elsewhere(self, node: NodeState, lines: list[dict[str, Any]]) -> None:
        self.observe_logs(node, lines)

    def _frame_from_elsewhere(self, frame: dict[str, Any]) -> None:
        """The leader's alert counts, for this replica's stream clients' hello."""
        if frame.get("type") == "alerts" and not self.leading and isinstance(frame.get("counts"), dict):
            self.services.alerts.leaders_counts = dict(frame["counts"])

    # -- releases a node may download --------------------------------------------------------------
    async def allowed_release(self, node: NodeState, sha256: str) -> bool:
        """May `node` download this release? The leader's deployments decide (LeaderUnavailable)."""
        if self.leading:
            return self.services.deployments.allowed_release(node, sha256)
        leader = await self.wait_for_leader(LEADER_WAIT_S)
        if self.leading:
            return self.services.deployments.allowed_release(node, sha256)
        if leader is None:
            raise LeaderUnavailable(self.why_no_leader())
        try:
            answer = await self.services.cluster.bus.request(leader.replica, RELEASE_CHECK,
                                                             {"node": node.id, "sha256": sha256})
        except (NoReply, BusError) as exc:
            raise LeaderUnavailable(f"replica {leader.replica}, leading the feature areas, did not answer: "
                                    f"{exc}") from None
        return bool(answer.get("allowed"))

    def _answer_release(self, body: dict[str, Any]) -> dict[str, Any]:
        node = self.services.registry.get(str(body.get("node")))
        allowed = self.leading and node is not None and self.services.deployments.allowed_release(
            node, str(body.get("sha256")))
        return {"allowed": allowed}

    # -- the alert part of GET /metrics ------------------------------------------------------------
    async def alert_figures(self) -> AlertFigures | None:
        """The alert figures /metrics shows: None on the leader (its own); else the leader's, asked on
        the bus (NO_FIGURES when no leader answers within 2 s: the families are left out, never
        this replica's stale ones)."""
        if self.leading:
            return None
        leader = self.leader()
        if leader is not None:
            try:
                answer = await self.services.cluster.bus.request(leader.replica, ALERT_FIGURES, {})
                if answer.get("leading"):
                    return AlertFigures.from_dict(answer)
            except (NoReply, BusError, KeyError, TypeError, ValueError) as exc:
                log.warning("replica %s: /metrics without the alert figures: replica %s did not give them: %s",
                            self.replica, leader.replica, exc)
                return NO_FIGURES
        log.warning("replica %s: /metrics without the alert figures: %s", self.replica, self.why_no_leader())
        return NO_FIGURES

    def _answer_alert_figures(self, _body: dict[str, Any]) -> dict[str, Any]:
        if not self.leading:
            return {"leading": False}
        return {"leading": True, **AlertFigures.of(self.services.alerts).as_dict()}

    # -- booking holds on every replica ----------------------------------------------------------
    def _holds_changed(self) -> None:
        if self.leading:
            self._spawn(self._say_holds_changed())

    async def _say_holds_changed(self) -> None:
        with contextlib.suppress(BusError):  # the others reread at their next gap
            await self.services.cluster.bus.publish(HOLDS_CHANNEL, {"from": self.replica, "holds": time.time()})

    def _on_holds(self, message: dict[str, Any]) -> None:
        if message.get("from") != self.replica and not self.leading:
            self._spawn(self._reload_holds())

    async def _reload_holds(self) -> None:
        calendar = self.services.calendar
        try:
            calendar.holds.load(await calendar.queries.live_holds(time.time()))
        except Exception:  # the next change or gap reads them again
            log.exception("replica %s: could not read the booking holds", self.replica)

    # -- life ------------------------------------------------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(work)

    async def close(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resender
        await self._lanes.close()
        await self._background.close()
