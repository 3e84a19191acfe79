"""Bearer tokens: making one, the hash the store keeps, and reading one from a request.

A leaf below auth.py, so the access log and the services (which auth.py's middleware uses) can
read tokens without importing the middleware's module (no import cycle, tests/test_layers.py).
"""

from __future__ import annotations

import hashlib
import secrets

from aiohttp import web

# The name of the account whose token came with the request, even when the call was refused (logs).
CALLER_KEY = web.RequestKey("caller", str)


def new_token(prefix: str = "dvo") -> str:
    """A random bearer token; the prefix tells operator (dvo) and node (dvn) tokens apart."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
