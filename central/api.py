"""Operator API (/api/v1): nodes, history, operators, audit. Every handler is declared with its role."""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Any

from aiohttp import web

from dvic_core.constants import LOG_SOURCES, NODE_KINDS, NODE_STATES, RANK, ROLES

from . import __version__, accounts, store
from .auth import (
    PENDING,
    PUBLIC,
    ApiError,
    Operator,
    current_operator,
)
from .enroll import enroll_node, ever_connected
from .queries import QueryError
from .registry import NodeState
from .routes import routes
from .services import SERVICES, Services
from .strictjson import JsonError, check_numbers, json_response, loads
from .tokens import hash_token, new_token

MAX_LIMIT = 1000


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; strict JSON only (no NaN/Infinity, 64-bit integers, bounded nesting)."""
    try:
        body = loads(await request.read())
        check_numbers(body)
    except JsonError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return body


def whole_number(raw: str, max_digits: int = 9) -> int | None:
    """`raw` as a plain decimal of at most `max_digits` ASCII digits, else None (`str.isdigit` alone
    also accepts '²', which int() then refuses)."""
    if not raw or len(raw) > max_digits or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


def _float_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name}: expected a number (Unix seconds), got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, "bad_query", f"{name}: expected a finite, non-negative number (Unix seconds)")
    return value


def limit_param(request: web.Request, default: int = 100) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    limit = whole_number(raw, 4)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "bad_query", f"limit: expected an integer from 1 to {MAX_LIMIT}")
    return limit


def node_id_param(services: Services, ref: str | None) -> str | None:
    """The id of the node a `node` query parameter names (name or id); None when not given."""
    if not ref:
        return None
    node = services.registry.get(ref)
    if node is None:
        raise ApiError(404, "no_such_node", f"no node with id or name {ref!r}")
    return node.id


def find_node(request: web.Request) -> NodeState:
    ref = request.match_info["node"]
    node = _services(request).registry.get(ref)
    if node is None:
        raise ApiError(404, "no_such_node", f"no node with id or name {ref!r}")
    return node


# -- public ------------------------------------------------------------------------------------
@routes.route("GET", "/api/v1/health", role=PUBLIC, summary="Liveness of the server")
async def health(request: web.Request) -> web.Response:
    services = _services(request)
    return json_response({"ok": True, "version": __version__, "nodes": len(services.registry),
                          "uptime": time.time() - services.started_at})


@routes.route("POST", "/api/v1/register", role=PUBLIC,
              summary="Self-registration (when the server allows it): a pending operator and its one-time code",
              body={"name": "string"})
async def register(request: web.Request) -> web.Response:
    services = _services(request)
    gate = request.app[accounts.REGISTRATION]
    if not gate.enabled:
        raise ApiError(403, "registration_closed",
                       "self-registration is off on this server: ask an admin to create your account")
    wait = gate.attempt(request.remote or "")
    if wait:
        raise ApiError(429, "rate_limited", f"too many registrations: try again in {wait / 60:.0f} min")
    body = await json_body(request)
    name = _operator_name(body)
    if await accounts.pending_count(services.read_db) >= services.config.max_pending:
        raise ApiError(429, "too_many_pending",
                       f"{services.config.max_pending} accounts already wait for approval: ask an admin")
    code = accounts.new_code()
    token = await _create_operator(services, name, "viewer", "pending",
                                   also=accounts.add_registration(name, accounts.hash_code(code), request.remote or "",
                                                                  time.time()))
    gate.created()
    return json_response({
        "name": name, "status": "pending", "token": token, "code": code,
        "message": f"account created; tell an admin your code {code}: they need it to approve you",
    }, status=201)


def _operator_name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not accounts.valid_operator_name(name):
        raise ApiError(400, "bad_name", accounts.OPERATOR_NAME_RULE)
    return str(name)


def _expires_at(body: dict[str, Any]) -> float | None:
    """When a new token stops working, from the body's `expires_in` (seconds); None: never."""
    value = body.get("expires_in")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value <= accounts.MAX_TOKEN_LIFETIME_S):
        raise ApiError(400, "bad_field", f"expires_in: seconds from now, more than 0 and at most "
                                         f"{accounts.MAX_TOKEN_LIFETIME_S:.0f} (ten years)")
    return time.time() + value


