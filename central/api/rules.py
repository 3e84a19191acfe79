"""Rules every remote-control route shares: who is targeted, maintenance, and the audit row written
before anything is sent to a node (docs/protocol.md section 4)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from dvic_core.schema import Array, Bool, Schema, Str

from .. import store
from ..auth import ApiError, Operator, current_operator
from ..registry import NodeState
from ..services import Services
from ..stream import origin_allowed
from .params import find_node, services

TARGETS_RULE = "give 'nodes' (a list of names or ids), 'group', or 'all': true"


def target_fields() -> dict[str, Schema]:
    """The body fields naming a command's or an update's nodes: one of them (see resolve_targets)."""
    return {
        "nodes": Array(Str(), min_items=1, nullable=True, code="bad_targets", message=TARGETS_RULE,
                       doc="node names or ids"),
        "group": Str(nullable=True, code="bad_targets", message=TARGETS_RULE, doc="every node of this group"),
        "all": Bool(nullable=True, code="bad_targets", message=TARGETS_RULE, doc="true: every node"),
    }


async def audit(services: Services, request: web.Request, operator: Operator, action: str, target: str,
                detail: dict[str, Any]) -> None:
    # Urgent: the operator's request waits on it (central/writer.py).
    await services.writer.submit(store.insert_audit(time.time(), operator.name, action, target, 0,
                                                    request.remote or "", detail), urgent=True)


def check_maintenance(node: NodeState, operator: Operator) -> None:
    if node.maintenance and operator.role != "admin":
        raise ApiError(403, "maintenance", f"node {node.name!r} is in maintenance: only admins may act on it")


def resolve_targets(services: Services, p: dict[str, Any]) -> tuple[list[NodeState], str]:
    """(the nodes, the audit target) of parsed target_fields(); esp32 boards take no remote control."""
    registry = services.registry
    if p["all"] is True:
        nodes = [n for n in registry.all() if not n.revoked and n.kind != "esp32"]
        return nodes, "all"
    group = p["group"]
    if group is not None:
        nodes = [n for n in registry.all() if n.group == group and not n.revoked and n.kind != "esp32"]
        if not nodes:
            raise ApiError(404, "empty_group", f"no node in group {group!r}")
        return nodes, f"group:{group}"
    if p["nodes"] is None:
        raise ApiError(400, "bad_targets", TARGETS_RULE)
    nodes = []
    for ref in p["nodes"]:
        node = registry.get(ref)
        if node is None:
            raise ApiError(404, "no_such_node", f"no node with id or name {ref!r}")
        if node.revoked:
            raise ApiError(409, "revoked", f"node {node.name!r} is revoked")
        nodes.append(node)
    return nodes, "nodes:" + ",".join(n.name for n in nodes)


def outside_maintenance(nodes: list[NodeState], target: str, operator: Operator) -> list[NodeState]:
    """Named nodes must not be in maintenance (403) unless the caller is an admin; a group or the
    whole fleet from an operator skips the nodes in maintenance instead."""
    if target.startswith("nodes:"):
        for node in nodes:
            check_maintenance(node, operator)
        return nodes
    if operator.role == "admin":
        return nodes
    return [n for n in nodes if not n.maintenance]


def live_node_for(request: web.Request) -> tuple[Services, Operator, NodeState]:
    """Common gate of the relayed websockets (shell, tunnel): origin, role, maintenance, node online."""
    if not origin_allowed(request):
        raise ApiError(403, "bad_origin", "origin not allowed")
    operator = current_operator(request)
    node = find_node(request)
    check_maintenance(node, operator)
    return services(request), operator, node


def require_connected(node: NodeState, what: str) -> None:
    if node.send is None:
        raise ApiError(409, "node_offline", f"node {node.name!r} is {node.state}: no {what} possible")
