"""Relayed websockets through a node: interactive shells (recorded) and TCP tunnels."""

from __future__ import annotations

from aiohttp import web

from dvic_core.constants import OPERATOR_HEARTBEAT_S
from dvic_core.schema import Int, Query, Str

from ..auth import ApiError
from ..relay import hang_up_of
from ..routes import params, routes
from ..shells import MAX_SESSIONS_PER_NODE
from ..strictjson import json_response
from ..tunnels import MAX_TUNNELS_PER_NODE
from .params import limit, node_id, node_ref, services
from .rules import audit, live_node_for, require_connected

MAX_RELAY_FRAME = 256 * 1024


@routes.route("GET", "/api/v1/nodes/{node}/shell", role="operator", audit=False,
              summary="Interactive shell on a node (websocket; binary frames are terminal bytes)",
              query=Query({"cols": Int(min=1, max=1000, default=80), "rows": Int(min=1, max=1000, default=24)}))
async def shell(request: web.Request) -> web.StreamResponse:
    svc, operator, node = live_node_for(request)
    cols, rows = params(request)["cols"], params(request)["rows"]
    require_connected(node, "shell", svc.router.reachable(node))
    # Every replica's shells on the node, where its session is (cluster/routing.py `relayed_on`).
    if svc.shells.open_on(node.id) + svc.router.relayed_on(node.id, "shells") >= MAX_SESSIONS_PER_NODE:
        raise ApiError(429, "too_many_sessions", f"node {node.name!r} already has {MAX_SESSIONS_PER_NODE} shells open")
    await audit(svc, request, operator, "shell", node.name, {"cols": cols, "rows": rows})
    session = await svc.shells.create(node, operator.name, cols, rows)
    ws = web.WebSocketResponse(heartbeat=OPERATOR_HEARTBEAT_S, max_msg_size=MAX_RELAY_FRAME)
    await ws.prepare(request)
    await svc.shells.relay(session, ws, hang_up_of(request))
    return ws


@routes.route("GET", "/api/v1/sessions", role="operator", summary="Recorded shell sessions (newest first)",
              query=Query({"node": node_ref(), "limit": limit(200)}))
async def list_sessions(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    return json_response({"sessions": await svc.queries.recent_sessions(node_id(svc, p["node"]), p["limit"])})


@routes.route("GET", "/api/v1/sessions/{id}/recording", role="operator",
              summary="A session's recording (asciicast v2, playable with asciinema)")
async def recording(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    sid = request.match_info["id"]
    name = await svc.queries.session_recording(sid)
    if name is None:
        raise ApiError(404, "no_such_session", f"no shell session {sid!r}")
    path = svc.shells.recordings / name
    if not path.exists():
        raise ApiError(404, "no_recording", f"the recording of session {sid!r} is gone")
    return web.FileResponse(path, headers={"Content-Type": "application/x-asciicast"})


@routes.route("GET", "/api/v1/nodes/{node}/tunnel", role="operator", audit=False,
              summary="TCP tunnel through a node (websocket; binary frames are the TCP bytes)",
              query=Query({
                  "host": Str(pattern=r"\S{1,253}", required=True, message="host: a host name or IP address"),
                  "port": Int(min=1, max=65535, default=22, expects="a TCP port number",
                              doc="one of the server's --tunnel-port ports"),
              }))
async def tunnel(request: web.Request) -> web.StreamResponse:
    svc, operator, node = live_node_for(request)
    host, port = params(request)["host"], params(request)["port"]
    if port not in svc.config.tunnel_ports:
        allowed = ", ".join(map(str, svc.config.tunnel_ports))
        raise ApiError(403, "port_not_allowed", f"tunnels may reach ports {allowed} only (--tunnel-port)")
    require_connected(node, "tunnel", svc.router.reachable(node))
    if svc.tunnels.open_on(node.id) + svc.router.relayed_on(node.id, "tunnels") >= MAX_TUNNELS_PER_NODE:
        raise ApiError(429, "too_many_tunnels", f"node {node.name!r} already has {MAX_TUNNELS_PER_NODE} tunnels open")
    await audit(svc, request, operator, "tunnel", node.name, {"host": host, "port": port})
    tun = svc.tunnels.create(node, host, port)
    ws = web.WebSocketResponse(heartbeat=OPERATOR_HEARTBEAT_S, max_msg_size=MAX_RELAY_FRAME)
    await ws.prepare(request)
    await svc.tunnels.relay(tun, ws, hang_up_of(request))
    return ws
