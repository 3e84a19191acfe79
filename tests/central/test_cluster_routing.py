"""Routing between replicas (central/cluster/routing.py) over a real bus on a real PostgreSQL: two or
three routers, each on its own PgBus, one holding the node's session (its `send` records what the
node is sent, as the node websocket would deliver it), another asking for it with its hubs.
The end-to-end tests with real server processes and a real daemon: test_cluster_routing_e2e.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from central.cluster import routing
from central.cluster.pgbus import PgBus
from central.cluster.routing import Router
from central.registry import NodeState
from tests.support.postgres import Cluster
from tests.support.wait import async_wait_for


@dataclass
class Taken:
    """The requesting replica's hubs: what they were given, and the relays they still hold."""
    open: set[str] = field(default_factory=set)
    delivered: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    ends: dict[str, str] = field(default_factory=dict)

    def holds(self, hub: str, rid: str) -> bool:
        return rid in self.open

    async def deliver(self, hub: str, node: NodeState, msg: dict[str, Any]) -> None:
        self.delivered.append((hub, node.id, msg))
        if msg["type"] in ("exec_exit", "shell_exit"):
            self.open.discard(msg["id"])

    async def ended(self, hub: str, rid: str, why: str) -> None:
        self.open.discard(rid)
        self.ends[rid] = why

    def refusal(self, hub: str, node: NodeState, relayed: int) -> str | None:
        return None

    async def close(self) -> None:
        pass


@dataclass
class Replica:
    bus: PgBus
    router: Router
    hubs: Taken
    nodes: dict[str, NodeState]
    sent: list[dict[str, Any]] = field(default_factory=list)  # what its node sessions were sent

    def hold(self, node_id: str) -> NodeState:
        """The node connects here."""
        node = self.nodes[node_id]

        async def send(msg: dict[str, Any]) -> bool:
            self.sent.append(msg)
            return True

        node.send, node.replica = send, self.bus.replica
        return node


def _node(replica: str = "") -> NodeState:
    return NodeState("n1", "pc-1", "desktop", "", time.time(), "", "", liveness="online", replica=replica)


@pytest.fixture
async def make(pg_cluster: Cluster) -> AsyncIterator[Any]:
    url = pg_cluster.create_database()
    made: list[Replica] = []

    async def replica(name: str, node_on: str = "", peers: dict[str, Any] | None = None) -> Replica:
        bus = PgBus(url, name, reconnect_s=0.1)
        hubs = Taken()
        nodes = {"n1": _node(node_on)}
        rep = Replica(bus, Router(bus, nodes.get, hubs, peers), hubs, nodes)
        await bus.start()
        made.append(rep)
        return rep

    yield replica
    for rep in made:
        await rep.router.close()
        await rep.bus.close()


async def test_a_shell_through_the_nodes_replica_goes_both_ways_in_order(make: Any) -> None:
    r1, r2 = await make("r1"), await make("r2", node_on="r1")
    r1.hold("n1")
    node2 = r2.nodes["n1"]
    r2.hubs.open.add("s1")
    assert r2.router.reachable(node2) and r2.router.owner(node2) == "r1"
    assert await r2.router.open(node2, "s1", "shells", {"type": "shell_open", "id": "s1", "cols": 80, "rows": 24}) is None
    for i in range(50):
        assert await r2.router.send(node2, "s1", {"type": "shell_input", "id": "s1", "data": f"key{i}"})
    await async_wait_for(lambda: len(r1.sent) == 51, 10, "every message at the node")
    assert [m.get("data") for m in r1.sent[1:]] == [f"key{i}" for i in range(50)]
    node1 = r1.nodes["n1"]
    for i in range(50):  # the node's answers, bytes as the node websocket parses them
        assert await r1.router.forwarded(node1, {"type": "shell_output", "id": "s1", "data": bytes([i, 0, 255])})
    assert not await r1.router.forwarded(node1, {"type": "shell_output", "id": "other", "data": b"x"})
    await async_wait_for(lambda: len(r2.hubs.delivered) == 50, 10, "every answer at the requester")
    assert [m["data"] for _, _, m in r2.hubs.delivered] == [bytes([i, 0, 255]) for i in range(50)]
    assert {hub for hub, _, _ in r2.hubs.delivered} == {"shells"}
    await r1.router.forwarded(node1, {"type": "shell_exit", "id": "s1", "code": 0, "message": ""})
    await async_wait_for(lambda: "s1" not in r2.router.remote, 10, "the relay forgotten at the end")
    assert "s1" not in r1.router.relayed and r2.hubs.ends == {}


