"""How a hub reaches a node, wherever its session is (docs/architecture.md "Several replicas:
routing"): the `Route` the command, shell, tunnel and action hubs call, and `LOCAL`, the node's own
session on this server. The router that crosses replicas is central/cluster/routing.py; this module
stays below the hubs so that they need not import it.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..registry import NodeState


class Route(Protocol):
    """How a hub reaches a node, wherever its session is (Router; LOCAL without other replicas)."""

    def reachable(self, node: NodeState) -> bool: ...
    async def open(self, node: NodeState, rid: str, hub: str, msg: dict[str, Any]) -> str | None: ...
    async def send(self, node: NodeState, rid: str, msg: dict[str, Any]) -> bool: ...
    def forget(self, rid: str) -> None: ...
    def relayed_on(self, node_id: str, hub: str) -> int: ...


class Refusal(str):
    """Why `Route.open` did not send: the replica holding the node refused it (a per-node limit
    reached, counting what every replica opened there), not a failure to reach the node."""


def unreachable(node: NodeState) -> str:
    """Why nothing can be sent to `node`: its state, or, when it still shows online (its replica
    stopped and it has not reconnected yet, or only its keep-alives come), that it has no session."""
    if node.state in ("new", "offline"):
        return f"node {node.name} is {node.state}"
    return f"node {node.name} is {node.state} but has no connection to any server right now: try again shortly"


class LocalRoute:
    """Every node on this server (SQLite, or a hub made on its own in a test)."""

    def reachable(self, node: NodeState) -> bool:
        return node.send is not None

    async def open(self, node: NodeState, rid: str, hub: str, msg: dict[str, Any]) -> str | None:
        if node.send is None:
            return unreachable(node)
        return None if await node.send(msg) else "node connection closed while sending"

    async def send(self, node: NodeState, rid: str, msg: dict[str, Any]) -> bool:
        return node.send is not None and await node.send(msg)

    def forget(self, rid: str) -> None:
        pass

    def relayed_on(self, node_id: str, hub: str) -> int:
        return 0  # nothing is opened here for another replica


LOCAL = LocalRoute()
