"""The live state map of every node: the one owner of presence (online/offline/maintenance/failed).

State rules (docs/architecture.md, "Presence"):
- a node is *online* while it was heard from (any websocket message, pong or keep-alive) within
  `offline_after` seconds; a sweep turns silent nodes *offline*;
- a websocket that closes turns the node offline at once unless a keep-alive arrived recently;
- *failed* is reported by the node itself (event kind `failed`) until it recovers or says hello;
- *maintenance* is set by an operator and overrides how the node is shown.
Every change of the shown state is stored as an event and pushed to live clients.
"""

from __future__ import annotations

import asyncio
import json
import marshal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dvic_core.constants import CLOSE_REVOKED

from . import store
from .bus import Bus
from .nodelimits import NodeLimits
from .writer import Writer

SUMMARY_METRICS = ("cpu", "mem", "disk", "temp", "load1")
# Metrics and demo updates reach live clients at most once per node per window (the latest wins):
# a node sending faster than that costs every console one frame per window, not one per message.
PUBLISH_WINDOW_S = 0.5
# The node detail lists at most this many demos (running ones first); `demos.total` counts them all.
DEMOS_LIST_MAX = 200


@dataclass(eq=False)
class NodeState:
    id: str
    name: str
    kind: str
    group: str
    created_at: float
    cert_fp: str
    token_hash: str
    revoked: bool = False
    maintenance: bool = False
    liveness: str = "new"  # new | online | offline | failed
    state_since: float = 0.0
    last_seen: float | None = None
    last_keepalive: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)
    daemon_version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    # The latest metrics sample as sent, marshalled (`sample` reads it): its dicts, lists and
    # numbers took 3.1 KB a node, the bytes 0.5 KB; marshal takes 1.5 us a sample where JSON takes
    # 7.5 (the bytes never leave this process, and hold only what a validated JSON message holds).
    sample_data: bytes = b""
    # Its one field the server reads (the pi_throttled alert, every pass over every node), kept
    # beside it so that reading it decodes nothing.
    throttled: str | None = None
    # The node's clock minus the server's when its latest metrics sample arrived (seconds).
    clock_skew: float | None = None
    demos: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Server time of each demo's latest message: what forgetting and eviction go by.
    demo_seen: dict[str, float] = field(default_factory=dict)
    # What the node may still send (created on first use: Registry.limits).
    limits: NodeLimits | None = None
    # When the node's summary last went to live clients, and the publication waiting for its window.
    published_at: float = 0.0
    publish_timer: asyncio.TimerHandle | None = None
    # Highest log seq handed to live subscribers: a resent line is not shown twice.
    published_seq: int = 0
    # The live websocket handler's close callback and sender, set while the node is connected.
    disconnect: Callable[[int, str], None] | None = None
    send: Callable[[dict[str, Any]], Awaitable[bool]] | None = None
    replica: str = ""  # the replica holding the node's session ("" none); see central/cluster/presence
    epoch: int = 0  # that session's number (node_sessions.epoch): of two racing sessions the newer wins

    @property
    def sample(self) -> dict[str, Any]:
        """The latest metrics sample (a new dict on each read: change it by assigning a whole one)."""
        return marshal.loads(self.sample_data) if self.sample_data else {}

    @sample.setter
    def sample(self, sample: dict[str, Any]) -> None:
        self.sample_data = marshal.dumps(sample) if sample else b""
        throttled = sample.get("throttled")
        if isinstance(throttled, str):  # "0x0" from nearly every Pi: one string for them all
            self.throttled = sys.intern(throttled) if len(throttled) <= 16 else throttled
        else:
            self.throttled = None

    @property
    def connected(self) -> bool:
        """Greeted and able to take requests (a socket still before its hello does not count), here
        (`send`) or on another replica (`replica`, set from the moment the session is greeted)."""
        return self.send is not None or bool(self.replica)

    @property
    def state(self) -> str:
        return "maintenance" if self.maintenance else self.liveness

    def summary(self) -> dict[str, Any]:
        alive = sum(1 for d in self.demos.values() if d.get("state") != "exited")
        return {
            "id": self.id, "name": self.name, "kind": self.kind, "group": self.group,
            "state": self.state, "state_since": self.state_since, "last_seen": self.last_seen,
            "connected": self.connected, "daemon_version": self.daemon_version, "revoked": self.revoked,
            "metrics": {k: self.metrics[k] for k in SUMMARY_METRICS if k in self.metrics},
            "demos": {"alive": alive, "total": len(self.demos)},
        }

    def detail(self) -> dict[str, Any]:
        out = self.summary()
        out.update(
            facts=self.facts, sample=self.sample, created_at=self.created_at,
            demos_list=self.demos_list(), all_metrics=self.metrics,
        )
        return out

    def demos_list(self) -> list[dict[str, Any]]:
        """At most DEMOS_LIST_MAX demos, running ones and then the latest heard of, by start time."""
        shown = list(self.demos.values())
        if len(self.demos) > DEMOS_LIST_MAX:
            shown = sorted(shown, key=lambda d: (d.get("state") != "exited", self.demo_seen.get(d["token"], 0.0)),
                           reverse=True)[:DEMOS_LIST_MAX]
        return sorted(shown, key=lambda d: d.get("started_at") or 0)