async def test_a_node_not_on_its_replica_any_more_is_a_clear_error(make: Any) -> None:
    r1, r2 = await make("r1"), await make("r2", node_on="r1")
    why = await r2.router.open(r2.nodes["n1"], "c1", "commands", {"type": "exec", "id": "c1"})
    assert why == "node pc-1 is no longer connected to replica r1: try again"
    assert r1.sent == [] and r2.router.remote == {} and r1.router.relayed == {}


async def test_a_node_that_moved_is_followed_once_to_its_new_replica(make: Any) -> None:
    r1, r2, r3 = await make("r1", node_on="r3"), await make("r2", node_on="r1"), await make("r3")
    r3.hold("n1")
    r2.hubs.open.add("c1")
    assert await r2.router.open(r2.nodes["n1"], "c1", "commands", {"type": "exec", "id": "c1"}) is None
    assert r1.sent == [] and [m["id"] for m in r3.sent] == ["c1"]
    assert r2.router.remote["c1"].peer == "r3"


async def test_an_owner_replica_that_is_gone_is_an_error_not_a_hang(make: Any) -> None:
    r2 = await make("r2", node_on="r1")  # r1 never started: nobody listens on its channel
    started = time.monotonic()
    why = await r2.router.open(r2.nodes["n1"], "c1", "commands", {"type": "exec", "id": "c1"})
    assert why == ("replica r1, which holds node pc-1, did not answer within 2 s (stopped or too busy): "
                   "try again")
    assert time.monotonic() - started < 5 and r2.router.remote == {}


async def test_a_node_offline_everywhere_is_not_reachable(make: Any) -> None:
    r2 = await make("r2")
    node = r2.nodes["n1"]
    assert not r2.router.reachable(node)
    assert await r2.router.open(node, "c1", "commands", {"type": "exec", "id": "c1"}) == (
        "node pc-1 is online but has no connection to any server right now: try again shortly")  # its replica died
    node.liveness = "offline"
    assert await r2.router.open(node, "c1", "commands", {"type": "exec", "id": "c1"}) == "node pc-1 is offline"


async def test_the_relaying_replica_stopping_ends_the_session_with_a_clear_message(make: Any) -> None:
    r1, r2 = await make("r1"), await make("r2", node_on="r1")
    r1.hold("n1")
    r2.hubs.open.add("s1")
    assert await r2.router.open(r2.nodes["n1"], "s1", "shells", {"type": "shell_open", "id": "s1"}) is None
    await r1.router.close()
    await r1.bus.close()  # as a killed process: no goodbye
    await async_wait_for(lambda: "s1" in r2.hubs.ends, 15, "the session ended on the requester")
    assert r2.hubs.ends["s1"] == "the replica relaying this session (r1) stopped"


async def test_a_replica_shared_presence_counts_gone_ends_its_relays_without_waiting_for_pings(make: Any) -> None:
    @dataclass
    class Peer:  # as central/cluster/presence.py keeps another replica
        gone: bool = False

    presence = {"r1": Peer()}
    r1, r2 = await make("r1"), await make("r2", node_on="r1", peers=presence)
    r1.hold("n1")
    r2.hubs.open.add("s1")
    assert await r2.router.open(r2.nodes["n1"], "s1", "shells", {"type": "shell_open", "id": "s1"}) is None
    presence["r1"].gone = True  # r1 still answers pings: only presence says it is gone
    started = time.monotonic()
    await async_wait_for(lambda: "s1" in r2.hubs.ends, 5, "the session ended")
    assert r2.hubs.ends["s1"] == "the replica relaying this session (r1) stopped"
    assert time.monotonic() - started < 1.5


