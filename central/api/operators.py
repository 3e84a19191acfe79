"""Operator accounts (admin): create, approve, change role, disable, delete, issue tokens; the audit trail."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from dvic_core.constants import ROLES
from dvic_core.schema import Enum, Number, Object, Query, Str

from .. import accounts, store
from ..auth import ApiError, current_operator
from ..dbconn import WriteConn, conflicts
from ..queries import QueryError
from ..routes import params, routes
from ..services import Services
from ..strictjson import json_response
from ..tokens import hash_token, new_token
from .params import cursor, limit, services

OPERATOR_NAME = Str(pattern=accounts.OPERATOR_NAME.pattern, required=True, code="bad_name",
                    message=accounts.OPERATOR_NAME_RULE)
EXPIRES_IN = Number(above=0, max=accounts.MAX_TOKEN_LIFETIME_S, nullable=True,
                    expects=f"seconds from now, more than 0 and at most {accounts.MAX_TOKEN_LIFETIME_S:.0f} "
                            "(ten years)",
                    doc="seconds until the token stops working; absent: never")


def _role(**options: Any) -> Enum:
    return Enum(ROLES, code="bad_role", **options)


def expires_at(expires_in: float | None) -> float | None:
    """When a new token stops working; None: never."""
    return None if expires_in is None else time.time() + expires_in


async def create_operator(services: Services, name: str, role: str, status: str, by: str = "",
                          expires_at: float | None = None, also: store.WriteFn | None = None) -> str:
    """A new account and its first token (returned: it is shown once)."""
    token = new_token()
    now = time.time()

    def create(conn: WriteConn) -> None:
        store.create_operator(name, role, status, now, approved_by=by)(conn)
        _add_token(token, name, now, "created", expires_at)(conn)
        if also is not None:
            also(conn)

    try:
        await services.writer.submit(create)
    except conflicts():
        raise ApiError(409, "name_taken", f"an operator named {name!r} already exists") from None
    return token


def _add_token(token: str, name: str, now: float, label: str, expires_at: float | None) -> store.WriteFn:
    def add(conn: WriteConn) -> None:
        store.add_token(hash_token(token), name, now, label=label)(conn)
        if expires_at is not None:
            accounts.set_token_expiry(hash_token(token), expires_at)(conn)

    return add


async def _operator_or_404(services: Services, name: str) -> dict[str, Any]:
    row = await services.queries.operator(name)
    if row is None:
        raise ApiError(404, "no_such_operator", f"no operator named {name!r}")
    return row


@routes.route("GET", "/api/v1/operators", role="admin", summary="All operator accounts")
async def list_operators(request: web.Request) -> web.Response:
    svc = services(request)
    operators = await svc.queries.operators()
    tokens = await accounts.token_summaries(svc.read_db, time.time())
    pending = await accounts.registrations(svc.read_db)
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
              body=Object({"name": OPERATOR_NAME, "role": _role(default="viewer"), "expires_in": EXPIRES_IN}))
async def create_active_operator(request: web.Request) -> web.Response:
    p = params(request)
    expires = expires_at(p["expires_in"])
    token = await create_operator(services(request), p["name"], p["role"], "active", current_operator(request).name,
                                  expires)
    return json_response({"name": p["name"], "role": p["role"], "status": "active", "token": token,
                          "expires_at": expires}, status=201)


@routes.route("POST", "/api/v1/operators/{name}/approve", role="admin",
              summary="Approve a pending operator (with the code its requester was shown)",
              body=Object({"role": _role(default="viewer"),
                           "code": Str(nullable=True, code="code_required",
                                       doc="the code the requester was shown (self-registered accounts)")}))
async def approve_operator(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    name = request.match_info["name"]
    row = await _operator_or_404(svc, name)
    if row["status"] != "pending":
        raise ApiError(409, "not_pending", f"operator {name!r} is {row['status']}, not pending")
    registration = await accounts.registration(svc.read_db, name)
    if registration is not None:
        # The code ties the approval to the person who registered: a squatter cannot tell it.
        code = p["code"]
        if code is None or not code.strip():
            raise ApiError(400, "code_required", f"approving {name!r} needs the code shown to them when they "
                                                 f"registered: ask them for it (dvic operators approve {name} "
                                                 "--code CODE)")
        if not accounts.code_matches(code, registration["code_hash"]):
            raise ApiError(403, "wrong_code", f"that is not the code {name!r} was given: nothing changed; "
                                              "check it with the person, or delete the account if nobody has it")

    def approve(conn: WriteConn) -> None:
        store.update_operator(name, role=p["role"], status="active", approved_by=current_operator(request).name)(conn)
        accounts.drop_registration(name)(conn)

    await svc.writer.submit(approve)
    return json_response(await svc.queries.operator(name))


@routes.route("POST", "/api/v1/operators/{name}/role", role="admin", summary="Change an operator's role",
              body=Object({"role": _role(required=True)}))
async def set_role(request: web.Request) -> web.Response:
    svc, role = services(request), params(request)["role"]
    name = request.match_info["name"]
    await _operator_or_404(svc, name)
    if name == current_operator(request).name and role != "admin":
        raise ApiError(409, "self_demotion", "an admin cannot remove their own admin role")
    await svc.writer.submit(store.update_operator(name, role=role))
    return json_response(await svc.queries.operator(name))


@routes.route("DELETE", "/api/v1/operators/{name}", role="admin", summary="Disable an operator and its tokens")
async def disable_operator(request: web.Request) -> web.Response:
    svc = services(request)
    name = request.match_info["name"]
    await _operator_or_404(svc, name)
    if name == current_operator(request).name:
        raise ApiError(409, "self_disable", "an admin cannot disable their own account")
    now = time.time()

    def disable(conn: WriteConn) -> None:
        store.update_operator(name, status="disabled")(conn)
        store.revoke_tokens(name, now)(conn)

    await svc.writer.submit(disable)
    return json_response(await svc.queries.operator(name))


@routes.route("POST", "/api/v1/operators/{name}/delete", role="admin",
              summary="Delete a pending or disabled account and its tokens (its name becomes free)")
async def delete_operator(request: web.Request) -> web.Response:
    svc = services(request)
    name = request.match_info["name"]
    row = await _operator_or_404(svc, name)
    if row["status"] == "active":
        raise ApiError(409, "still_active", f"operator {name!r} is active: disable it first "
                                            f"(dvic operators disable {name})")
    await svc.writer.submit(accounts.delete_operator(name))
    return json_response({"name": name, "deleted": True, "was": row["status"]})


@routes.route("POST", "/api/v1/operators/{name}/tokens", role="admin", summary="Issue a new token (shown once)",
              body=Object({"expires_in": EXPIRES_IN}), optional_body=True)
async def issue_token(request: web.Request) -> web.Response:
    svc = services(request)
    name = request.match_info["name"]
    row = await _operator_or_404(svc, name)
    if row["status"] == "disabled":
        raise ApiError(409, "disabled", f"operator {name!r} is disabled")
    expires = expires_at(params(request)["expires_in"])
    token = new_token()
    await svc.writer.submit(_add_token(token, name, time.time(), f"issued by {current_operator(request).name}",
                                       expires))
    return json_response({"name": name, "token": token, "expires_at": expires}, status=201)


@routes.route("GET", "/api/v1/audit", role="admin", summary="Audit trail (newest first)",
              query=Query({"cursor": cursor(), "limit": limit()}))
async def audit(request: web.Request) -> web.Response:
    p = params(request)
    try:
        page = await services(request).queries.audit(cursor=p["cursor"], limit=p["limit"])
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    return json_response({"entries": page.items, "next_cursor": page.next_cursor})