async def _create_operator(services: Services, name: str, role: str, status: str, by: str = "",
                           expires_at: float | None = None, also: store.WriteFn | None = None) -> str:
    token = new_token()
    now = time.time()

    def create(conn: sqlite3.Connection) -> None:
        store.create_operator(name, role, status, now, approved_by=by)(conn)
        _add_token(token, name, now, "created", expires_at)(conn)
        if also is not None:
            also(conn)

    try:
        await services.writer.submit(create)
    except sqlite3.IntegrityError:
        raise ApiError(409, "name_taken", f"an operator named {name!r} already exists") from None
    return token


def _add_token(token: str, name: str, now: float, label: str, expires_at: float | None) -> store.WriteFn:
    def add(conn: sqlite3.Connection) -> None:
        store.add_token(hash_token(token), name, now, label=label)(conn)
        if expires_at is not None:
            accounts.set_token_expiry(hash_token(token), expires_at)(conn)

    return add


@routes.route("GET", "/api/v1/me", role=PENDING, summary="The calling operator")
async def me(request: web.Request) -> web.Response:
    op = current_operator(request)
    return json_response({"name": op.name, "role": op.role, "status": op.status})


# -- nodes -------------------------------------------------------------------------------------
@routes.route("GET", "/api/v1/nodes", role="viewer", summary="List nodes", query=("group", "kind", "state"))
async def list_nodes(request: web.Request) -> web.Response:
    q = request.query
    state = q.get("state")
    if state and state not in NODE_STATES:
        raise ApiError(400, "bad_query", f"state: expected one of {', '.join(NODE_STATES)}")
    kind = q.get("kind")
    if kind and kind not in NODE_KINDS:
        raise ApiError(400, "bad_query", f"kind: expected one of {', '.join(NODE_KINDS)}")
    group = q.get("group")
    nodes = [
        n.summary() for n in _services(request).registry.all()
        if (not state or n.state == state) and (not kind or n.kind == kind) and (group is None or n.group == group)
    ]
    return json_response({"nodes": nodes})


@routes.route("GET", "/api/v1/nodes/{node}", role="viewer", summary="Node detail")
async def node_detail(request: web.Request) -> web.Response:
    return json_response(find_node(request).detail())


@routes.route("POST", "/api/v1/nodes", role="operator", summary="Enroll a node; returns its bundle once",
              body={"name": "string", "kind": "string", "group": "string"})
async def enroll(request: web.Request) -> web.Response:
    body = await json_body(request)
    bundle = await enroll_node(_services(request), body.get("name"), body.get("kind", "desktop"),
                               body.get("group", ""), by=current_operator(request).name)
    return json_response(bundle, status=201)


@routes.route("DELETE", "/api/v1/nodes/{node}", role="operator",
              summary="Revoke a node (an operator: only its own enrollment that never connected)")
async def revoke(request: web.Request) -> web.Response:
    node = find_node(request)
    if node.revoked:
        raise ApiError(409, "already_revoked", f"node {node.name!r} is already revoked")
    operator = current_operator(request)
    if operator.rank < RANK["admin"]:
        await _check_own_enrollment(_services(request), node, operator)
    await _services(request).registry.revoke(node, operator.name)
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
              body={"on": "boolean"})
async def maintenance(request: web.Request) -> web.Response:
    node = find_node(request)
    body = await json_body(request)
    on = body.get("on")
    if not isinstance(on, bool):
        raise ApiError(400, "bad_field", "on: expected true or false")
    await _services(request).registry.set_maintenance(node, on, current_operator(request).name)
    return json_response(node.summary())


@routes.route("GET", "/api/v1/nodes/{node}/metrics", role="viewer", summary="Metric history",
              query=("from", "to", "step", "names"))
async def node_metrics(request: web.Request) -> web.Response:
    node = find_node(request)
    now = time.time()
    until = _float_param(request, "to") or now
    since = _float_param(request, "from")
    since = until - 3600 if since is None else since
    if since >= until:
        raise ApiError(400, "bad_query", "from must be before to")
    raw_step = request.query.get("step", "")
    given_step = whole_number(raw_step, 12)
    if raw_step and given_step is None:
        raise ApiError(400, "bad_query", "step: expected a whole number of seconds")
    step = given_step if given_step is not None else max(5, int((until - since) / 300))
    if step < 1 or (until - since) / step > 10_000:
        raise ApiError(400, "bad_query", "step: too small for this range (at most 10,000 points per series)")
    if step >= 60:
        step -= step % 60
    names = [n for n in request.query.get("names", "").split(",") if n] or None
    series = await _services(request).queries.metrics(node.id, names, since, until, step)
    return json_response({"node": node.id, "from": since, "to": until, "step": step, "series": series})


