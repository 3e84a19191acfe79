"""The access log: one line per HTTP request on the `dvic-central.access` logger.

A line says who asked what and how it went: client address, identity (operator name, `node:NAME`
or `-`), method, path (query values whose names look secret are masked), status and duration.
A websocket is one request: its line comes when it closes, with the connection's lifetime.

Modes (`dvic-central serve --access-log`): `on` (default) logs every request except node
keep-alives, which a fleet sends by the thousand per second: those are counted and summed up once a
minute; `all` logs keep-alives one by one too; `off` logs nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from typing import Any

from aiohttp import web

from .auth import NODE, OPERATOR_KEY, Handler, RouteSpec, bearer, hash_token
from .pki import der_fingerprint
from .services import SERVICES

MODES = ("on", "all", "off")
SUMMARY_WINDOW_S = 60.0
MAX_PATH_CHARS = 300
# Query values never written to the log, by the parameter's name.
_SECRET_NAME = re.compile(r"token|secret|passw|key|code|auth", re.IGNORECASE)
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")

log = logging.getLogger("dvic-central.access")


def loggable_target(raw_path: str, raw_query: str) -> str:
    """The request target as sent (percent-encoded), secret query values masked, one safe line."""
    if raw_query:
        parts = []
        for pair in raw_query.split("&"):
            name, eq, _ = pair.partition("=")
            parts.append(f"{name}=***" if eq and _SECRET_NAME.search(name) else pair)
        raw_path = f"{raw_path}?{'&'.join(parts)}"
    text = _UNPRINTABLE.sub(lambda m: f"%{ord(m.group()):02X}" if ord(m.group()) < 256 else "?", raw_path)
    return text if len(text) <= MAX_PATH_CHARS else text[:MAX_PATH_CHARS] + "…"


def _node_identity(request: web.Request) -> str:
    """`node:NAME` from the node's token or certificate (cheap lookups; `node` when unknown)."""
    services = request.app[SERVICES]
    token = bearer(request)
    node = services.registry.by_token_hash(hash_token(token)) if token else None
    if node is None and request.transport is not None:
        ssl_object = request.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        node = services.registry.by_fingerprint(der_fingerprint(der)) if der else None
    return f"node:{node.name}" if node is not None else "node"


class KeepaliveTally:
    """Keep-alive answers by status, written as one line per SUMMARY_WINDOW_S."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.counts: Counter[int] = Counter()
        self.since = clock()

    def add(self, status: int) -> None:
        self.counts[status] += 1
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.since < SUMMARY_WINDOW_S:
            return
        if self.counts:
            by_status = ", ".join(f"{status}: {n}" for status, n in sorted(self.counts.items()))
            log.info("node keep-alives in the last %.0f s: %d (%s)", now - self.since, sum(self.counts.values()),
                     by_status)
        self.counts.clear()
        self.since = now


def access_middleware(mode: str, specs: dict[Any, RouteSpec]) -> Any:
    if mode not in MODES:
        raise ValueError(f"access log mode must be one of {', '.join(MODES)}, got {mode!r}")
    tally = KeepaliveTally()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = specs.get(request.match_info.route)
        keepalive = spec is not None and spec.role == NODE and spec.method == "POST"
        if keepalive and mode != "all":
            response = await handler(request)
            tally.add(response.status)
            return response
        tally.flush()
        started = time.monotonic()
        # A node websocket's transport is gone once it closes: say who it is first.
        identity = _node_identity(request) if spec is not None and spec.role == NODE else ""
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            operator = request.get(OPERATOR_KEY)
            log.info("%s %s %s %s %d %.1f ms", request.remote or "-", identity or (operator.name if operator else "-"),
                     request.method, loggable_target(request.rel_url.raw_path, request.rel_url.raw_query_string),
                     status, (time.monotonic() - started) * 1000)

    return middleware
