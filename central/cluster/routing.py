"""Commands, shells, tunnels and actions for a node connected to another replica (issue 18 step 5;
docs/architecture.md "Several replicas: routing").

The operator's replica R keeps everything about the run, shell, tunnel or action (its record, the
recording, the audit, the operator's websocket); the replica O holding the node's session only
passes messages: R's node-bound messages go on O's channel, O hands them to the node and sends the
node's answers for that id back on R's channel, where R's hub takes them as if the node had sent
them. The hubs never look at where a node is: they call `Route.open` (the message that starts
something, answered `sent` or why not) and `Route.send` (everything after), which is the node's
own session when it is here.

Messages on `dvic_r_<replica>` (PgBus), keyed `route`:
- `to_node` R -> O: {node, rid, n, msg, from, ack?}: `ack` asks O to say whether it was sent;
- `ack` O -> R: {ack, sent, why, owner}: `owner` is where O believes the node went;
- `from_node` O -> R: {node, rid, n, msg, bytes}: `bytes` names the fields that were bytes (base64);
- `ended` either way: {rids, why}: the other side's relays of those ids are over;
- `deliver` any -> O: {node, msg}: one message for the node, no relay, no answer (`Router.deliver`).
`n` numbers each relay's messages in each direction: a number skipped means bytes were lost between
the replicas, and the relay ends with a message instead of going on corrupted. Every PING_S each
replica asks every replica it relays with (request `routing_ping`) which ids it still has and how
many messages it got for each: no answer twice in a row means that replica stopped, and its relays
end ("the replica relaying this session (O) stopped"); O, for its part, closes the shells and
tunnels it opened for a requester that stopped, and cancels its commands.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dvic_core.constants import ACTION_FINAL

from ..commands import MAX_RUNNING_PER_NODE
from ..registry import NodeState
from ..shells import MAX_SESSIONS_PER_NODE
from ..tunnels import MAX_TUNNELS_PER_NODE
from .pgbus import BusError, NoReply, channel_of
from .route import LOCAL, Refusal

if TYPE_CHECKING:
    from ..actions import ActionHub
    from ..commands import CommandHub
    from ..shells import ShellHub
    from ..tunnels import TunnelHub

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 2.0
PING_S = 1.5
LOOK_S = 0.5  # how often the replicas relayed with are looked up in shared presence (gone?)
PING_TIMEOUT_S = 2.0
MISSES_BEFORE_GONE = 2  # one slow answer on a busy machine must not end every shell
PING = "routing_ping"

# The node messages that end a relay on the node's side: nothing more comes for that id after them.
FINAL_FROM_NODE = {"exec_exit", "shell_exit", "tunnel_closed", "unsupported"}
# Sent to the node when the replica that asked for a relay stopped: the node ends what it opened.
CLOSE_FOR = {"commands": "cancel", "shells": "shell_close", "tunnels": "tunnel_close"}




class Hubs(Protocol):
    """What the router delivers to on the requesting side (central/services.py wires the hubs)."""

    def holds(self, hub: str, rid: str) -> bool: ...
    async def deliver(self, hub: str, node: NodeState, msg: dict[str, Any]) -> None: ...
    async def ended(self, hub: str, rid: str, why: str) -> None: ...
    def refusal(self, hub: str, node: NodeState, relayed: int) -> str | None: ...
    async def close(self) -> None: ...


class Bus(Protocol):
    replica: str

    def subscribe(self, channel: str, handler: Callable[[dict[str, Any]], None]) -> None: ...
    def responder(self, kind: str, answer: Callable[[dict[str, Any]], Any]) -> None: ...
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    async def request(self, replica: str, kind: str, message: dict[str, Any],
                      timeout: float = ...) -> dict[str, Any]: ...


@dataclass(eq=False)
class Relay:
    """One relay as one side sees it: `peer` is the replica holding the node (on the requesting
    side, in `Router.remote`) or the one that asked (on the node's side, in `Router.relayed`);
    the messages numbered so far each way."""
    peer: str
    node_id: str
    hub: str
    sent: int = 0
    received: int = 0


class Lanes:
    """Work run one item at a time per key, in the order given (a node's messages stay in order,
    as on its own websocket), different keys side by side."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Callable[[], Awaitable[None]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def put(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            task = asyncio.get_running_loop().create_task(self._drain(key, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait(work)

    async def _drain(self, key: str, queue: asyncio.Queue[Callable[[], Awaitable[None]]]) -> None:
        try:
            while not queue.empty():
                work = queue.get_nowait()
                try:
                    await work()
                except Exception:
                    log.exception("routing: a relayed message for %s failed", key)
        finally:
            self._queues.pop(key, None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _encode(msg: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A node message as JSON can carry it: bytes fields (shell and tunnel data) as base64."""
    names = [k for k, v in msg.items() if isinstance(v, bytes)]
    if not names:
        return msg, names
    return {k: base64.b64encode(v).decode() if k in names else v for k, v in msg.items()}, names


def _decode(msg: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {k: base64.b64decode(v) if k in names else v for k, v in msg.items()}


def _final(hub: str, msg: dict[str, Any]) -> bool:
    kind = msg.get("type")
    if kind in FINAL_FROM_NODE:
        return True
    return hub == "actions" and kind == "action_state" and msg.get("state") in ACTION_FINAL


class Router:
    """See the module's docstring. One per server: `bus` is the cluster's (LocalBus carries
    nothing: every node is then local and this is LocalRoute with bookkeeping that stays empty)."""

    def __init__(self, bus: Bus, nodes: Callable[[str], NodeState | None], hubs: Hubs,
                 peers: Mapping[str, Any] | None = None) -> None:
        self.bus = bus
        # Shared presence's view of the other replicas (central/cluster/presence.py `Peer.gone`:
        # silent for 3 s, or said it stops): a relay through one that is gone ends without waiting
        # for two unanswered pings.
        self.presence_peers: Mapping[str, Any] = peers if peers is not None else {}
        self.replica = bus.replica
        self.nodes = nodes
        self.hubs = hubs
        self.remote: dict[str, Relay] = {}
        self.relayed: dict[str, Relay] = {}
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lanes = Lanes()
        self._misses: dict[str, int] = {}
        self._watch: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        bus.subscribe(channel_of(self.replica), self._on_message)
        bus.responder(PING, self._answer_ping)

    # -- the requesting side (the hubs call these) -------------------------------------------------
    def owner(self, node: NodeState) -> str | None:
        """The other replica holding the node's session; None when here or nowhere."""
        if node.send is None and node.replica and node.replica != self.replica:
            return node.replica
        return None

    def reachable(self, node: NodeState) -> bool:
        return node.send is not None or self.owner(node) is not None

    async def open(self, node: NodeState, rid: str, hub: str, msg: dict[str, Any]) -> str | None:
        """Send the message that starts `rid` on `node` (here, or through its replica). None when
        sent, else why not, for the operator. A node that moved in the meantime is followed once."""
        owner = self.owner(node)
        if owner is None:
            return await LOCAL.open(node, rid, hub, msg)
        answer = await self._open_remote(node, owner, rid, hub, msg)
        if answer.get("sent"):
            return None
        if answer.get("refused"):  # the node's limit, counted where every replica's sessions are
            return Refusal(str(answer.get("why")))
        moved = str(answer.get("owner") or "")
        if moved and moved not in (owner, self.replica):  # the owner knows where it went: once more there
            answer = await self._open_remote(node, moved, rid, hub, msg)
            if answer.get("sent"):
                return None
        elif node.send is not None:  # it has come here meanwhile
            return await LOCAL.open(node, rid, hub, msg)
        return str(answer.get("why") or f"replica {owner} could not pass it on")

    async def _open_remote(self, node: NodeState, owner: str, rid: str, hub: str,
                           msg: dict[str, Any]) -> dict[str, Any]:
        remote = self.remote[rid] = Relay(owner, node.id, hub)
        token = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[token] = future
        self._watch_peers()
        try:
            await self._to_owner(remote, rid, msg, ack=token)
            answer = await asyncio.wait_for(future, ACK_TIMEOUT_S)
        except BusError as exc:
            answer = {"why": f"the bus could not reach replica {owner}, which holds node {node.name}: {exc}"}
        except TimeoutError:
            answer = {"why": f"replica {owner}, which holds node {node.name}, did not answer within "
                             f"{ACK_TIMEOUT_S:g} s (stopped or too busy): try again"}
        finally:
            self._acks.pop(token, None)
        if not answer.get("sent"):
            self.remote.pop(rid, None)
        return answer

    async def send(self, node: NodeState, rid: str, msg: dict[str, Any]) -> bool:
        """A later message of `rid` (input, resize, cancel, close): the way `open` went."""
        remote = self.remote.get(rid)
        if remote is None:
            return await LOCAL.send(node, rid, msg)
        try:
            await self._to_owner(remote, rid, msg)
        except BusError as exc:
            log.warning("routing: %s for %s through %s not sent: %s", msg.get("type"), rid, remote.peer, exc)
            return False
        return True

    def forget(self, rid: str) -> None:
        """The hub is done with `rid`: what still comes for it is dropped."""
        self.remote.pop(rid, None)

    def relayed_on(self, node_id: str, hub: str) -> int:
        """How many of `hub`'s relays to this replica's node other replicas have open here: with
        the hub's own, every one open on the node, since every session to a node goes through the
        replica holding it (the per-node limits count them all here)."""
        return sum(1 for r in self.relayed.values() if r.node_id == node_id and r.hub == hub)

    async def deliver(self, node: NodeState, msg: dict[str, Any]) -> bool:
        """One message for the node that starts no relay and waits for no answer here (the feature
        leader's `demos_desired`: the node's answers reach the leader as node inputs). Sent on the
        node's session here, else handed to the replica holding it, which sends it in the node's lane;
        False when neither could take it."""
        owner = self.owner(node)
        if owner is None:
            return node.send is not None and await node.send(msg)
        try:
            await self.bus.publish(channel_of(owner), {"route": "deliver", "from": self.replica, "node": node.id,
                                                       "msg": msg})
        except BusError as exc:
            log.warning("routing: %s for node %s through %s not sent: %s", msg.get("type"), node.name, owner, exc)
            return False
        return True

    async def _to_owner(self, remote: Relay, rid: str, msg: dict[str, Any], ack: str = "") -> None:
        n, remote.sent = remote.sent, remote.sent + 1  # numbered in the order published (no await between)
        body: dict[str, Any] = {"route": "to_node", "from": self.replica, "node": remote.node_id, "rid": rid,
                                "hub": remote.hub, "n": n, "msg": msg}
        if ack:
            body["ack"] = ack
        await self.bus.publish(channel_of(remote.peer), body)

    # -- the node's side (nodehub calls these) -----------------------------------------------------
    async def forwarded(self, node: NodeState, msg: dict[str, Any]) -> bool:
        """A node's answer for a relay another replica asked for goes there (True); False: this
        replica's own hubs take it."""
        rid = msg.get("id")
        relayed = self.relayed.get(rid) if isinstance(rid, str) else None
        if relayed is None or relayed.node_id != node.id:
            return False
        assert isinstance(rid, str)
        if _final(relayed.hub, msg):
            self.relayed.pop(rid, None)
        plain, names = _encode(msg)
        n, relayed.sent = relayed.sent, relayed.sent + 1
        body = {"route": "from_node", "from": self.replica, "node": node.id, "rid": rid, "n": n,
                "msg": plain, "bytes": names}
        try:
            await self.bus.publish(channel_of(relayed.peer), body)
        except BusError as exc:  # the requester learns it from its next ping (a count missing)
            log.warning("routing: %s for %s to %s not sent: %s", msg.get("type"), rid, relayed.peer, exc)
        return True

    async def node_disconnected(self, node: NodeState, why: str) -> None:
        """The node's session here ended: every replica relaying through it hears so."""
        ended: dict[str, list[str]] = {}
        for rid, relayed in list(self.relayed.items()):
            if relayed.node_id == node.id:
                del self.relayed[rid]
                ended.setdefault(relayed.peer, []).append(rid)
        for requester, rids in ended.items():
            await self._tell_ended(requester, rids, why)

    async def _tell_ended(self, replica: str, rids: list[str], why: str) -> None:
        with contextlib.suppress(BusError):  # gone too: its own watch ends them
            await self.bus.publish(channel_of(replica), {"route": "ended", "from": self.replica, "rids": rids,
                                                         "why": why})

    # -- receiving -------------------------------------------------------------------------------
    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("route")
        if kind == "to_node":
            self._on_to_node(message)
        elif kind == "from_node":
            self._on_from_node(message)
        elif kind == "ack":
            future = self._acks.get(str(message.get("ack")))
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "deliver":
            self._on_deliver(message)
        elif kind == "ended":
            for rid in message.get("rids") or ():
                self._end_remote(str(rid), str(message.get("why") or "ended by the node's replica"))

    def _on_deliver(self, message: dict[str, Any]) -> None:
        node_id, msg = str(message.get("node")), message.get("msg")
        if not isinstance(msg, dict):
            return

        async def send() -> None:
            node = self.nodes(node_id)
            if node is None or node.send is None or not await node.send(msg):
                log.info("routing: %s from %s for node %s not sent: not connected here", msg.get("type"),
                         message.get("from"), node_id)

        self._lanes.put(node_id, send)

    def _on_to_node(self, message: dict[str, Any]) -> None:
        """Counted and checked at once, on arrival (a ping answered later sees these counts); sent
        to the node in order in the node's lane."""
        rid, requester, node_id = str(message.get("rid")), str(message.get("from")), str(message.get("node"))
        msg, ack = message.get("msg") or {}, str(message.get("ack") or "")
        if not isinstance(msg, dict) or msg.get("id") != rid:
            log.warning("routing: a message from %s for %s that is not about it: ignored", requester, rid)
            return
        relayed = self.relayed.get(rid)
        node = self.nodes(node_id)
        if relayed is None and ack:
            if node is None or node.send is None:
                self._spawn(self._ack(requester, ack, False, self._not_here(node, node_id), node))
                return
            hub = str(message.get("hub"))
            refused = self.hubs.refusal(hub, node, self.relayed_on(node_id, hub))
            if refused is not None:
                self._spawn(self._ack(requester, ack, False, refused, None, refused=True))
                return
            relayed = self.relayed[rid] = Relay(requester, node_id, hub)
            self._watch_peers()
        if relayed is None or relayed.peer != requester or relayed.node_id != node_id:
            if relayed is None:
                self._spawn(self._tell_ended(requester, [rid], f"replica {self.replica} no longer relays it"))
            return
        if message.get("n") != relayed.received:
            self._relay_broken(rid, relayed, f"a message from replica {requester} was lost on the bus")
            return
        relayed.received += 1
        if msg.get("type") in ("shell_close", "tunnel_close"):
            self.relayed.pop(rid, None)
        self._lanes.put(node_id, lambda: self._pass_on(node_id, requester, rid, msg, ack))

    async def _pass_on(self, node_id: str, requester: str, rid: str, msg: dict[str, Any], ack: str) -> None:
        node = self.nodes(node_id)
        sent = node is not None and node.send is not None and await node.send(msg)
        if not sent and ack:
            self.relayed.pop(rid, None)
        if ack:
            await self._ack(requester, ack, sent, "" if sent else self._not_here(node, node_id), node)
        elif not sent and self.relayed.pop(rid, None) is not None:
            await self._tell_ended(requester, [rid], f"node {node.name if node else node_id} went offline")

    def _not_here(self, node: NodeState | None, node_id: str) -> str:
        if node is None:
            return f"no node {node_id} on replica {self.replica}"
        elsewhere = f" (now on replica {node.replica})" if node.replica and node.replica != self.replica else ""
        return f"node {node.name} is no longer connected to replica {self.replica}{elsewhere}: try again"

    async def _ack(self, requester: str, token: str, sent: bool, why: str, node: NodeState | None,
                   refused: bool = False) -> None:
        body: dict[str, Any] = {"route": "ack", "ack": token, "sent": sent, "why": why, "from": self.replica}
        if refused:
            body["refused"] = True
        if not sent and node is not None:
            body["owner"] = node.replica  # where the node went, as this replica knows it
        with contextlib.suppress(BusError):
            await self.bus.publish(channel_of(requester), body)

    def _on_from_node(self, message: dict[str, Any]) -> None:
        rid = str(message.get("rid"))
        remote = self.remote.get(rid)
        if remote is None or remote.peer != message.get("from") or remote.node_id != message.get("node"):
            return  # a relay already over here (its end was sent to the owner)
        if message.get("n") != remote.received:
            self._end_remote(rid, f"output from replica {remote.peer} was lost on the bus: session closed")
            return
        remote.received += 1
        msg = _decode(message.get("msg") or {}, list(message.get("bytes") or ()))
        self._lanes.put(remote.node_id, lambda: self._deliver(remote, rid, msg))

    async def _deliver(self, remote: Relay, rid: str, msg: dict[str, Any]) -> None:
        node = self.nodes(remote.node_id)
        if node is None:
            return
        await self.hubs.deliver(remote.hub, node, msg)
        if not self.hubs.holds(remote.hub, rid):
            self.remote.pop(rid, None)

    def _end_remote(self, rid: str, why: str) -> None:
        """A relay through another replica is over: its hub ends it (no message goes back)."""
        remote = self.remote.pop(rid, None)
        if remote is not None:
            self._lanes.put(remote.node_id, lambda: self.hubs.ended(remote.hub, rid, why))

    def _relay_broken(self, rid: str, relayed: Relay, why: str) -> None:
        """Messages of a relay were lost on their way here: the node ends its side, the requester too."""
        self.relayed.pop(rid, None)
        self._close_on_node(rid, relayed)
        self._spawn(self._tell_ended(relayed.peer, [rid], f"{why}: session closed"))

    def _close_on_node(self, rid: str, relayed: Relay) -> None:
        close = CLOSE_FOR.get(relayed.hub)
        node = self.nodes(relayed.node_id)
        if close is None or node is None:
            return
        send = node.send

        async def closing() -> None:
            if send is not None:
                await send({"type": close, "id": rid})

        self._lanes.put(relayed.node_id, closing)

    # -- watching the replicas relayed with ------------------------------------------------------------
    def _watch_peers(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watching(), name="dvic-routing-watch")

    def peers(self) -> set[str]:
        return {r.peer for r in self.remote.values()} | {r.peer for r in self.relayed.values()}

    async def _watching(self) -> None:
        last_ping = time.monotonic()
        while self.remote or self.relayed:
            await asyncio.sleep(LOOK_S)
            for peer in self.peers():
                if getattr(self.presence_peers.get(peer), "gone", False):
                    self._peer_gone(peer, True)
            if time.monotonic() - last_ping < PING_S:
                continue
            last_ping = time.monotonic()
            self._drop_finished()
            peers = self.peers()
            for gone in set(self._misses) - peers:  # misses count in a row, while relaying
                del self._misses[gone]
            await asyncio.gather(*(self._ping(peer) for peer in peers))

    def _drop_finished(self) -> None:
        """Relay relays whose hub is done with them (a final answer, a cancelled open)."""
        for rid, remote in list(self.remote.items()):
            if not self.hubs.holds(remote.hub, rid):
                del self.remote[rid]

    async def _ping(self, peer: str) -> None:
        mine = {rid: r.sent for rid, r in self.remote.items() if r.peer == peer}
        theirs = {rid: r.sent for rid, r in self.relayed.items() if r.peer == peer}
        try:
            answer = await self.bus.request(peer, PING, {"from": self.replica, "holding": mine, "asking": theirs},
                                            timeout=PING_TIMEOUT_S)
        except BusError as exc:
            misses = self._misses[peer] = self._misses.get(peer, 0) + 1
            log.warning("routing: replica %s did not answer (%d): %s", peer, misses, exc)
            if misses >= MISSES_BEFORE_GONE:
                self._peer_gone(peer, isinstance(exc, NoReply))
            return
        self._misses.pop(peer, None)
        for rid in answer.get("lost") or ():
            if rid in mine:
                self._end_remote(rid, f"replica {peer} no longer relays this session, or lost part of it")
            relayed = self.relayed.get(rid)
            if rid in theirs and relayed is not None:
                self._relay_broken(rid, relayed, f"replica {peer} lost part of it")

    def _peer_gone(self, peer: str, silent: bool) -> None:
        self._misses.pop(peer, None)
        how = "stopped" if silent else "cannot be reached"
        for rid, remote in list(self.remote.items()):
            if remote.peer == peer:
                self._end_remote(rid, f"the replica relaying this session ({peer}) {how}")
        for rid, relayed in list(self.relayed.items()):
            if relayed.peer == peer:
                log.warning("routing: replica %s %s: closing %s %s on the node", peer, how, relayed.hub, rid)
                del self.relayed[rid]
                self._close_on_node(rid, relayed)

    def _answer_ping(self, body: dict[str, Any]) -> dict[str, Any]:
        """Which of the asker's relays with this replica are unknown here, or missing messages."""
        asker = str(body.get("from"))
        lost: list[str] = []
        holding: Mapping[str, int] = body.get("holding") or {}
        for rid, count in holding.items():  # the asker sent these to nodes here
            relayed = self.relayed.get(rid)
            # Fewer than the asker had sent when it asked: some were lost (more: sent since).
            if relayed is None or relayed.peer != asker or relayed.received < count:
                lost.append(rid)
                if relayed is not None and relayed.peer == asker:
                    self._relay_broken(rid, relayed, f"a message from replica {asker} was lost on the bus")
        asking: Mapping[str, int] = body.get("asking") or {}
        for rid, count in asking.items():  # the asker relays these to hubs here
            remote = self.remote.get(rid)
            if remote is None or remote.peer != asker:
                lost.append(rid)
            elif remote.received < count:
                lost.append(rid)
                self._end_remote(rid, f"output from replica {asker} was lost on the bus: session closed")
        return {"lost": lost}

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._lanes.close()
        await self.hubs.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)



@dataclass
class ServiceHubs:
    """The server's hubs, as the router delivers to them on the requesting side."""

    commands: CommandHub
    shells: ShellHub
    tunnels: TunnelHub
    actions: ActionHub

    def holds(self, hub: str, rid: str) -> bool:
        if hub == "commands":
            return rid in self.commands.runs
        if hub in ("shells", "tunnels"):
            return rid in (self.shells if hub == "shells" else self.tunnels).channels
        return rid in self.actions.pending

    async def deliver(self, hub: str, node: NodeState, msg: dict[str, Any]) -> None:
        """A node's answer relayed from its replica: taken as nodehub takes it from a node here."""
        if hub == "updates" and msg.get("type") != "unsupported":
            await self.actions.on_update_state(node, msg)
            return
        handler = {"commands": self.commands.on_message, "shells": self.shells.on_message,
                   "tunnels": self.tunnels.on_message}.get(hub, self.actions.on_message)
        await handler(node, msg)

    def refusal(self, hub: str, node: NodeState, relayed: int) -> str | None:
        """Why one more of `hub`'s sessions may not open on `node`, held here: its per-node limit
        counts this replica's own and the `relayed` ones other replicas opened through it."""
        if hub == "commands":
            if self.commands.running_on(node.id) + relayed >= MAX_RUNNING_PER_NODE:
                return f"node {node.name} already runs {MAX_RUNNING_PER_NODE} commands"
        elif hub == "shells":
            if self.shells.open_on(node.id) + relayed >= MAX_SESSIONS_PER_NODE:
                return f"node {node.name!r} already has {MAX_SESSIONS_PER_NODE} shells open"
        elif hub == "tunnels":
            if self.tunnels.open_on(node.id) + relayed >= MAX_TUNNELS_PER_NODE:
                return f"node {node.name!r} already has {MAX_TUNNELS_PER_NODE} tunnels open"
        return None

    async def ended(self, hub: str, rid: str, why: str) -> None:
        """The relay is over on the node's side (node gone, its replica stopped, bytes lost)."""
        if hub == "commands":
            await self.commands.lost(rid, why)
        elif hub == "shells":
            session = self.shells.channels.get(rid)
            if session is not None:
                await self.shells.end(session, why, tell_node=False)
        elif hub == "tunnels":
            tunnel = self.tunnels.channels.get(rid)
            if tunnel is not None:
                await self.tunnels.end(tunnel, why, tell_node=False)
        # An action goes on: a reboot or an update ends its session by design; its deadline or the
        # node's next session decides (ActionHub._watch_returns).

    async def close(self) -> None:
        await self.actions.close()


def wire(bus: Bus, nodes: Callable[[str], NodeState | None], hubs: ServiceHubs,
         peers: Mapping[str, Any] | None = None) -> Router:
    """The server's router, set as the hubs' route; `peers`: shared presence's other replicas."""
    router = Router(bus, nodes, hubs, peers)
    for hub in (hubs.commands, hubs.shells, hubs.tunnels, hubs.actions):
        hub.route = router
    return router