# -- history -----------------------------------------------------------------------------------
@routes.route("GET", "/api/v1/logs", role="viewer", summary="Log history (newest first)",
              query=("node", "source", "level", "q", "from", "to", "cursor", "limit", "demo"))
async def logs(request: web.Request) -> web.Response:
    services = _services(request)
    q = request.query
    node_ids: list[str] | None = None
    if q.get("node"):
        node_ids = []
        for ref in q["node"].split(","):
            node = services.registry.get(ref)
            if node is None:
                raise ApiError(404, "no_such_node", f"no node with id or name {ref!r}")
            node_ids.append(node.id)
    elif q.get("group") is not None:
        node_ids = [n.id for n in services.registry.all() if n.group == q["group"]]
    source = q.get("source")
    if source and source not in LOG_SOURCES:
        raise ApiError(400, "bad_query", "source: expected demo, system or daemon")
    try:
        page = await services.queries.logs(
            node_ids=node_ids, source=source, min_level=q.get("level"), text=q.get("q") or None,
            since=_float_param(request, "from"), until=_float_param(request, "to"), cursor=q.get("cursor"),
            limit=limit_param(request), demo=q.get("demo") or None,
        )
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    return json_response({"lines": page.items, "next_cursor": page.next_cursor})


@routes.route("GET", "/api/v1/events", role="viewer", summary="Events (newest first)",
              query=("node", "kind", "from", "to", "cursor", "limit"))
async def events(request: web.Request) -> web.Response:
    services = _services(request)
    node_id = node_id_param(services, request.query.get("node"))
    try:
        page = await services.queries.events(
            node_id=node_id, kind=request.query.get("kind") or None, since=_float_param(request, "from"),
            until=_float_param(request, "to"), cursor=request.query.get("cursor"), limit=limit_param(request),
        )
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    return json_response({"events": page.items, "next_cursor": page.next_cursor})


# -- operators ---------------------------------------------------------------------------------
def _role(body: dict[str, Any], default: str | None = None) -> str:
    role = body.get("role", default)
    if role not in ROLES:
        raise ApiError(400, "bad_role", f"role: expected one of {', '.join(ROLES)}")
    return str(role)


async def _operator_or_404(services: Services, name: str) -> dict[str, Any]:
    row = await services.queries.operator(name)
    if row is None:
        raise ApiError(404, "no_such_operator", f"no operator named {name!r}")
    return row


@routes.route("GET", "/api/v1/operators", role="admin", summary="All operator accounts")
async def list_operators(request: web.Request) -> web.Response:
    services = _services(request)
    operators = await services.queries.operators()
    tokens = await accounts.token_summaries(services.read_db, time.time())
    pending = await accounts.registrations(services.read_db)
    for op in operators:
        summary = tokens.get(op["name"], {})
        op["last_used_at"] = summary.get("last_used_at")
        op["token_expires_at"] = summary.get("expires_at")
        if op["name"] in pending:
            # Approving this account needs the code its requester was shown (and tells the admin).
            op["registered_from"] = pending[op["name"]]["remote"]
            op["needs_code"] = True
    return json_response({"operators": operators})


@routes.route("POST", "/api/v1/operators", role="admin", summary="Create an active operator",
              body={"name": "string", "role": "string", "expires_in": "integer"})
async def create_operator(request: web.Request) -> web.Response:
    body = await json_body(request)
    name = _operator_name(body)
    role = _role(body, "viewer")
    expires_at = _expires_at(body)
    token = await _create_operator(_services(request), name, role, "active", current_operator(request).name,
                                   expires_at)
    return json_response({"name": name, "role": role, "status": "active", "token": token,
                              "expires_at": expires_at}, status=201)


@routes.route("POST", "/api/v1/operators/{name}/approve", role="admin",
              summary="Approve a pending operator (with the code its requester was shown)",
              body={"role": "string", "code": "string"})
