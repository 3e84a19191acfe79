"""The routes anyone may call (health, self-registration) and the caller's own account."""

from __future__ import annotations

import math
import time

from aiohttp import web

from dvic_core.schema import Object

from .. import __version__, accounts
from ..auth import PENDING, PUBLIC, ApiError, current_operator
from ..routes import params, routes
from ..strictjson import json_response
from .operators import OPERATOR_NAME, create_operator
from .params import services


@routes.route("GET", "/api/v1/health", role=PUBLIC, summary="Liveness of the server")
async def health(request: web.Request) -> web.Response:
    svc = services(request)
    return json_response({"ok": True, "version": __version__, "nodes": len(svc.registry),
                          "uptime": time.time() - svc.started_at, "replica": svc.cluster.replica})


async def registration_gate(request: web.Request) -> None:
    """Registration open, and this address within its attempts: every attempt counts, well-formed or not."""
    gate = request.app[accounts.REGISTRATION]
    if not gate.enabled:
        raise ApiError(403, "registration_closed",
                       "self-registration is off on this server: ask an admin to create your account")
    full = await gate.admit(request.remote or "")
    if full is None:
        return
    limit, minutes = full.budget.limit, max(1, math.ceil(full.wait / 60))
    if full.budget == gate.address_budget:
        why = f"too many registration attempts from this address: at most {limit} an hour (--register-per-address)"
    else:
        why = f"too many accounts registered: at most {limit} an hour on this server (--register-total)"
    raise ApiError(429, "rate_limited", f"{why}; try again in {minutes} min", retry_after=full.wait)


@routes.route("POST", "/api/v1/register", role=PUBLIC,
              summary="Self-registration (when the server allows it): a pending operator and its one-time code",
              body=Object({"name": OPERATOR_NAME}), gate=registration_gate)
async def register(request: web.Request) -> web.Response:
    svc = services(request)
    name = params(request)["name"]
    if await accounts.pending_count(svc.read_db) >= svc.config.max_pending:
        raise ApiError(429, "too_many_pending",
                       f"{svc.config.max_pending} accounts already wait for approval: ask an admin")
    code = accounts.new_code()
    token = await create_operator(svc, name, "viewer", "pending",
                                  also=accounts.add_registration(name, accounts.hash_code(code), request.remote or "",
                                                                 time.time()))
    await request.app[accounts.REGISTRATION].count_created()
    return json_response({
        "name": name, "status": "pending", "token": token, "code": code,
        "message": f"account created; tell an admin your code {code}: they need it to approve you",
    }, status=201)


@routes.route("GET", "/api/v1/me", role=PENDING, summary="The calling operator")
async def me(request: web.Request) -> web.Response:
    op = current_operator(request)
    return json_response({"name": op.name, "role": op.role, "status": op.status})
