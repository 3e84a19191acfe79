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

from .pki import der_fingerprint
from .services import SERVICES
from .tokens import CALLER_KEY, bearer, hash_token

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
        if self.clock() - self.since >= SUMMARY_WINDOW_S:
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


class _Line:
    """One request's line, written when the request is over (a websocket: when it closes)."""

    __slots__ = ("request", "identity", "started", "status")

    def __init__(self, request: web.Request, identity: str) -> None:
        self.request = request
        self.identity = identity
        self.started = time.monotonic()
        self.status = 500

    def __enter__(self) -> _Line:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if isinstance(exc, web.HTTPException):
            self.status = exc.status  # aiohttp's 404/405/413, answered by the errors middleware
        request = self.request
        url = request.rel_url
        write_line(request.remote or "-", self.identity or request.get(CALLER_KEY, "-"), request.method,
                   loggable_target(url.raw_path, url.raw_query_string), self.status, self.started)


def write_line(remote: str, identity: str, method: str, target: str, status: int, started: float) -> None:
    """One request's line (`started`: its time.monotonic() when it came)."""
    log.info("%s %s %s %s %d %.1f ms", remote, identity, method, target, status, (time.monotonic() - started) * 1000)


class AccessLog:
    """What the auth middleware (central/auth.py) calls for the access log of one server."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES or mode == "off":
            raise ValueError(f"access log mode must be 'on' or 'all', got {mode!r}")
        self.log_keepalives = mode == "all"
        self.tally = KeepaliveTally()

    def request(self, request: web.Request, node: bool) -> _Line:
        self.tally.flush()
        # A node websocket's transport is gone once it closes: say who it is first.
        return _Line(request, _node_identity(request) if node else "")


# The server's access log, for what is served below aiohttp (node links, central/nodehub.py).
ACCESS_LOG = web.AppKey("access_log", AccessLog)
