"""Operator authentication and the route table: every endpoint is declared with who may call it.

A handler becomes reachable only through `RouteTable.route(...)`, which requires a role and
declares the schemas of the route's parameters (checked next, by central/routes.py); the auth
middleware enforces the role before the handler runs, records every state-changing call in the
audit table (refused ones too), counts refusals for a missing or unknown token per client address,
and writes the access log (central/accesslog.py).
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dvic_core.constants import RANK, ROLES
from dvic_core.schema import Object, Query, Raw

from . import accounts, store
from .cluster.attempts import Budget, SharedAttempts
from .errors import Refusal
from .strictjson import json_response
from .tokens import CALLER_KEY, bearer, hash_token

if TYPE_CHECKING:
    from .accesslog import AccessLog

PUBLIC = "public"
PENDING = "pending"
# Routes a node calls: the handler itself authenticates the node (certificate or node token).
NODE = "node"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def error_response(status: int, code: str, message: str, retry_after: float | None = None,
                   **extra: Any) -> web.Response:
    # The header repeats the reason for websocket clients, whose libraries drop a refused upgrade's body.
    header = f"{code}: {message}".encode("ascii", "replace").decode()[:300]
    headers = {"X-Dvic-Error": header}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return json_response({"error": {"code": code, "message": message, **extra}}, status=status, headers=headers)


class ApiError(Refusal):
    """Raised by handlers; turned into the documented JSON error body (`retry_after`: seconds until
    the same call may succeed, sent as Retry-After)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.retry_after)


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
    """One endpoint: who may call it, what it audits, and the schemas of its parameters.

    `query` and `body` are checked before the handler runs (central/routes.py), after this
    module's role check, so a caller without the role gets 401/403, never a 400 about its input.
    Routes a node calls (role NODE) authenticate in the handler, which parses its body after that.
    """

    method: str
    path: str
    role: str
    summary: str
    handler: Handler
    audit: bool
    query: Query | None = None
    body: Object | Raw | None = None
    # An empty (or all-whitespace) body counts as `{}` (a body that was added to a route later).
    optional_body: bool = False
    # The most bytes of a JSON body, and the message past it; None: the app's client_max_size.
    body_limit: tuple[int, str] | None = None
    # Runs before the parameters are parsed: a gate whose answer must not depend on the input
    # (self-registration counts every attempt, well-formed or not).
    gate: Callable[[web.Request], Awaitable[None]] | None = None
    # Declared audit=False: the handler writes its own audit row (remote control, before acting).
    audited_by_handler: bool = False

    @property
    def changes_state(self) -> bool:
        """A call worth an audit row: refused ones are recorded by the middleware for both kinds."""
        return self.audit or self.audited_by_handler

    @property
    def declares_params(self) -> bool:
        return self.query is not None or self.body is not None or self.gate is not None


Wrap = Callable[[RouteSpec], Handler]


class RouteTable:
    def __init__(self) -> None:
        self.specs: list[RouteSpec] = []

    def route(self, method: str, path: str, *, role: str, summary: str, audit: bool | None = None,
              query: Query | None = None, body: Object | Raw | None = None, optional_body: bool = False,
              body_limit: tuple[int, str] | None = None,
              gate: Callable[[web.Request], Awaitable[None]] | None = None) -> Callable[[Handler], Handler]:
        if role not in (PUBLIC, NODE, PENDING, *ROLES):
            raise ValueError(f"unknown role {role!r} for {method} {path}")
        if query is not None and isinstance(body, Object) and set(query.fields) & set(body.fields):
            raise ValueError(f"{method} {path}: a name is both a query parameter and a body field")

        def register(handler: Handler) -> Handler:
            self.specs.append(RouteSpec(
                method, path, role, summary, handler,
                audit=method not in ("GET", "HEAD") if audit is None else audit,
                query=query, body=body, optional_body=optional_body, body_limit=body_limit, gate=gate,
                audited_by_handler=audit is False,
            ))
            return handler

        return register

    def install(self, app: web.Application, wrap: Wrap) -> dict[Any, RouteSpec]:
        """Add every declared route to the app, each handler as `wrap` makes it; returns aiohttp
        route -> declaration."""
        return {app.router.add_route(s.method, s.path, wrap(s)): s for s in self.specs}


OPERATOR_KEY = web.RequestKey("operator", Operator)


def current_operator(request: web.Request) -> Operator:
    operator: Operator | None = request.get(OPERATOR_KEY)
    if operator is None:
        raise ApiError(401, "unauthenticated", "this endpoint needs an operator token")
    return operator


