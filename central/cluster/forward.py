"""Operators' API calls of the feature areas, answered by the features leader (issue 18;
docs/architecture.md "Several replicas: the features leader").

On a replica that does not lead the feature areas (central/cluster/features.py), a call to one of
their routes (alerts, rules, silences, notification channels and routes, the calendar, runbooks,
bookings, demos, releases, deployments) is passed to the leader's own HTTPS address over the
installation's CA, and the leader's answer (status, body, the headers that matter) comes back
unchanged: there is one truth, whichever replica an operator lands on. The body goes through as it
arrives and the answer as it comes (a release upload or a large listing is never held whole). The
leader authenticates the operator's token, checks the role, audits and answers, as for a call made
to it directly. The middleware runs before the auth middleware, so nothing is checked or audited
twice.

When no replica leads (the lead moving after a replica died), or the leader does not answer within
`CONNECT_TIMEOUT_S` (or stops answering for `READ_TIMEOUT_S`), the caller gets 503
`leader_unavailable` naming the replica and why. A forwarded call is never forwarded again: a
replica that has just lost the lead answers 503 instead (`VIA_HEADER` marks it).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from ..auth import NODE, PUBLIC, Handler, RouteSpec, error_response
from ..pki import replica_of_peer
from .features import LEADER_WAIT_S, Features

log = logging.getLogger(__name__)

# The feature areas' routes, by the first segments of their path (every operator route under these).
FEATURE_PREFIXES = (
    "/api/v1/alerts", "/api/v1/silences", "/api/v1/rules", "/api/v1/channels", "/api/v1/alert-routes",
    "/api/v1/notifications", "/api/v1/calendar", "/api/v1/runbooks", "/api/v1/firings", "/api/v1/bookings",
    "/api/v1/demos", "/api/v1/deployments",
)
VIA_HEADER = "X-Dvic-Forwarded-By"
# The operator's address as the forwarding replica saw it: believed only on a connection whose
# client certificate is a replica's (pki.replica_of_peer), never from anyone else.
CLIENT_HEADER = "X-Dvic-Client-Address"
# On a forwarded answer: the replica that answered it (the leader).
ANSWERED_HEADER = "X-Dvic-Answered-By"
CONNECT_TIMEOUT_S = 2.0
# Between two reads of the leader's answer; a channel test waits for a receiver, a release upload
# for the leader to check the archive.
READ_TIMEOUT_S = 60.0
# Passed to the leader: what the call means and who makes it. Not hop-by-hop headers, not Host.
REQUEST_HEADERS = ("Authorization", "Content-Type", "Content-Length", "Accept", "Range", "If-None-Match",
                   "User-Agent")
# Passed back: what a client of the API reads (our error header among them).
RESPONSE_HEADERS = ("Content-Type", "Content-Disposition", "Content-Range", "Accept-Ranges", "ETag",
                    "Last-Modified", "Cache-Control", "Location", "Retry-After", "X-Dvic-Error")
CHUNK = 256 * 1024
SAFE_METHODS = ("GET", "HEAD")


def feature_route(spec: RouteSpec) -> bool:
    """An operator's route of a feature area (a node's routes and the public ones stay local)."""
    if spec.role in (NODE, PUBLIC):
        return False
    return any(spec.path == p or spec.path.startswith(p + "/") for p in FEATURE_PREFIXES)


class Unreachable(Exception):
    """The leader could not be reached: no answer of it began."""


def leader_unavailable(message: str) -> web.Response:
    return error_response(503, "leader_unavailable", message)


class Forwarder:
    """The HTTPS client to the leader: one pooled session, checking the leader's certificate against
    the installation's CA (and its address against the certificate)."""

    def __init__(self, tls_of: Callable[[str], ssl.SSLContext]) -> None:
        self.tls_of = tls_of  # this replica's client TLS (CA.replica_client_context), by its name
        self.forwarded = 0  # calls passed to the leader (tests, bench)
        self._session: aiohttp.ClientSession | None = None

    def session(self, replica: str) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            context = self.tls_of(replica)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=64),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
                auto_decompress=False)
        return self._session

    async def close(self, _app: web.Application | None = None) -> None:
        """(also aiohttp's on_cleanup)"""
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request, via: str, leader: str, url: str) -> web.StreamResponse:
        """The leader's answer; Unreachable when no answer began (nothing of it was relayed)."""
        headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
        headers[VIA_HEADER] = via
        headers[CLIENT_HEADER] = request.remote or ""
        body: Any = request.content if request.body_exists else None
        target = url.rstrip("/") + request.rel_url.raw_path_qs
        self.forwarded += 1
        try:
            answer = await self.session(via).request(request.method, target, headers=headers, data=body,
                                                  allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            log.warning("replica %s: %s %s not forwarded to replica %s (%s): %s", via, request.method,
                        request.path, leader, url, exc or type(exc).__name__)
            why = str(exc) or type(exc).__name__
            raise Unreachable(f"replica {leader}, which leads the feature areas (at {url}), could not be reached "
                              f"from replica {via}: {why}; try again") from None
        try:  # (a leader lost while its answer streams: the caller sees the answer cut short)
            return await self._relay(request, answer, leader)
        finally:
            answer.release()

    async def _relay(self, request: web.Request, answer: aiohttp.ClientResponse, leader: str) -> web.StreamResponse:
        headers = {name: answer.headers[name] for name in RESPONSE_HEADERS if name in answer.headers}
        headers[ANSWERED_HEADER] = leader
        if answer.content_length is not None and answer.content_length <= CHUNK:
            return web.Response(status=answer.status, headers=headers, body=await answer.read())
        response = web.StreamResponse(status=answer.status, headers=headers)
        if answer.content_length is not None:
            response.content_length = answer.content_length
        await response.prepare(request)
        async for chunk in answer.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


def as_called(request: web.Request) -> web.Request:
    """A call forwarded by a replica, as its operator made it: the operator's address (for the
    audit, the access log and the per-address refusals) when the connection's client certificate
    is a replica's; any other caller's CLIENT_HEADER is ignored."""
    claimed = request.headers.get(CLIENT_HEADER, "")
    if not claimed or not replica_of_peer(request.transport.get_extra_info("peercert") if request.transport else None):
        return request
    try:
        address = str(ipaddress.ip_address(claimed))
    except ValueError:
        return request
    return request.clone(remote=address)


def forward_middleware(specs: dict[Any, RouteSpec], features_of: Callable[[web.Application], Features],
                       forwarder: Forwarder) -> Any:
    """aiohttp middleware: see the module's docstring. Placed before the auth middleware;
    `features_of` finds the server's Features (opened with the app, after the middleware is made)."""
    routes = {route for route, spec in specs.items() if feature_route(spec)}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route not in routes:
            return await handler(request)
        features = features_of(request.app)
        if features.leading:
            return await handler(as_called(request))
        if VIA_HEADER in request.headers:
            return leader_unavailable(f"replica {features.replica} was asked by replica "
                                      f"{request.headers[VIA_HEADER]} as the features leader, but does not "
                                      "lead them (the lead is moving): try again")
        tried = ""
        while True:
            leader = await features.wait_for_leader(LEADER_WAIT_S, other_than=tried)
            if features.leading:  # (it became the leader meanwhile)
                return await handler(request)
            if leader is None or not leader.url:
                return leader_unavailable(features.why_no_leader())
            try:
                return await forwarder.forward(request, features.replica, leader.replica, leader.url)
            except Unreachable as exc:
                # The leader may have died a moment ago (the others hear it within 3 s, another leads
                # 2 s later): a read waits for the next one; a change is not sent twice.
                if tried or request.method not in SAFE_METHODS:
                    return leader_unavailable(str(exc))
                tried = leader.replica

    return middleware
