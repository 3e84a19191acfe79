"""Nodes: the list, one node's detail, enrollment and revocation, maintenance, metric history."""

from __future__ import annotations

import time

from aiohttp import web

from dvic_core.constants import NODE_KINDS, NODE_STATES, RANK
from dvic_core.schema import Bool, Csv, Enum, Int, Object, Query, Str

from .. import accounts
from ..auth import ApiError, Operator, current_operator
from ..enroll import NODE_FIELDS, enroll_node, ever_connected
from ..registry import NodeState
from ..routes import params, routes
from ..services import Services
from ..strictjson import json_response
from .params import find_node, services, since_until

MAX_POINTS = 10_000  # per metric series in one answer


@routes.route("GET", "/api/v1/nodes", role="viewer", summary="List nodes", query=Query({
    "group": Str(blank_is_value=True, doc="only this group (empty: nodes in no group)"),
    "kind": Enum(NODE_KINDS), "state": Enum(NODE_STATES),
}))
async def list_nodes(request: web.Request) -> web.Response:
    p = params(request)
    state, kind, group = p["state"], p["kind"], p["group"]
    calendar = services(request).calendar
    nodes = [
        {**n.summary(), "booking": calendar.holds.view(n.id)} for n in services(request).registry.all()
        if (not state or n.state == state) and (not kind or n.kind == kind) and (group is None or n.group == group)
    ]
    return json_response({"nodes": nodes})


@routes.route("GET", "/api/v1/nodes/{node}", role="viewer", summary="Node detail")
async def node_detail(request: web.Request) -> web.Response:
    node = find_node(request)
    return json_response({**node.detail(), "booking": services(request).calendar.holds.view(node.id)})


@routes.route("POST", "/api/v1/nodes", role="operator", summary="Enroll a node; returns its bundle once",
              body=NODE_FIELDS)
async def enroll(request: web.Request) -> web.Response:
    p = params(request)
    bundle = await enroll_node(services(request), p["name"], p["kind"], p["group"], by=current_operator(request).name)
    return json_response(bundle, status=201)


@routes.route("DELETE", "/api/v1/nodes/{node}", role="operator",
              summary="Revoke a node (an operator: only its own enrollment that never connected)")
async def revoke(request: web.Request) -> web.Response:
    node = find_node(request)
    if node.revoked:
        raise ApiError(409, "already_revoked", f"node {node.name!r} is already revoked")
    operator = current_operator(request)
    if operator.rank < RANK["admin"]:
        await _check_own_enrollment(services(request), node, operator)
    await services(request).registry.revoke(node, operator.name)
    return json_response(node.summary())


async def _check_own_enrollment(services: Services, node: NodeState, operator: Operator) -> None:
    """An operator may undo its own enrollment (say, a failed add-node) until the node connects."""
    by = await accounts.enrolled_by(services.read_db, node.id)
    if by != operator.name:
        raise ApiError(403, "not_your_enrollment",
                       f"node {node.name!r} was not enrolled by {operator.name!r}: an operator may revoke only "
                       f"a node it enrolled itself that never connected; ask an admin to revoke it")
    if ever_connected(node):
        raise ApiError(403, "node_has_connected",
                       f"node {node.name!r} has connected to the server, so only an admin may revoke it now: "
                       f"ask an admin to run `dvic remove-node {node.name}`")


@routes.route("POST", "/api/v1/nodes/{node}/maintenance", role="operator", summary="Maintenance on/off",
              body=Object({"on": Bool(required=True)}))
async def maintenance(request: web.Request) -> web.Response:
    node = find_node(request)
    await services(request).registry.set_maintenance(node, params(request)["on"], current_operator(request).name)
    return json_response(node.summary())


@routes.route("GET", "/api/v1/nodes/{node}/metrics", role="viewer", summary="Metric history", query=Query({
    **since_until("samples"),
    "step": Int(min=0, expects="expected a whole number of seconds",
                doc="seconds per point (default: the range in 300 points, at least 5)"),
    "names": Csv(Str(), doc="series names, comma-separated (default: all)"),
}))
async def node_metrics(request: web.Request) -> web.Response:
    node, p = find_node(request), params(request)
    until = p["to"] or time.time()
    since = until - 3600 if p["from"] is None else p["from"]
    if since >= until:
        raise ApiError(400, "bad_query", "from must be before to")
    step = p["step"] if p["step"] is not None else max(5, int((until - since) / 300))
    if step < 1 or (until - since) / step > MAX_POINTS:
        raise ApiError(400, "bad_query", "step: too small for this range (at most 10,000 points per series)")
    if step >= 60:
        step -= step % 60
    series = await services(request).queries.metrics(node.id, p["names"] or None, since, until, step)
    return json_response({"node": node.id, "from": since, "to": until, "step": step, "series": series})