LookupToken = Callable[[str], Awaitable[dict[str, Any] | None]]
SubmitWrite = Callable[[store.WriteFn], Awaitable[Any]]
SubmitLater = Callable[[store.WriteFn], None]
# Who a refused call without a known token is recorded as.
ANONYMOUS = "anonymous"
# The anonymous audit budget's name in the shared count (central/cluster/attempts.py).
AUDIT_SCOPE = "anonymous_audit"
log = logging.getLogger("dvic-central.auth")


class Refusals:
    """Requests refused for a missing, unknown or expired token (401), counted per client address.

    The first refusal from an address in a window is logged at once and the rest as one count when
    the window is over, so a token-guessing loop costs one log line a minute. Refused calls by
    nobody known get at most AUDIT_PER_WINDOW audit rows per address and window: the audit trail
    records the attempt without letting an anonymous flood write a row per request. With several
    replicas (`shared`, on PostgreSQL) that budget is also counted with the others (a sliding
    minute: central/cluster/attempts.py), so an address spraying refusals over the replicas gets no
    more rows than from one server. Guessed tokens are never kept, not even hashed.
    """

    WINDOW_S = 60.0
    AUDIT_PER_WINDOW = 10
    AUDIT = Budget(AUDIT_SCOPE, AUDIT_PER_WINDOW, WINDOW_S)

    def __init__(self, max_addresses: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_addresses = max_addresses
        self.clock = clock
        # address -> [window start, 401s, anonymous refusals, of which audited]
        self._windows: dict[str, list[float]] = {}
        self._last_sweep = clock()
        self.shared: SharedAttempts | None = None

    def unauthenticated(self, remote: str) -> None:
        window = self._window(remote)
        window[1] += 1
        if window[1] == 1:
            log.warning("refused a request from %s: missing, unknown or expired token", remote or "?")

    def may_audit_anonymous(self, remote: str) -> bool:
        """Counts an anonymous refusal from `remote`: may it have an audit row (this server's budget)?"""
        window = self._window(remote)
        window[2] += 1
        if window[3] >= self.AUDIT_PER_WINDOW:
            return False
        window[3] += 1
        return True

    async def audit_anonymous(self, remote: str) -> bool:
        """may_audit_anonymous, and with replicas the budget they share too."""
        if not self.may_audit_anonymous(remote):
            return False
        window = self._windows[remote]
        if self.shared is None or await self.shared.take(self.AUDIT, remote) is None:
            return True
        window[3] -= 1  # not audited after all: the other replicas used the address's budget
        return False

    def sweep(self) -> None:
        """Report and forget the windows that are over (cheap: does work once per window)."""
        now = self.clock()
        if now - self._last_sweep >= self.WINDOW_S:
            self._drop_finished(now)

    def _drop_finished(self, now: float) -> None:
        self._last_sweep = now
        for remote, window in list(self._windows.items()):
            if now - window[0] >= self.WINDOW_S:
                self._report(remote, self._windows.pop(remote))

    def _window(self, remote: str) -> list[float]:
        now = self.clock()
        window = self._windows.get(remote)
        if window is not None and now - window[0] < self.WINDOW_S:
            return window
        if window is not None:
            self._report(remote, window)
        elif len(self._windows) >= self.max_addresses:
            self._drop_finished(now)
            # Still full (refusals from very many addresses): the oldest half is reported early.
            for old in list(self._windows)[: max(len(self._windows) - self.max_addresses // 2, 0)]:
                self._report(old, self._windows.pop(old))
        window = self._windows[remote] = [now, 0, 0, 0]
        return window

    def _report(self, remote: str, window: list[float]) -> None:
        if window[1] > 1:
            log.warning("refused %d requests from %s in %.0f s: missing, unknown or expired token",
                        window[1], remote or "?", self.WINDOW_S)
        if window[2] > window[3]:
            log.warning("%d refused calls from %s were not audited (at most %d per %.0f s per address)",
                        window[2] - window[3], remote or "?", self.AUDIT_PER_WINDOW, self.WINDOW_S)


def error_code(response: web.StreamResponse) -> str:
    """The error code of one of our error responses ("" for anything else)."""
    return response.headers.get("X-Dvic-Error", "").partition(":")[0]


def auth_middleware(specs: dict[Any, RouteSpec], lookup: LookupToken, submit: SubmitWrite,
                    submit_later: SubmitLater | None = None, refusals: Refusals | None = None,
                    access: AccessLog | None = None) -> Any:
    """Role checks, audit rows (refusals included), 401 counts and, given `access`, the access log."""
    refusals = refusals or Refusals()
    last_use = accounts.LastUse()

    async def audit(request: web.Request, spec: RouteSpec, who: str, response: web.StreamResponse,
                    detail: dict[str, Any]) -> None:
        target = "/".join(f"{k}={v}" for k, v in request.match_info.items())
        if response.status >= 400:
            detail = {"error": error_code(response), **detail}
        await submit(store.insert_audit(time.time(), who, f"{request.method} {spec.path}", target, response.status,
                                        request.remote or "", detail))

    async def authenticate(spec: RouteSpec, token: str | None) -> tuple[web.Response | None, Operator | None]:
        """(refusal, operator): the refusal is None when the token may call this route."""
        if token is None:
            return error_response(401, "unauthenticated", "missing 'Authorization: Bearer <token>' header"), None
        token_hash = hash_token(token)
        row = await lookup(token_hash)
        if row is None:
            return error_response(401, "bad_token", "unknown or revoked token"), None
        operator = Operator(row["name"], row["role"], row["status"])
        now = time.time()
        expires_at = row.get("expires_at")
        if expires_at is not None and now >= expires_at:
            return error_response(
                401, "token_expired",
                f"this token of {operator.name!r} expired on {_utc(expires_at)}: ask an admin for a new one",
            ), operator
        if submit_later is not None and last_use.due(token_hash, row.get("last_used_at"), now):
            submit_later(accounts.touch_token(token_hash, now))
        if operator.status == "disabled":
            return error_response(403, "disabled", f"account {operator.name!r} is disabled"), operator
        if spec.role != PENDING:
            if operator.status == "pending":
                return error_response(
                    403, "pending_approval", f"account {operator.name!r} is waiting for an admin's approval",
                ), operator
            if operator.rank < RANK[spec.role]:
                return error_response(
                    403, "forbidden", f"this needs the {spec.role} role; {operator.name!r} is {operator.role}"
                ), operator
        return None, operator

    async def refused(request: web.Request, spec: RouteSpec, response: web.Response, operator: Operator | None,
                      token: str | None) -> web.Response:
        remote = request.remote or ""
        if response.status == 401:
            refusals.unauthenticated(remote)
        if spec.changes_state and (operator is not None or await refusals.audit_anonymous(remote)):
            # The token's hash prefix tells an admin which token was used; the token is not kept.
            detail = {"token": hash_token(token)[:8]} if token and operator is not None else {}
            await audit(request, spec, operator.name if operator else ANONYMOUS, response, detail)
        return response

    async def handle(request: web.Request, handler: Handler, spec: RouteSpec | None) -> web.StreamResponse:
        if spec is None:
            # Not declared in the route table: unreachable by construction (404/405 from aiohttp).
            return await _guard(request, handler)
        refusals.sweep()
        if spec.role in (PUBLIC, NODE):
            response = await _guard(request, handler)
            if response.status == 401:
                refusals.unauthenticated(request.remote or "")
            if spec.audit and spec.role == PUBLIC and (
                    response.status < 400 or await refusals.audit_anonymous(request.remote or "")):
                await audit(request, spec, ANONYMOUS, response, {})
            return response
        token = bearer(request)
        refusal, operator = await authenticate(spec, token)
        if operator is not None:
            request[CALLER_KEY] = operator.name
        if refusal is not None:
            return await refused(request, spec, refusal, operator, token)
        assert operator is not None  # authenticate() refuses every call it finds no operator for
        request[OPERATOR_KEY] = operator
        response = await _guard(request, handler)
        if spec.audit:
            await audit(request, spec, operator.name if operator else ANONYMOUS, response, {})
        return response

    # Keep-alives are a fleet's hot path (thousands a second): their route is checked first and
    # costs a counter, not a log line. The node route's handler authenticates the node itself.
    keepalive_routes = {route for route, spec in specs.items() if spec.role == NODE and spec.method == "POST"}
    if access is not None and access.log_keepalives:
        keepalive_routes = set()

    # Access logging lives in this middleware rather than its own: one more middleware layer costs
    # each keep-alive more than this whole middleware does.
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        if route in keepalive_routes:
            response = await _guard(request, handler)
            if response.status == 401:
                refusals.unauthenticated(request.remote or "")
            if access is not None:
                access.tally.add(response.status)
            return response
        spec = specs.get(route)
        if access is None:
            return await handle(request, handler, spec)
        with access.request(request, node=spec is not None and spec.role == NODE) as line:
            response = await handle(request, handler, spec)
            line.status = response.status
            return response

    return middleware


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
