"""Commands run on nodes: start, cancel, list, one command with its stored output, its live stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

from dvic_core.constants import CLOSE_TOO_SLOW, OPERATOR_HEARTBEAT_S
from dvic_core.schema import Array, Number, Object, Query, SchemaError, Str

from .. import store
from ..auth import ApiError, current_operator
from ..commands import Command, output_event
from ..relay import hang_up_of, stall_guard
from ..routes import params, routes
from ..services import Services
from ..stream import origin_allowed
from ..strictjson import dumps, json_response
from .params import limit, node_id, node_ref, services
from .rules import actable, audit, resolve_targets, target_fields

MAX_TIMEOUT_S = 3600.0
MAX_ARGV_BYTES = 64 * 1024


def _one_command(body: dict[str, Any]) -> None:
    argv, shell = body["argv"], body["shell"]
    if (argv is None) == (shell is None):
        raise SchemaError("give exactly one of 'argv' (list of strings) and 'shell' (string)", "bad_command")
    if len(json.dumps(argv or shell)) > MAX_ARGV_BYTES:
        raise SchemaError(f"command longer than {MAX_ARGV_BYTES} bytes", "too_large", 413)


COMMAND = Object({
    "argv": Array(Str(), min_items=1, nullable=True, code="bad_command", expects="expected a non-empty list of strings",
                  doc="the program and its arguments, run without a shell"),
    "shell": Str(nonblank=True, nullable=True, code="bad_command", doc="a command line for /bin/sh -c"),
    "timeout": Number(above=0, max=MAX_TIMEOUT_S, default=60.0, code="bad_timeout",
                      expects=f"seconds, more than 0 and at most {MAX_TIMEOUT_S:.0f}"),
    **target_fields(),
}, checks=[_one_command])


@routes.route("POST", "/api/v1/commands", role="operator", audit=False,
              summary="Run a command on nodes (output streams on /api/v1/commands/{id}/stream)", body=COMMAND)
async def run_command(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    operator = current_operator(request)
    nodes, target = resolve_targets(svc, p)
    within = actable(svc, nodes, target, operator)
    if not within and not target.startswith("nodes:") and operator.role != "admin":
        # Fleet-wide commands from operators skip nodes in maintenance or booked by others instead of failing.
        raise ApiError(403, "maintenance", f"every target is in maintenance or booked by someone else "
                                           f"({len(nodes)} nodes)")
    argv, shell, timeout = p["argv"], p["shell"], p["timeout"]
    # The audit row commits with the command, before anything is sent to a node.
    audit_row = store.insert_audit(time.time(), operator.name, "command", target, 0, request.remote or "",
                                   {"argv": argv, "shell": shell, "timeout": timeout,
                                    "nodes": [n.name for n in within]})
    cmd = await svc.commands.start(operator.name, within, argv, shell, timeout, target, also=audit_row)
    return json_response(cmd.view(), status=201)


def _live_command(svc: Services, command_id: str) -> Command:
    cmd = svc.commands.commands.get(command_id)
    if cmd is None:
        raise ApiError(404, "no_such_command",
                       f"no live command {command_id!r} (finished ones: GET /api/v1/commands/{command_id})")
    return cmd


@routes.route("POST", "/api/v1/commands/{id}/cancel", role="operator", audit=False, summary="Cancel a command")
async def cancel_command(request: web.Request) -> web.Response:
    svc = services(request)
    operator = current_operator(request)
    cmd = _live_command(svc, request.match_info["id"])
    await audit(svc, request, operator, "cancel", cmd.id, {})
    await svc.commands.cancel(cmd, {n.id: n for n in svc.registry.all()})
    return json_response(cmd.view())


@routes.route("GET", "/api/v1/commands", role="operator", summary="Recent commands (newest first)",
              query=Query({"node": node_ref(), "limit": limit(50)}))
async def list_commands(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    node = node_id(svc, p["node"])
    # `done` is read before the store (see get_command); a command that appears after this
    # snapshot has just started.
    done = {cid: cmd.done.is_set() for cid, cmd in svc.commands.commands.items()}
    rows = await svc.queries.recent_commands(node, p["limit"])
    for row in rows:
        row["done"] = done.get(row["id"], row["id"] not in svc.commands.commands)
    return json_response({"commands": rows})


@routes.route("GET", "/api/v1/commands/{id}", role="operator", summary="A command: runs, states and stored output")
async def get_command(request: web.Request) -> web.Response:
    svc = services(request)
    command_id = request.match_info["id"]
    # `done` before the store: a command is marked done only after its runs' final states are
    # committed, so a read that starts after it sees them. Read after, `done` could come with a
    # run still "running" in the answer.
    live = svc.commands.commands.get(command_id)
    done = live.done.is_set() if live else True
    out = await svc.queries.command(command_id)
    if out is None:
        raise ApiError(404, "no_such_command", f"no command {command_id!r}")
    out["done"] = done
    return json_response(out)


@routes.route("GET", "/api/v1/commands/{id}/stream", role="operator", summary="Live output of a command (websocket)")
async def command_stream(request: web.Request) -> web.StreamResponse:
    if not origin_allowed(request):
        raise ApiError(403, "bad_origin", "origin not allowed")
    svc = services(request)
    cmd = _live_command(svc, request.match_info["id"])
    # Finished before we watch: no event will come, and the first frame's runs are final.
    # Otherwise every later state and the `done` arrive through the queue, in order.
    done_before = cmd.done.is_set()
    queue = svc.commands.watch(cmd)
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
        for chunk, run_id, stream, data in await svc.queries.command_chunks(cmd.id):
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
