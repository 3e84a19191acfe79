"""Remote-control API: commands, shells and their recordings. Operators and admins only.

The audit row is written by each handler *before* anything is sent to a node (so these routes are
declared with audit=False: the generic after-the-fact audit would only repeat it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

from dvic_core.constants import ACTIONS, CLOSE_TOO_SLOW, OPERATOR_HEARTBEAT_S

from . import store
from .api import find_node, json_body, limit_param, node_id_param, whole_number
from .auth import NODE, PUBLIC, ApiError, Operator, current_operator
from .commands import output_event
from .nodehub import authenticate_node
from .registry import NodeState
from .relay import hang_up_of, stall_guard
from .release import MAX_DAEMON_BYTES, ReleaseError
from .routes import routes
from .services import SERVICES, Services
from .shells import MAX_SESSIONS_PER_NODE
from .stream import origin_allowed
from .strictjson import dumps, json_response
from .tunnels import MAX_TUNNELS_PER_NODE

MAX_TIMEOUT_S = 3600.0
MAX_ARGV_BYTES = 64 * 1024


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def audit(services: Services, request: web.Request, operator: Operator, action: str, target: str,
                detail: dict[str, Any]) -> None:
    # Urgent: the operator's request waits on it (central/writer.py).
    await services.writer.submit(store.insert_audit(time.time(), operator.name, action, target, 0,
                                                    request.remote or "", detail), urgent=True)


def check_maintenance(node: NodeState, operator: Operator) -> None:
    if node.maintenance and operator.role != "admin":
        raise ApiError(403, "maintenance", f"node {node.name!r} is in maintenance: only admins may act on it")


def resolve_targets(services: Services, body: dict[str, Any]) -> tuple[list[NodeState], str]:
    registry = services.registry
    if body.get("all") is True:
        nodes = [n for n in registry.all() if not n.revoked and n.kind != "esp32"]
        return nodes, "all"
    if isinstance(body.get("group"), str):
        group = body["group"]
        nodes = [n for n in registry.all() if n.group == group and not n.revoked and n.kind != "esp32"]
        if not nodes:
            raise ApiError(404, "empty_group", f"no node in group {group!r}")
        return nodes, f"group:{group}"
    refs = body.get("nodes")
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise ApiError(400, "bad_targets", "give 'nodes' (a list of names or ids), 'group', or 'all': true")
    nodes = []
    for ref in refs:
        node = registry.get(ref)
        if node is None:
            raise ApiError(404, "no_such_node", f"no node with id or name {ref!r}")
        if node.revoked:
            raise ApiError(409, "revoked", f"node {node.name!r} is revoked")
        nodes.append(node)
    return nodes, "nodes:" + ",".join(n.name for n in nodes)


def parse_command(body: dict[str, Any]) -> tuple[list[str] | None, str | None, float]:
    argv, shell = body.get("argv"), body.get("shell")
    if (argv is None) == (shell is None):
        raise ApiError(400, "bad_command", "give exactly one of 'argv' (list of strings) and 'shell' (string)")
    if argv is not None and (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)):
        raise ApiError(400, "bad_command", "argv: expected a non-empty list of strings")
    if shell is not None and (not isinstance(shell, str) or not shell.strip()):
        raise ApiError(400, "bad_command", "shell: expected a non-empty string")
    if len(json.dumps(argv or shell)) > MAX_ARGV_BYTES:
        raise ApiError(413, "too_large", f"command longer than {MAX_ARGV_BYTES} bytes")
    timeout = body.get("timeout", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise ApiError(400, "bad_timeout", f"timeout: seconds, more than 0 and at most {MAX_TIMEOUT_S:.0f}")
    return argv, shell, float(timeout)


@routes.route("POST", "/api/v1/commands", role="operator", audit=False,
              summary="Run a command on nodes (output streams on /api/v1/commands/{id}/stream)",
              body={"nodes": "array", "group": "string", "all": "boolean", "argv": "array", "shell": "string",
                    "timeout": "number"})
async def run_command(request: web.Request) -> web.Response:
    services = _services(request)
    operator = current_operator(request)
    body = await json_body(request)
    argv, shell, timeout = parse_command(body)
    nodes, target = resolve_targets(services, body)
    if target.startswith("nodes:"):
        for node in nodes:
            check_maintenance(node, operator)
    elif operator.role != "admin":
        # Fleet-wide commands from operators skip nodes in maintenance instead of failing.
        skipped = [n for n in nodes if n.maintenance]
        nodes = [n for n in nodes if not n.maintenance]
        if not nodes:
            raise ApiError(403, "maintenance", f"every target is in maintenance ({len(skipped)} nodes)")
    # The audit row commits with the command, before anything is sent to a node.
    audit_row = store.insert_audit(time.time(), operator.name, "command", target, 0, request.remote or "",
                                   {"argv": argv, "shell": shell, "timeout": timeout, "nodes": [n.name for n in nodes]})
    cmd = await services.commands.start(operator.name, nodes, argv, shell, timeout, target, also=audit_row)
    return json_response(cmd.view(), status=201)


def _command(services: Services, command_id: str) -> Any:
    cmd = services.commands.commands.get(command_id)
    if cmd is None:
        raise ApiError(404, "no_such_command", f"no live command {command_id!r} (finished ones: GET /api/v1/commands/{command_id})")
    return cmd


@routes.route("POST", "/api/v1/commands/{id}/cancel", role="operator", audit=False, summary="Cancel a command")
async def cancel_command(request: web.Request) -> web.Response:
    services = _services(request)
    operator = current_operator(request)
    cmd = _command(services, request.match_info["id"])
    await audit(services, request, operator, "cancel", cmd.id, {})
    await services.commands.cancel(cmd, {n.id: n for n in services.registry.all()})
    return json_response(cmd.view())


@routes.route("GET", "/api/v1/commands", role="operator", summary="Recent commands (newest first)",
              query=("node", "limit"))
async def list_commands(request: web.Request) -> web.Response:
    services = _services(request)
    node_id = node_id_param(services, request.query.get("node"))
    # `done` is read before the store (see get_command); a command that appears after this
    # snapshot has just started.
    done = {cid: cmd.done.is_set() for cid, cmd in services.commands.commands.items()}
    rows = await services.queries.recent_commands(node_id, limit_param(request, 50))
    for row in rows:
        row["done"] = done.get(row["id"], row["id"] not in services.commands.commands)
    return json_response({"commands": rows})

@routes.route("GET", "/api/v1/commands/{id}", role="operator", summary="A command: runs, states and stored output")
async def get_command(request: web.Request) -> web.Response:
    services = _services(request)
    command_id = request.match_info["id"]
    # `done` before the store: a command is marked done only after its runs' final states are
    # committed, so a read that starts after it sees them. Read after, `done` could come with a
    # run still "running" in the answer.
    live = services.commands.commands.get(command_id)
    done = live.done.is_set() if live else True
    out = await services.queries.command(command_id)
    if out is None:
        raise ApiError(404, "no_such_command", f"no command {command_id!r}")
    out["done"] = done
    return json_response(out)


@routes.route("GET", "/api/v1/commands/{id}/stream", role="operator", summary="Live output of a command (websocket)")
async def command_stream(request: web.Request) -> web.StreamResponse:
    if not origin_allowed(request):
        raise ApiError(403, "bad_origin", "origin not allowed")
    services = _services(request)
    cmd = _command(services, request.match_info["id"])
    # Finished before we watch: no event will come, and the first frame's runs are final.
    # Otherwise every later state and the `done` arrive through the queue, in order.
    done_before = cmd.done.is_set()
    queue = services.commands.watch(cmd)
    ws = web.WebSocketResponse(heartbeat=OPERATOR_HEARTBEAT_S)
    await ws.prepare(request)
    hang_up = hang_up_of(request)

    async def send(message: dict[str, Any]) -> None:
        # A client that stopped reading is hung up rather than waited for (docs/security.md).
        async with stall_guard(hang_up, "command output"):
            await ws.send_str(dumps(message))

    try:
        await send({"type": "command", **cmd.view()})
        # Output stored before this client came (watching started first, so nothing falls between).
        replayed = 0
        for chunk, run_id, stream, data in await services.queries.command_chunks(cmd.id):
            run = cmd.runs[run_id]
            await send(output_event(chunk, run_id, run.node_id, run.node_name, stream, data))
            replayed = max(replayed, chunk)
        if done_before:
            await send({"type": "done", "id": cmd.id})
            return ws
        reader = asyncio.create_task(_drain_client(ws))
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                event = get.result()
                if event is None:
                    async with stall_guard(hang_up, "command output"):
                        await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow: fell behind the command output")
                    break
                if event["type"] == "output" and event["chunk"] <= replayed:
                    continue
                await send(event)
                if event["type"] == "done":
                    break
        finally:
            reader.cancel()
    except ConnectionError:
        pass  # the client is gone (or was hung up): nothing left to tell it
    finally:
        cmd.watchers.discard(queue)
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                async with stall_guard(hang_up, "command output"):
                    await ws.close()
    return ws


async def _drain_client(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(ConnectionError):  # e.g. the answer to a ping after a hang-up
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break


def _live_node_for(request: web.Request) -> tuple[Services, Operator, NodeState]:
    """Common gate of the relayed websockets (shell, tunnel): origin, role, maintenance, node online."""
    if not origin_allowed(request):
        raise ApiError(403, "bad_origin", "origin not allowed")
    operator = current_operator(request)
    node = find_node(request)
    check_maintenance(node, operator)
    return _services(request), operator, node


def _require_connected(node: NodeState, what: str) -> None:
    if node.send is None:
        raise ApiError(409, "node_offline", f"node {node.name!r} is {node.state}: no {what} possible")


@routes.route("GET", "/api/v1/nodes/{node}/shell", role="operator", audit=False, query=("cols", "rows"),
              summary="Interactive shell on a node (websocket; binary frames are terminal bytes)")
async def shell(request: web.Request) -> web.StreamResponse:
    services, operator, node = _live_node_for(request)
    try:
        cols = int(request.query.get("cols", "80"))
        rows = int(request.query.get("rows", "24"))
    except ValueError:
        raise ApiError(400, "bad_query", "cols and rows: whole numbers") from None
    if not (1 <= cols <= 1000 and 1 <= rows <= 1000):
        raise ApiError(400, "bad_query", "cols and rows: from 1 to 1000")
    _require_connected(node, "shell")
    if services.shells.open_on(node.id) >= MAX_SESSIONS_PER_NODE:
        raise ApiError(429, "too_many_sessions", f"node {node.name!r} already has {MAX_SESSIONS_PER_NODE} shells open")
    await audit(services, request, operator, "shell", node.name, {"cols": cols, "rows": rows})
    session = await services.shells.create(node, operator.name, cols, rows)
    ws = web.WebSocketResponse(heartbeat=OPERATOR_HEARTBEAT_S, max_msg_size=256 * 1024)
    await ws.prepare(request)
    await services.shells.relay(session, ws, hang_up_of(request))
    return ws


@routes.route("GET", "/api/v1/sessions", role="operator", summary="Recorded shell sessions (newest first)",
              query=("node", "limit"))
async def list_sessions(request: web.Request) -> web.Response:
    services = _services(request)
    node_id = node_id_param(services, request.query.get("node"))
    return json_response({"sessions": await services.queries.recent_sessions(node_id, limit_param(request, 200))})


@routes.route("GET", "/api/v1/sessions/{id}/recording", role="operator",
              summary="A session's recording (asciicast v2, playable with asciinema)")
async def recording(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    sid = request.match_info["id"]
    name = await services.queries.session_recording(sid)
    if name is None:
        raise ApiError(404, "no_such_session", f"no shell session {sid!r}")
    path = services.shells.recordings / name
    if not path.exists():
        raise ApiError(404, "no_recording", f"the recording of session {sid!r} is gone")
    return web.FileResponse(path, headers={"Content-Type": "application/x-asciicast"})


@routes.route("GET", "/api/v1/nodes/{node}/tunnel", role="operator", audit=False, query=("host", "port"),
              summary="TCP tunnel through a node (websocket; binary frames are the TCP bytes)")
async def tunnel(request: web.Request) -> web.StreamResponse:
    services, operator, node = _live_node_for(request)
    host = request.query.get("host", "")
    if not host or len(host) > 253 or any(c.isspace() for c in host):
        raise ApiError(400, "bad_query", "host: a host name or IP address")
    port = whole_number(request.query.get("port", "22"), 5)
    if port is None or not 0 < port < 65536:
        raise ApiError(400, "bad_query", "port: a TCP port number")
    if port not in services.config.tunnel_ports:
        allowed = ", ".join(map(str, services.config.tunnel_ports))
        raise ApiError(403, "port_not_allowed", f"tunnels may reach ports {allowed} only (--tunnel-port)")
    _require_connected(node, "tunnel")
    if services.tunnels.open_on(node.id) >= MAX_TUNNELS_PER_NODE:
        raise ApiError(429, "too_many_tunnels", f"node {node.name!r} already has {MAX_TUNNELS_PER_NODE} tunnels open")
    await audit(services, request, operator, "tunnel", node.name, {"host": host, "port": port})
    tun = services.tunnels.create(node, host, port)
    ws = web.WebSocketResponse(heartbeat=OPERATOR_HEARTBEAT_S, max_msg_size=256 * 1024)
    await ws.prepare(request)
    await services.tunnels.relay(tun, ws, hang_up_of(request))
    return ws


@routes.route("POST", "/api/v1/nodes/{node}/actions", role="operator", audit=False,
              summary="Request a tracked action (reboot, restart_demo, stop_demo, start_demo)",
              body={"action": "string", "demo": "string", "timeout": "number"})
async def request_action(request: web.Request) -> web.Response:
    services = _services(request)
    operator = current_operator(request)
    node = find_node(request)
    check_maintenance(node, operator)
    body = await json_body(request)
    kind = body.get("action")
    if kind not in ACTIONS or kind == "update":
        raise ApiError(400, "bad_action", f"action: one of {', '.join(a for a in ACTIONS if a != 'update')}")
    demo = body.get("demo") or ""
    if not isinstance(demo, str) or len(demo) > 256:
        raise ApiError(400, "bad_demo", "demo: a demo name")
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 1 <= timeout <= 86400):
        raise ApiError(400, "bad_timeout", "timeout: seconds from 1 to 86400")
    await audit(services, request, operator, kind, node.name, {"demo": demo})
    action = await services.actions.request(node, operator.name, kind, demo, timeout)
    return json_response(action.view(), status=201)


@routes.route("GET", "/api/v1/actions", role="viewer", summary="Tracked actions (newest first)",
              query=("node", "limit"))
async def list_actions(request: web.Request) -> web.Response:
    services = _services(request)
    node_id = node_id_param(services, request.query.get("node"))
    return json_response({"actions": await services.queries.recent_actions(node_id, limit_param(request, 200))})


@routes.route("GET", "/api/v1/actions/{id}", role="viewer", summary="One tracked action")
async def get_action(request: web.Request) -> web.Response:
    action_id = request.match_info["id"]
    action = await _services(request).queries.action(action_id)
    if action is None:
        raise ApiError(404, "no_such_action", f"no action {action_id!r}")
    return json_response(action)


@routes.route("POST", "/api/v1/update", role="operator", audit=False,
              summary="Update the daemon on nodes to the server's release",
              body={"nodes": "array", "group": "string", "all": "boolean"})
async def update_nodes(request: web.Request) -> web.Response:
    services = _services(request)
    operator = current_operator(request)
    release = services.release.current()
    if release is None:
        raise ApiError(409, "no_release", "the server holds no daemon release (POST /api/v1/release)")
    nodes, target = resolve_targets(services, await json_body(request))
    if target.startswith("nodes:"):
        for node in nodes:
            check_maintenance(node, operator)
    elif operator.role != "admin":
        nodes = [n for n in nodes if not n.maintenance]
    await audit(services, request, operator, "update", target, {"version": release.version,
                                                                "nodes": [n.name for n in nodes]})
    url = services.public_url() + "/api/v1/release/daemon"
    actions = []
    for node in nodes:
        if node.daemon_version == release.version:
            continue
        actions.append((await services.actions.request(node, operator.name, "update", release=release,
                                                       download_url=url,
                                                       endorsements=services.release.endorsements())).view())
    return json_response({"version": release.version, "actions": actions}, status=201)


def _release_view(services: Services) -> dict[str, Any]:
    current = services.release.current()
    return {
        "version": current.version if current else None, "sha256": current.sha256 if current else None,
        "size": current.size if current else 0, "release_key": services.release.public,
        "endorsements": services.release.endorsements(),
    }


@routes.route("GET", "/api/v1/release", role="viewer", summary="The daemon release nodes update to")
async def release_info(request: web.Request) -> web.Response:
    return json_response(_release_view(_services(request)))


@routes.route("GET", "/api/v1/node/release", role=NODE,
              summary="The same, for a node (client certificate): how it follows release-key rotations")
async def node_release_info(request: web.Request) -> web.Response:
    services = _services(request)
    who = authenticate_node(services, request)
    if isinstance(who, web.Response):
        return who
    return json_response(_release_view(services))


@routes.route("GET", "/api/v1/release/daemon", role=PUBLIC,
              summary="The daemon file (signed; verify with the release key before use)")
async def release_file(request: web.Request) -> web.StreamResponse:
    current = _services(request).release.current()
    if current is None:
        raise ApiError(404, "no_release", "no daemon release")
    return web.FileResponse(current.path, headers={
        "Content-Type": "text/x-python", "X-Dvic-Version": current.version, "X-Dvic-Signature": current.signature})


async def _read_release_body(request: web.Request) -> bytes:
    """The raw body up to the release limit: this route's own, the app's client_max_size is for JSON."""
    too_large = ApiError(413, "too_large", f"a daemon file is at most {MAX_DAEMON_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_DAEMON_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_DAEMON_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@routes.route("POST", "/api/v1/release", role="admin",
              summary=f"Publish a new daemon file (raw body, at most {MAX_DAEMON_BYTES} bytes), signed")
async def publish_release(request: web.Request) -> web.Response:
    services = _services(request)
    data = await _read_release_body(request)
    try:
        # Compiling up to 2 MiB takes a while: not on the event loop every node shares.
        release = await asyncio.to_thread(services.release.publish, data)
    except ReleaseError as exc:
        raise ApiError(400, "bad_release", str(exc)) from None
    return json_response({"version": release.version, "sha256": release.sha256, "size": release.size},
                         status=201)


@routes.route("POST", "/api/v1/release/rotate-key", role="admin",
              summary="Rotate the release key (the new key is endorsed by the old one)")
async def rotate_release_key(request: web.Request) -> web.Response:
    endorsement = _services(request).release.rotate()
    return json_response(endorsement, status=201)