class Registry:
    def __init__(self, writer: Writer, bus: Bus, offline_after: float, keepalive_interval: float,
                 max_demos: int = 128, forget_demos_after: float = 24 * 3600) -> None:
        self.writer = writer
        self.bus = bus
        self.offline_after = offline_after
        self.keepalive_interval = keepalive_interval
        self.max_demos = max_demos
        self.forget_demos_after = forget_demos_after
        self._next_forget = 0.0
        self._by_id: dict[str, NodeState] = {}
        self._by_name: dict[str, NodeState] = {}
        self._by_fp: dict[str, NodeState] = {}
        self._by_token: dict[str, NodeState] = {}
        # Called with every event stored (state changes, the node's own events): the alert engine.
        self.event_observers: list[Callable[[NodeState | None, str, dict[str, Any]], None]] = []

    # -- loading and lookups -------------------------------------------------------------------
    def load(self, rows: list[dict[str, Any]], demos: list[dict[str, Any]]) -> None:
        for row in rows:
            self._index(_node_from_row(row))
        for demo in demos:
            owner = self._by_id.get(demo["node_id"])
            if owner is not None:
                owner.demos[demo["token"]] = _demo_view(demo)
                owner.demo_seen[demo["token"]] = demo["updated_at"]

    def _index(self, node: NodeState) -> None:
        self._by_id[node.id] = node
        self._by_name[node.name] = node
        if node.cert_fp:
            self._by_fp[node.cert_fp] = node
        if node.token_hash:
            self._by_token[node.token_hash] = node

    def add(self, node: NodeState) -> None:
        self._index(node)
        self.bus.publish({"type": "node", "node": node.summary()})

    async def rename(self, node: NodeState, new_name: str) -> None:
        await self.writer.submit(store.rename_node(node.id, new_name))
        self.renamed(node, new_name)
        self.publish(node)

    def renamed(self, node: NodeState, new_name: str) -> None:
        """The node's name is `new_name` from now on (stored already)."""
        if self._by_name.get(node.name) is node:
            del self._by_name[node.name]
        node.name = new_name
        self._by_name[new_name] = node

    def all(self) -> list[NodeState]:
        return sorted(self._by_id.values(), key=lambda n: n.name)

    def get(self, ref: str) -> NodeState | None:
        return self._by_id.get(ref) or self._by_name.get(ref)

    def by_fingerprint(self, fp: str) -> NodeState | None:
        """The node holding this certificate (revoked ones too: callers check `revoked`)."""
        return self._by_fp.get(fp)

    def by_token_hash(self, token_hash: str) -> NodeState | None:
        return self._by_token.get(token_hash)

    def __len__(self) -> int:
        return len(self._by_id)

    # -- transitions ---------------------------------------------------------------------------
    async def _transition(self, node: NodeState, liveness: str, now: float, reason: str = "") -> None:
        before = node.state
        node.liveness = liveness
        after = node.state
        if before == after:
            return
        node.state_since = now
        message = f"{before} -> {after}" + (f": {reason}" if reason else "")
        data = {"from": before, "to": after, **({"reason": reason} if reason else {})}
        await self.record_event(node, "state", message, data, now,
                                also=store.save_presence(node.id, node.liveness, now, node.last_seen))
        self.publish(node)

    async def record_event(self, node: NodeState | None, kind: str, message: str, data: dict[str, Any],
                           now: float | None = None, also: store.WriteFn | None = None) -> int:
        """Store an event (and `also`, in the same commit), then push it to live clients."""
        ts = time.time() if now is None else now
        node_id = node.id if node else ""
        event_id = int(await self.writer.submit(store.after(also, store.insert_event(ts, node_id, kind, message, data))))
        for observe in self.event_observers:
            observe(node, kind, data)
        self.bus.publish({"type": "event", "event": {
            "id": event_id, "ts": ts, "node": node_id, "node_name": node.name if node else None,
            "kind": kind, "message": message, "data": data,
        }})
        return event_id

    def publish(self, node: NodeState) -> None:
        if node.publish_timer is not None:  # this one carries the latest: the waiting one is not needed
            node.publish_timer.cancel()
            node.publish_timer = None
        node.published_at = time.monotonic()
        self.bus.publish({"type": "node", "node": node.summary()})

    def publish_soon(self, node: NodeState) -> None:
        """Publish now, or at the end of the node's publication window (the latest state then wins)."""
        if node.publish_timer is not None:
            return
        wait = node.published_at + PUBLISH_WINDOW_S - time.monotonic()
        if wait <= 0:
            self.publish(node)
        else:
            node.publish_timer = asyncio.get_running_loop().call_later(wait, self._publish_waiting, node)

    def _publish_waiting(self, node: NodeState) -> None:
        node.publish_timer = None
        self.publish(node)

    def limits(self, node: NodeState, now: float) -> NodeLimits:
        if node.limits is None:
            node.limits = NodeLimits.for_interval(self.keepalive_interval, now)
        return node.limits

    async def heard(self, node: NodeState, now: float | None = None) -> None:
        """Any sign of life: refresh last_seen, come back online if the node was not."""
        now = time.time() if now is None else now
        node.last_seen = now
        if node.liveness in ("new", "offline"):
            await self._transition(node, "online", now)

    async def keepalive(self, node: NodeState, now: float | None = None) -> None:
        now = time.time() if now is None else now
        node.last_keepalive = now
        await self.heard(node, now)

    async def hello(self, node: NodeState, facts: dict[str, Any], daemon_version: str, replica: str = "") -> int:
        """A new session of the node, on `replica`: returns its epoch (also in `node.epoch`)."""
        node.facts = facts
        node.daemon_version = daemon_version
        now = time.time()
        epoch = int(await self.writer.submit(store.save_hello(node.id, facts, daemon_version, replica, now)))
        node.epoch = max(node.epoch, epoch)
        now = time.time()
        node.last_seen = now
        # A hello is a fresh start: a node that had reported itself failed is online again.
        await self._transition(node, "online", now)
        self.publish(node)
        return epoch

    async def report_failed(self, node: NodeState, reason: str) -> None:
        await self._transition(node, "failed", time.time(), reason)

    async def report_recovered(self, node: NodeState) -> None:
        if node.liveness == "failed":
            await self._transition(node, "online", time.time(), "recovered")

    async def disconnected(self, node: NodeState, reason: str) -> None:
        now = time.time()
        # Keep-alives (ESP32-style, or the daemon's HTTP ones) still vouch for the node.
        if now - node.last_keepalive > self.keepalive_interval * 1.5 and node.liveness == "online":
            await self._transition(node, "offline", now, reason)
        else:
            self.publish(node)

    async def set_maintenance(self, node: NodeState, on: bool, by: str) -> None:
        if node.maintenance == on:
            return
        await self.writer.submit(store.set_maintenance(node.id, on))
        before = node.state
        node.maintenance = on
        now = time.time()
        node.state_since = now
        await self.record_event(node, "state", f"{before} -> {node.state} (by {by})",
                                {"from": before, "to": node.state, "by": by}, now)
        self.publish(node)

    async def revoke(self, node: NodeState, by: str) -> None:
        now = time.time()
        await self.writer.submit(store.revoke_node(node.id, now))
        node.revoked = True
        if node.disconnect is not None:
            node.disconnect(CLOSE_REVOKED, "node revoked")
        await self.record_event(node, "revoked", f"revoked by {by}", {"by": by}, now)
        if node.liveness == "online":
            await self._transition(node, "offline", now, "revoked")
        self.publish(node)

    async def sweep(self, now: float | None = None, owns: Callable[[NodeState], bool] | None = None) -> None:
        """Turn nodes that have been silent for longer than offline_after offline; forget old demos.
        `owns`: only the nodes whose presence this caller keeps (replicas: central/cluster/presence.py)."""
        now = time.time() if now is None else now
        for node in list(self._by_id.values()):
            if owns is not None and not owns(node):
                continue
            if node.liveness == "online" and (node.last_seen or 0) < now - self.offline_after:
                silent = now - (node.last_seen or now)
                await self._transition(node, "offline", now, f"silent for {silent:.0f} s")
        if now >= self._next_forget:
            # A tenth of the age, at most a minute apart: a demo is forgotten soon after its time.
            self._next_forget = now + min(60.0, max(1.0, self.forget_demos_after / 10))
            await self.forget_demos(now)

    # -- data from the node --------------------------------------------------------------------
    def set_metrics(self, node: NodeState, sample: dict[str, Any] | None, series: dict[str, float]) -> None:
        """The node's latest metrics: its `sample` as sent (None: no new one, a keep-alive's series)."""
        if sample is not None:
            if isinstance(sample.get("ts"), (int, float)):
                node.clock_skew = sample["ts"] - time.time()
            node.sample = sample
        node.metrics.update(series)
        self.publish_soon(node)

    # -- demos: at most max_demos per node, exited ones forgotten after forget_demos_after -------
    def demo_room(self, node: NodeState, token: str) -> tuple[bool, str | None]:
        """May `token` be recorded, and which demo makes room for it?

        (True, None): known, or under the cap; (True, victim): the exited demo heard of longest
        ago gives its place; (False, None): the cap is full of running demos.
        """
        if token in node.demos or len(node.demos) < self.max_demos:
            return True, None
        exited = [t for t, d in node.demos.items() if d.get("state") == "exited"]
        if not exited:
            return False, None
        return True, min(exited, key=lambda t: node.demo_seen.get(t, 0.0))

    def exited_long_ago(self, demo: dict[str, Any], now: float) -> bool:
        """An exit older than the forget age (a daemon announces exits of the last 24 h at each
        connection): not worth recording again once forgotten."""
        exited_at = demo.get("exited_at")
        return demo["state"] == "exited" and exited_at is not None and exited_at < now - self.forget_demos_after

    def set_demo(self, node: NodeState, demo: dict[str, Any], now: float, evicted: str | None = None) -> None:
        if evicted is not None:
            node.demos.pop(evicted, None)
            node.demo_seen.pop(evicted, None)
        view = _demo_view(demo)
        if view["last_heartbeat"] is None:  # a state message that says nothing of it keeps what we knew
            view["last_heartbeat"] = (node.demos.get(demo["token"]) or {}).get("last_heartbeat")
        node.demos[demo["token"]] = view
        node.demo_seen[demo["token"]] = now
        self.publish_soon(node)

    async def forget_demos(self, now: float) -> None:
        """Forget exited demos last heard of before the forget age, and trim nodes above the cap
        (a lowered --max-demos, or a table filled before there was one), in memory and in the table."""
        cutoff = now - self.forget_demos_after
        aged = False
        trimmed: dict[str, list[str]] = {}
        for node in self._by_id.values():
            old = [t for t, d in node.demos.items()
                   if d.get("state") == "exited" and node.demo_seen.get(t, 0.0) < cutoff]
            for token in old:
                del node.demos[token]
                node.demo_seen.pop(token, None)
            over = len(node.demos) - self.max_demos
            if over > 0:  # exited ones first, then the ones heard of longest ago
                order = sorted(node.demos, key=lambda t: (node.demos[t].get("state") != "exited",
                                                          node.demo_seen.get(t, 0.0)))
                trimmed[node.id] = order[:over]
                for token in trimmed[node.id]:
                    del node.demos[token]
                    node.demo_seen.pop(token, None)
            if old or over > 0:
                aged = aged or bool(old)
                self.publish_soon(node)
        if aged:  # the same rule in the table (its updated_at is the demo_seen kept here)
            await self.writer.submit(store.forget_exited_demos(cutoff))
        for node_id, tokens in trimmed.items():
            await self.writer.submit(store.forget_demos(node_id, tokens))


def _node_from_row(row: dict[str, Any]) -> NodeState:
    return NodeState(
        id=row["id"], name=row["name"], kind=row["kind"], group=row["grp"],
        created_at=row["created_at"], cert_fp=row["cert_fp"] or "", token_hash=row["token_hash"] or "",
        revoked=row["revoked_at"] is not None, maintenance=bool(row["maintenance"]),
        # After a server restart nobody is connected yet: what was online is offline now.
        liveness="new" if row["state"] == "new" else ("failed" if row["state"] == "failed" else "offline"),
        state_since=row["state_since"] or row["created_at"], last_seen=row["last_seen"],
        facts=json.loads(row["facts"] or "{}"), daemon_version=row["daemon_version"] or "",
    )


def _demo_view(demo: dict[str, Any]) -> dict[str, Any]:
    return {k: demo.get(k) for k in ("token", "name", "pid", "state", "started_at", "exited_at", "header",
                                     "last_heartbeat")}
