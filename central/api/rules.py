"""Rules every remote-control route shares: who is targeted, who may act (maintenance, bookings), and the audit row written
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


def check_may_act(svc: Services, node: NodeState, operator: Operator) -> None:
    """The one check before acting on a node (commands, shells, tunnels, actions, updates; deploys
    call it too): a node in maintenance, or held by someone else's booking (docs/calendar.md), is
    refused to all but admins (and, for a booking, its holder)."""
    if node.maintenance and operator.role != "admin":
        raise ApiError(403, "maintenance", f"node {node.name!r} is in maintenance: only admins may act on it")
    held = svc.calendar.refusal(node, operator.name, operator.role)
    if held is not None:
        raise ApiError(403, "booked", held)


def _may_act(svc: Services, node: NodeState, operator: Operator) -> bool:
    try:
        check_may_act(svc, node, operator)
    except ApiError:
        return False
    return True


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


def actable(svc: Services, nodes: list[NodeState], target: str, operator: Operator) -> list[NodeState]:
    """Named nodes must pass check_may_act (else 403); a group or the whole fleet skips the nodes
    it refuses instead (in maintenance, or held by someone else's booking)."""
    if target.startswith("nodes:"):
        for node in nodes:
            check_may_act(svc, node, operator)
        return nodes
    return [n for n in nodes if _may_act(svc, n, operator)]


def live_node_for(request: web.Request) -> tuple[Services, Operator, NodeState]:
    """Common gate of the relayed websockets (shell, tunnel): origin, role, maintenance and bookings."""
    if not origin_allowed(request):
        raise ApiError(403, "bad_origin", "origin not allowed")
    operator = current_operator(request)
    node = find_node(request)
    svc = services(request)
    check_may_act(svc, node, operator)
    return svc, operator, node


def require_connected(node: NodeState, what: str, reachable: bool) -> None:
    """`reachable`: connected here or to another replica (central/cluster/routing.py)."""
    if not reachable:
        raise ApiError(409, "node_offline", f"node {node.name!r} is {node.state}: no {what} possible")
