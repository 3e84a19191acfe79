"""Operator authentication and the route table: every endpoint is declared with who may call it.

A handler becomes reachable only through `RouteTable.route(...)`, which requires a role; the
auth middleware enforces it before the handler runs, and records every state-changing call in
the audit table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import store

ROLES = ("viewer", "operator", "admin")
RANK = {"pending": 0, "viewer": 1, "operator": 2, "admin": 3}
PUBLIC = "public"
PENDING = "pending"
# Routes a node calls: the handler itself authenticates the node (certificate or node token).
NODE = "node"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_token(prefix: str = "dvo") -> str:
    """A random bearer token; the prefix tells operator (dvo) and node (dvn) tokens apart."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    # The header repeats the reason for websocket clients, whose libraries drop a refused upgrade's body.
    header = f"{code}: {message}".encode("ascii", "replace").decode()[:300]
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status,
                             headers={"X-Dvic-Error": header})


class ApiError(Exception):
    """Raised by handlers; turned into the documented JSON error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    status: str

    @property
    def rank(self) -> int:
        return RANK[self.role] if self.status == "active" else 0


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    role: str
    summary: str
    handler: Handler
    audit: bool
    query: tuple[str, ...] = ()
    body: dict[str, str] = field(default_factory=dict)


class RouteTable:
    def __init__(self) -> None:
        self.specs: list[RouteSpec] = []

    def route(self, method: str, path: str, *, role: str, summary: str, audit: bool | None = None,
              query: tuple[str, ...] = (), body: dict[str, str] | None = None) -> Callable[[Handler], Handler]:
        if role not in (PUBLIC, NODE, PENDING, *ROLES):
            raise ValueError(f"unknown role {role!r} for {method} {path}")

        def register(handler: Handler) -> Handler:
            self.specs.append(RouteSpec(
                method, path, role, summary, handler,
                audit=method not in ("GET", "HEAD") if audit is None else audit,
                query=query, body=body or {},
            ))
            return handler

        return register

    def install(self, app: web.Application) -> dict[Any, RouteSpec]:
        """Add every declared route to the app; returns aiohttp route -> declaration."""
        return {app.router.add_route(s.method, s.path, s.handler): s for s in self.specs}

OPERATOR_KEY = "dvic_operator"


def current_operator(request: web.Request) -> Operator:
    operator = request.get(OPERATOR_KEY)
    if operator is None:
        raise ApiError(401, "unauthenticated", "this endpoint needs an operator token")
    return operator


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


LookupToken = Callable[[str], Awaitable[dict[str, Any] | None]]
SubmitWrite = Callable[[store.WriteFn], Awaitable[Any]]


def auth_middleware(specs: dict[Any, RouteSpec], lookup: LookupToken, submit: SubmitWrite) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = specs.get(request.match_info.route)
        if spec is None:
            # Not declared in the route table: unreachable by construction (404/405 from aiohttp).
            return await _guard(request, handler)
        operator: Operator | None = None
        if spec.role not in (PUBLIC, NODE):
            token = bearer(request)
            if token is None:
                return error_response(401, "unauthenticated", "missing 'Authorization: Bearer <token>' header")
            row = await lookup(hash_token(token))
            if row is None:
                return error_response(401, "bad_token", "unknown or revoked token")
            operator = Operator(row["name"], row["role"], row["status"])
            if operator.status == "disabled":
                return error_response(403, "disabled", f"account {operator.name!r} is disabled")
            if spec.role != PENDING:
                if operator.status == "pending":
                    return error_response(
                        403, "pending_approval",
                        f"account {operator.name!r} is waiting for an admin's approval",
                    )
                if operator.rank < RANK[spec.role]:
                    return error_response(
                        403, "forbidden", f"this needs the {spec.role} role; {operator.name!r} is {operator.role}"
                    )
            request[OPERATOR_KEY] = operator
        response = await _guard(request, handler)
        if spec.audit and spec.role != NODE:
            who = operator.name if operator else "-"
            target = "/".join(f"{k}={v}" for k, v in request.match_info.items())
            await submit(store.insert_audit(
                time.time(), who, f"{request.method} {spec.path}", target, response.status,
                request.remote or "", {},
            ))
        return response

    return middleware


async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
