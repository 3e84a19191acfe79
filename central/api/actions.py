"""Tracked actions on nodes (reboot, demo start/stop/restart) and daemon updates to the server's release."""

from __future__ import annotations

from aiohttp import web

from dvic_core.constants import ACTIONS
from dvic_core.schema import Enum, Number, Object, Query, Str

from ..auth import ApiError, current_operator
from ..routes import params, routes
from ..strictjson import json_response
from .params import find_node, limit, node_id, node_ref, services
from .rules import actable, audit, check_may_act, resolve_targets, target_fields

REQUESTABLE = tuple(a for a in ACTIONS if a != "update")  # an update goes through POST /api/v1/update


@routes.route("POST", "/api/v1/nodes/{node}/actions", role="operator", audit=False,
              summary="Request a tracked action (reboot, restart_demo, stop_demo, start_demo)",
              body=Object({
                  "action": Enum(REQUESTABLE, required=True, code="bad_action",
                                 expects=f"one of {', '.join(REQUESTABLE)}"),
                  "demo": Str(max_len=256, nullable=True, default="", code="bad_demo", expects="a demo name"),
                  "timeout": Number(min=1, max=86400, nullable=True, code="bad_timeout",
                                    expects="seconds from 1 to 86400", doc="seconds before the action counts as lost"),
              }))
async def request_action(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    operator = current_operator(request)
    node = find_node(request)
    check_may_act(svc, node, operator)
    await audit(svc, request, operator, p["action"], node.name, {"demo": p["demo"]})
    action = await svc.actions.request(node, operator.name, p["action"], p["demo"], p["timeout"])
    return json_response(action.view(), status=201)


@routes.route("GET", "/api/v1/actions", role="viewer", summary="Tracked actions (newest first)",
              query=Query({"node": node_ref(), "limit": limit(200)}))
async def list_actions(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    return json_response({"actions": await svc.queries.recent_actions(node_id(svc, p["node"]), p["limit"])})


@routes.route("GET", "/api/v1/actions/{id}", role="viewer", summary="One tracked action")
async def get_action(request: web.Request) -> web.Response:
    action_id = request.match_info["id"]
    action = await services(request).queries.action(action_id)
    if action is None:
        raise ApiError(404, "no_such_action", f"no action {action_id!r}")
    return json_response(action)


@routes.route("POST", "/api/v1/update", role="operator", audit=False,
              summary="Update the daemon on nodes to the server's release", body=Object(target_fields()))
async def update_nodes(request: web.Request) -> web.Response:
    svc = services(request)
    operator = current_operator(request)
    release = svc.release.current()
    if release is None:
        raise ApiError(409, "no_release", "the server holds no daemon release (POST /api/v1/release)")
    nodes, target = resolve_targets(svc, params(request))
    nodes = actable(svc, nodes, target, operator)
    await audit(svc, request, operator, "update", target, {"version": release.version,
                                                           "nodes": [n.name for n in nodes]})
    url = svc.public_url() + "/api/v1/release/daemon"
    actions = []
    for node in nodes:
        if node.daemon_version == release.version:
            continue
        actions.append((await svc.actions.request(node, operator.name, "update", release=release,
                                                  download_url=url,
                                                  endorsements=svc.release.endorsements())).view())
    return json_response({"version": release.version, "actions": actions}, status=201)