async def approve_operator(request: web.Request) -> web.Response:
    services = _services(request)
    name = request.match_info["name"]
    row = await _operator_or_404(services, name)
    if row["status"] != "pending":
        raise ApiError(409, "not_pending", f"operator {name!r} is {row['status']}, not pending")
    body = await json_body(request)
    role = _role(body, "viewer")
    registration = await accounts.registration(services.read_db, name)
    if registration is not None:
        # The code ties the approval to the person who registered: a squatter cannot tell it.
        code = body.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ApiError(400, "code_required", f"approving {name!r} needs the code shown to them when they "
                                                 f"registered: ask them for it (dvic operators approve {name} "
                                                 "--code CODE)")
        if not accounts.code_matches(code, registration["code_hash"]):
            raise ApiError(403, "wrong_code", f"that is not the code {name!r} was given: nothing changed; "
                                              "check it with the person, or delete the account if nobody has it")

    def approve(conn: sqlite3.Connection) -> None:
        store.update_operator(name, role=role, status="active", approved_by=current_operator(request).name)(conn)
        accounts.drop_registration(name)(conn)

    await services.writer.submit(approve)
    return json_response(await services.queries.operator(name))


@routes.route("POST", "/api/v1/operators/{name}/role", role="admin", summary="Change an operator's role",
              body={"role": "string"})
async def set_role(request: web.Request) -> web.Response:
    services = _services(request)
    name = request.match_info["name"]
    await _operator_or_404(services, name)
    role = _role(await json_body(request))
    if name == current_operator(request).name and role != "admin":
        raise ApiError(409, "self_demotion", "an admin cannot remove their own admin role")
    await services.writer.submit(store.update_operator(name, role=role))
    return json_response(await services.queries.operator(name))


@routes.route("DELETE", "/api/v1/operators/{name}", role="admin", summary="Disable an operator and its tokens")
async def disable_operator(request: web.Request) -> web.Response:
    services = _services(request)
    name = request.match_info["name"]
    await _operator_or_404(services, name)
    if name == current_operator(request).name:
        raise ApiError(409, "self_disable", "an admin cannot disable their own account")
    now = time.time()

    def disable(conn: sqlite3.Connection) -> None:
        store.update_operator(name, status="disabled")(conn)
        store.revoke_tokens(name, now)(conn)

    await services.writer.submit(disable)
    return json_response(await services.queries.operator(name))


@routes.route("POST", "/api/v1/operators/{name}/delete", role="admin",
              summary="Delete a pending or disabled account and its tokens (its name becomes free)")
async def delete_operator(request: web.Request) -> web.Response:
    services = _services(request)
    name = request.match_info["name"]
    row = await _operator_or_404(services, name)
    if row["status"] == "active":
        raise ApiError(409, "still_active", f"operator {name!r} is active: disable it first "
                                            f"(dvic operators disable {name})")
    await services.writer.submit(accounts.delete_operator(name))
    return json_response({"name": name, "deleted": True, "was": row["status"]})


@routes.route("POST", "/api/v1/operators/{name}/tokens", role="admin", summary="Issue a new token (shown once)",
              body={"expires_in": "integer"})
async def issue_token(request: web.Request) -> web.Response:
    services = _services(request)
    name = request.match_info["name"]
    row = await _operator_or_404(services, name)
    if row["status"] == "disabled":
        raise ApiError(409, "disabled", f"operator {name!r} is disabled")
    expires_at = _expires_at(await _optional_body(request))
    token = new_token()
    await services.writer.submit(_add_token(token, name, time.time(), f"issued by {current_operator(request).name}",
                                            expires_at))
    return json_response({"name": name, "token": token, "expires_at": expires_at}, status=201)


async def _optional_body(request: web.Request) -> dict[str, Any]:
    """The JSON body, or {} when there is none (the route worked without one before)."""
    return await json_body(request) if request.can_read_body else {}


@routes.route("GET", "/api/v1/audit", role="admin", summary="Audit trail (newest first)", query=("cursor", "limit"))
async def audit(request: web.Request) -> web.Response:
    try:
        page = await _services(request).queries.audit(cursor=request.query.get("cursor"), limit=limit_param(request))
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    return json_response({"entries": page.items, "next_cursor": page.next_cursor})