async def test_the_requesting_replica_stopping_closes_the_shell_on_the_node(make: Any) -> None:
    r1, r2 = await make("r1"), await make("r2", node_on="r1")
    r1.hold("n1")
    r2.hubs.open.add("s1")
    r2.hubs.open.add("c1")
    assert await r2.router.open(r2.nodes["n1"], "s1", "shells", {"type": "shell_open", "id": "s1"}) is None
    assert await r2.router.open(r2.nodes["n1"], "c1", "commands", {"type": "exec", "id": "c1"}) is None
    await r2.router.close()
    await r2.bus.close()
    await async_wait_for(lambda: len(r1.sent) == 4, 15, "the node told to end both")
    assert sorted((m["type"], m["id"]) for m in r1.sent[2:]) == [("cancel", "c1"), ("shell_close", "s1")]
    assert r1.router.relayed == {}


async def test_a_message_lost_on_the_bus_ends_the_session_instead_of_corrupting_it(make: Any) -> None:
    r1, r2 = await make("r1"), await make("r2", node_on="r1")
    r1.hold("n1")
    r2.hubs.open.add("s1")
    node2 = r2.nodes["n1"]
    assert await r2.router.open(node2, "s1", "shells", {"type": "shell_open", "id": "s1"}) is None
    r2.router.remote["s1"].sent += 1  # as if one keystroke never reached r1
    assert await r2.router.send(node2, "s1", {"type": "shell_input", "id": "s1", "data": "after the loss"})
    await async_wait_for(lambda: "s1" in r2.hubs.ends, 10, "the session ended")
    assert r2.hubs.ends["s1"] == "a message from replica r2 was lost on the bus: session closed"
    assert [m["type"] for m in r1.sent] == ["shell_open", "shell_close"]  # the lost-after keystroke never typed


async def test_output_lost_on_the_bus_is_found_by_the_next_ping(make: Any) -> None:
    r1, r2 = await make("r1"), await make("r2", node_on="r1")
    r1.hold("n1")
    r2.hubs.open.add("s1")
    assert await r2.router.open(r2.nodes["n1"], "s1", "shells", {"type": "shell_open", "id": "s1"}) is None
    r1.router.relayed["s1"].sent += 1  # as if r1's last output never reached r2, and nothing came after
    await async_wait_for(lambda: "s1" in r2.hubs.ends, 10, "the session ended")
    assert "lost on the bus" in r2.hubs.ends["s1"] or "lost part of it" in r2.hubs.ends["s1"]
    await async_wait_for(lambda: [m["type"] for m in r1.sent] == ["shell_open", "shell_close"], 10, "closed on the node")


async def test_the_node_leaving_its_replica_ends_what_runs_through_it(make: Any) -> None:
    r1, r2 = await make("r1"), await make("r2", node_on="r1")
    node1 = r1.hold("n1")
    r2.hubs.open.add("c1")
    assert await r2.router.open(r2.nodes["n1"], "c1", "commands", {"type": "exec", "id": "c1"}) is None
    node1.send = None
    await r1.router.node_disconnected(node1, "node pc-1 went offline (connection closed)")
    await async_wait_for(lambda: "c1" in r2.hubs.ends, 10, "the run ended")
    assert r2.hubs.ends["c1"] == "node pc-1 went offline (connection closed)"


def test_bytes_travel_as_base64_and_come_back_as_bytes() -> None:
    plain, names = routing._encode({"type": "tunnel_data", "id": "t", "data": b"\x00\xff"})
    assert plain["data"] == "AP8=" and names == ["data"]
    assert routing._decode(plain, names)["data"] == b"\x00\xff"
