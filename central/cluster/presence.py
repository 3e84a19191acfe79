"""Presence shared between replicas (issue 18; docs/architecture.md "Several replicas").

Each node's session is held by one replica at a time. A hello commits the session in
`node_sessions` (replica, epoch + 1) in the same write as the node's facts; the registry keeps
the epoch (`NodeState.epoch`) and, once the session is greeted, the replica (`NodeState.replica`).
What a replica changes of a node goes to the others on `dvic_events`, gathered for `FLUSH_S`
into one message (`Outbox` in fanout.py): a node's *view*, whose `presence` part (liveness,
last_seen, metrics, demos, the session's replica and epoch) only the replica keeping the node's
presence sends (the one holding its session; anyone when no replica holds it), and whose `admin`
part (name, maintenance, revoked: stored by whoever changed them) anyone sends. Rules:

- a view with a lower epoch than the one known is stale: its presence part is ignored;
- a replica holding a greeted session that sees a newer epoch closes its session
  (CLOSE_REPLACED, "replaced by a newer session on replica X"), without an `offline`
  transition: the node is online elsewhere;
- `connected` is true while any replica holds a session (`send` stays the owner's);
- replicas heartbeat every `HEARTBEAT_S` (bus and `replicas` table) with the log lines their
  stream clients want; one silent for `SILENT_S`, or one that said it stops, no longer holds its
  nodes: they keep their state, their last_seen raised to its last heartbeat (they were
  connected then), until they reconnect elsewhere (a newer epoch) or the leader's orphan sweep
  (`sweep_orphans`, once-only) turns them offline `offline_after` later;
- after any gap on the bus, presence is read again from `nodes` and `node_sessions`;
- a stream client's wish for lines is numbered and acknowledged by every live replica, once the
  lines it accepted before applying the wish are committed (not relayed, they are then in
  history), before the client is told `subscribed`; a new session relays first what its
  previous replica stored but may not have relayed (`catch_up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dvic_core.constants import CLOSE_REPLACED, CLOSE_REVOKED

from .. import store
from ..queries import Queries
from ..registry import NodeState, Registry, _demo_view
from ..writer import Writer
from .fanout import EVENTS, LOGS, Outbox, SharedBus
from .replica import Cluster

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
SILENT_S = 3.0
INTEREST_WAIT_S = 2.0
# A new session's catch-up of lines stored by its previous replica and perhaps never relayed:
# beyond this many, the stream clients read the history (as after any gap).
CATCH_UP_MAX = 5000


@dataclass
class Peer:
    """Another replica as heard on the bus."""
    name: str
    heard: float  # monotonic time of its last message
    heartbeat_at: float  # its clock at its last heartbeat (wall time: last_seen of its nodes)
    logs: frozenset[str] = frozenset()  # node ids (or "*") whose lines its stream clients want
    interest: int = 0  # the number of its latest wish for lines, acknowledged to it
    clients: bool = False  # it has stream clients: frames built only for someone are built for them too
    gone: bool = False  # silent for SILENT_S, or stopped: holds no session
    said: dict[str, Any] | None = None  # what else its last heartbeat said (`announce`: e.g. what it leads)


class Presence:
    """This replica's side of shared presence; see the module's docstring."""

    def __init__(self, cluster: Cluster, registry: Registry, bus: SharedBus, writer: Writer, queries: Queries,
                 *, heartbeat_s: float = HEARTBEAT_S, silent_s: float = SILENT_S) -> None:
        self.replica = cluster.replica
        self.cluster = cluster
        self.registry = registry
        self.bus = bus
        self.writer = writer
        self.queries = queries
        self.heartbeat_s = heartbeat_s
        self.silent_s = silent_s
        self.peers: dict[str, Peer] = {}
        self.stopping = False
        self.outbox = Outbox(cluster.bus, self.replica, self._view)
        self._tasks: list[asyncio.Task[None]] = []
        self._learning: set[str] = set()
        # Every node's lines wanted here for a job this replica leads (the alert engine's log rules),
        # and who is given the lines other replicas send then.
        self.jobs_want_lines: Callable[[], bool] = lambda: False
        self.line_observers: list[Callable[[NodeState, list[dict[str, Any]]], None]] = []
        # What else this replica's heartbeat says (what it leads: central/cluster/features.py), and
        # who else is given the live frames of other replicas.
        self.announce: list[Callable[[], dict[str, Any]]] = []
        self.frame_observers: list[Callable[[dict[str, Any]], None]] = []
        # Who is told a replica is gone (its name): it holds nothing any more (conns.py).
        self.peer_observers: list[Callable[[str], None]] = []
        # Our wishes for lines are numbered; each peer acknowledges the latest it has applied.
        self._interest = 0
        self._acked: dict[str, int] = {}
        self._acked_changed = asyncio.Event()
        if cluster.shared:  # (one server: nobody to send to, and nothing would send what is queued)
            bus.attach(self)
        cluster.bus.subscribe(EVENTS, self._on_events)
        cluster.bus.subscribe(LOGS, self._on_logs)
        cluster.bus.on_gap(self._on_gap)

    # -- life ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """After the bus listens: say this replica started, read who holds what, then heartbeat."""
        await self.writer.submit(store.replica_heartbeat(self.replica, time.time(), started=True))
        await self.reload()
        self.outbox.start()
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="dvic-presence-heartbeat"))

    async def stop(self) -> None:
        """A clean stop: the others hear it at once (its nodes reconnect elsewhere, none is turned
        offline here as its sessions close)."""
        if self.stopping or not self.cluster.shared:
            return
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # the database away: the others see the silence instead
            await self.writer.submit(store.replica_stopped(self.replica, time.time()))
        await self.outbox.close(final={"stopping": True})

    # -- node sessions (called by the node websocket) ---------------------------------------------
    def session_greeted(self, node: NodeState, epoch: int) -> bool:
        """The session of `epoch` on this replica is greeted: False if a newer one exists already."""
        if node.epoch > epoch:
            return False
        node.replica = self.replica
        return True

    async def session_ended(self, node: NodeState, epoch: int) -> bool:
        """The session of `epoch` on this replica ended: should the registry hear of it (and the node
        perhaps go offline)? Not when a newer session took over, nor while this replica stops."""
        if not self.cluster.shared:
            node.replica = ""
            return True
        if epoch and node.epoch != epoch:
            return False  # replaced by a newer session (here or elsewhere): that one keeps the node
        if not epoch and node.replica not in ("", self.replica):
            return False  # never greeted, and the node is held by another replica
        node.replica = ""
        if self.stopping:
            return False
        if epoch:
            await self.writer.submit(store.end_session(node.id, epoch))
        return True

    async def catch_up(self, node: NodeState, last_seq: int) -> None:
        """A session greeted here: the lines the node's previous replica stored but may not have
        relayed (it died before its outbox left) go to the stream clients that want them, here and
        on the others (each shows a line once, after its own high-water mark)."""
        behind = last_seq - node.published_seq
        if not self.cluster.shared or behind <= 0 or node.published_seq == 0:
            return  # nothing shown of this node yet: its clients read its history
        if behind <= CATCH_UP_MAX and self.bus.wants_logs(node.id):
            lines = await self.queries.lines_after(node.id, node.published_seq, behind)
            for line in lines:
                line.update(node=node.id, node_name=node.name)
            fresh = [line for line in lines if line["seq"] > node.published_seq]
            if fresh:
                node.published_seq = fresh[-1]["seq"]
                self.bus.publish_logs(node.id, fresh)

    def holds(self, node: NodeState) -> bool:
        """This replica holds the node's session: its own sweep keeps its presence."""
        return node.send is not None

    def orphaned(self, node: NodeState) -> bool:
        """No live replica holds the node's session: the leader's orphan sweep keeps its presence."""
        if node.send is not None:
            return False
        if node.replica in ("", self.replica):
            return True
        peer = self.peers.get(node.replica)
        return peer is not None and peer.gone

    async def sweep_orphans(self) -> None:
        """The once-only job: turn offline the nodes nobody holds, silent for offline_after."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.registry.sweep(owns=self.orphaned)
            except asyncio.CancelledError:
                raise
            except Exception:  # a storage error must not end the job
                log.exception("orphan presence sweep failed")

    # -- what goes out ---------------------------------------------------------------------------
    def _view(self, node_id: str) -> dict[str, Any] | None:
        node = self.registry.get(node_id)
        if node is None:
            return None
        view: dict[str, Any] = {"id": node.id, "admin": {"name": node.name, "maintenance": node.maintenance,
                                                         "revoked": node.revoked}}
        if node.send is not None or not node.replica:  # this replica keeps the node's presence
            view["presence"] = self.outbox.presence_of(node, self.replica)
        return view

    def wants(self) -> list[str]:
        """Node ids (or "*") whose lines this replica wants: its stream clients', or all for a job."""
        return ["*"] if self.jobs_want_lines() else sorted(self.bus.local_interest())

    def beat_now(self) -> None:
        """A heartbeat at once (what this replica leads changed: central/cluster/features.py)."""
        self._beat()

    def remote_wants(self, node_id: str) -> bool:
        return any(not p.gone and ("*" in p.logs or node_id in p.logs) for p in self.peers.values())

    def remote_audience(self) -> bool:
        """Another live replica has stream clients (frames built only for someone: deployments,
        demo statuses)."""
        return any(p.clients and not p.gone for p in self.peers.values())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self._beat()
            self._find_silent()
            try:
                await self.writer.submit(store.replica_heartbeat(self.replica, time.time()))
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus heartbeat still goes
                log.warning("replica %s: heartbeat not stored", self.replica, exc_info=True)

    # -- what comes in ---------------------------------------------------------------------------
    def _on_events(self, message: dict[str, Any]) -> None:
        sender = str(message.get("from") or "")
        if not sender or sender == self.replica:
            return  # our own, delivered back
        peer = self._heard(sender)
        beat = message.get("beat")
        if isinstance(beat, dict):
            peer.heartbeat_at = float(beat.get("at") or time.time())
            peer.logs = frozenset(str(x) for x in beat.get("logs") or ())
            peer.clients = bool(beat.get("clients"))
            peer.said = beat
            interest = int(beat.get("interest") or 0)
            if interest != peer.interest:  # applied from now on: tell it, so its client may rely on it
                peer.interest = interest
                self.outbox.spawn(self._ack_once_stored(sender, interest))
        acked = (message.get("acks") or {}).get(self.replica)
        if isinstance(acked, int):
            self._acked[sender] = acked
            self._acked_changed.set()
        for view in message.get("views") or ():
            self._apply(sender, view)
        for frame in message.get("frames") or ():
            self._show(frame)
        if message.get("stopping"):
            self._peer_gone(peer, "stopped")

    async def _ack_once_stored(self, sender: str, interest: int) -> None:
        """Acknowledge a wish for lines once the lines accepted here before it applied are stored:
        those were not relayed, and the client told `subscribed` then reads them from history."""
        try:
            await self.writer.barrier()
        except Exception as exc:  # not stored yet either way (the nodes send them again): do not hold the client
            log.warning("replica %s: acknowledging replica %s's wish for lines before earlier lines were stored: %s",
                        self.replica, sender, exc)
        self.outbox.ack(sender, interest)

    def _heard(self, name: str) -> Peer:
        peer = self.peers.get(name)
        if peer is None:
            peer = self.peers[name] = Peer(name, time.monotonic(), time.time())
            log.info("replica %s: heard of replica %s", self.replica, name)
        peer.heard = time.monotonic()
        if peer.gone:
            log.info("replica %s: replica %s is back", self.replica, name)
            peer.gone = False
        return peer

    def _find_silent(self) -> None:
        now = time.monotonic()
        for peer in self.peers.values():
            if not peer.gone and now - peer.heard > self.silent_s:
                self._peer_gone(peer, f"silent for {now - peer.heard:.1f} s")

    def _peer_gone(self, peer: Peer, why: str) -> None:
        """`peer` holds no session any more: its nodes keep their state, seen until its last beat."""
        peer.gone = True
        peer.logs = frozenset()
        peer.clients = False
        held = [n for n in self.registry.all() if n.replica == peer.name and n.send is None]
        log.warning("replica %s: replica %s %s: its %d node(s) are held by none until they reconnect",
                    self.replica, peer.name, why, len(held))
        for observe in self.peer_observers:
            observe(peer.name)
        for node in held:
            node.replica = ""
            node.last_seen = max(node.last_seen or 0.0, peer.heartbeat_at)
            self._show_node(node)

    def _apply(self, sender: str, view: dict[str, Any]) -> None:
        node = self.registry.get(str(view.get("id")))
        if node is None:
            self._learn(str(view.get("id")), sender, view)
            return
        self._apply_admin(node, view.get("admin") or {})
        presence = view.get("presence")
        if isinstance(presence, dict):
            self._apply_presence(node, sender, presence)
        self._show_node(node)

    def _apply_admin(self, node: NodeState, admin: dict[str, Any]) -> None:
        name = admin.get("name")
        if isinstance(name, str) and name and name != node.name:
            self.registry.renamed(node, name)
        if "maintenance" in admin:
            node.maintenance = bool(admin["maintenance"])
        if admin.get("revoked") and not node.revoked:
            node.revoked = True
            if node.disconnect is not None:
                node.disconnect(CLOSE_REVOKED, "node revoked")

    def _apply_presence(self, node: NodeState, sender: str, p: dict[str, Any]) -> None:
        epoch = int(p.get("epoch") or 0)
        if epoch < node.epoch:
            return  # an older session's news
        if node.send is not None:
            if epoch == node.epoch:
                self.outbox.node_changed(node.id)  # ours is the truth for our session: say it again
                return
            holder = str(p.get("replica") or sender)
            log.info("node %s: a newer session (%d) on replica %s: closing this one (%d)",
                     node.name, epoch, holder, node.epoch)
            if node.disconnect is not None:
                node.disconnect(CLOSE_REPLACED, f"replaced by a newer session on replica {holder}")
        node.epoch = epoch
        holder = str(p.get("replica") or "")
        peer = self.peers.get(holder)
        node.replica = "" if peer is not None and peer.gone and holder != sender else holder
        node.liveness = str(p.get("liveness") or node.liveness)
        node.state_since = float(p.get("state_since") or node.state_since)
        seen = p.get("last_seen")
        if isinstance(seen, (int, float)):
            node.last_seen = max(node.last_seen or 0.0, float(seen))
        node.metrics = dict(p.get("metrics") or node.metrics)
        sample = p.get("sample")
        if sample and isinstance(sample, dict):  # (none: the one kept stays, not decoded and stored again)
            node.sample = sample
        if isinstance(p.get("clock_skew"), (int, float)):
            node.clock_skew = float(p["clock_skew"])
        node.daemon_version = str(p.get("daemon_version") or node.daemon_version)
        if isinstance(p.get("facts"), dict):
            node.facts = p["facts"]
        if isinstance(p.get("demos"), dict):
            node.demos = {t: _demo_view(d) for t, d in p["demos"].items()}
            node.demo_seen = {t: float(s) for t, s in (p.get("demo_seen") or {}).items()}

    def _show(self, frame: dict[str, Any]) -> None:
        """Another replica's live frame (an event, an alert, a deployment) to our stream clients."""
        self.bus.publish_local(frame)
        for observe_frame in self.frame_observers:
            observe_frame(frame)
        if frame.get("type") == "event":
            event = frame.get("event") or {}
            node = self.registry.get(str(event.get("node") or "")) if event.get("node") else None
            for observe in self.registry.event_observers:
                with contextlib.suppress(Exception):
                    observe(node, str(event.get("kind")), event.get("data") or {})

    def _show_node(self, node: NodeState) -> None:
        self.bus.publish_local({"type": "node", "node": node.summary()})

    def _learn(self, node_id: str, sender: str, view: dict[str, Any]) -> None:
        """A node enrolled on another replica: read it from the table, then apply its view."""
        if node_id in self._learning or not node_id:
            return
        self._learning.add(node_id)

        async def learn() -> None:
            try:
                row = await self.queries.node(node_id)
                if row is not None and self.registry.get(node_id) is None:
                    self.registry.load([row], await self.queries.demos(node_id))
                if self.registry.get(node_id) is not None:
                    self._apply(sender, view)
            except Exception:
                log.exception("replica %s: could not read node %s", self.replica, node_id)
            finally:
                self._learning.discard(node_id)

        self.outbox.spawn(learn())

    def _on_logs(self, message: dict[str, Any]) -> None:
        if message.get("from") == self.replica:
            return
        for node_id, lines in (message.get("lines") or {}).items():
            node = self.registry.get(node_id)
            if node is None:
                continue
            fresh = [line for line in lines if line["seq"] > node.published_seq]
            if fresh:
                node.published_seq = max(line["seq"] for line in fresh)
                self.bus.publish_logs_local(node_id, fresh)
                if self.jobs_want_lines():
                    for observe in self.line_observers:
                        observe(node, fresh)

    def _on_gap(self) -> None:
        self.outbox.spawn(self.reload())
        self._beat()

    def _beat(self) -> None:
        beat: dict[str, Any] = {"at": time.time(), "logs": self.wants(), "interest": self._interest,
                                "clients": self.bus.subscriber_count > 0}
        for say in self.announce:
            beat.update(say())
        self.outbox.beat(beat)

    async def announce_interest(self, timeout: float = INTEREST_WAIT_S) -> None:
        """Tell the other replicas which lines this one wants now, and wait (at most `timeout`) until
        every live one has applied it: a stream client told `subscribed` gets every line from then
        on, as on one server, whichever replica holds the node."""
        self._interest += 1
        wanted = self._interest
        self._beat()
        deadline = time.monotonic() + timeout
        while any(not p.gone and self._acked.get(p.name, 0) < wanted for p in self.peers.values()):
            self._acked_changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("replica %s: not every replica acknowledged a stream client's lines within %.0f s",
                            self.replica, timeout)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked_changed.wait(), left)

    async def reload(self) -> None:
        """Read presence again from the tables (at start, after a gap): the nodes others enrolled,
        who holds which session, each node's stored state."""
        rows = await self.queries.nodes()
        sessions = {s["node_id"]: s for s in await self.queries.sessions()}
        now = time.time()
        for row in rows:
            node = self.registry.get(row["id"])
            if node is None:
                self.registry.load([row], await self.queries.demos(row["id"]))
                node = self.registry.get(row["id"])
                if node is None:
                    continue
            self._apply_admin(node, {"name": row["name"], "maintenance": bool(row["maintenance"]),
                                     "revoked": row["revoked_at"] is not None})
            session = sessions.get(node.id)
            if node.send is not None or (session is not None and int(session["epoch"]) < node.epoch):
                continue
            alive = session is not None and self._session_alive(session, now)
            if session is not None:
                node.epoch = int(session["epoch"])
                node.replica = str(session["replica"]) if alive else ""
            # The stored state, but "online" only while a replica holds the session (as one server
            # restarting shows none online): a node nobody holds is then the orphan sweep's.
            if alive or row["state"] != "online":
                node.liveness = str(row["state"])
                node.state_since = float(row["state_since"] or node.state_since)
                node.last_seen = max(node.last_seen or 0.0, float(row["last_seen"] or 0.0))
            self._show_node(node)

    def _session_alive(self, session: dict[str, Any], now: float) -> bool:
        replica = str(session["replica"] or "")
        if not replica or replica == self.replica or session["stopped_at"] is not None:
            return False
        return session["heartbeat_at"] is not None and now - float(session["heartbeat_at"]) <= self.silent_s
