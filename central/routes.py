"""The server's one route table, and the layer that hands each handler its checked parameters.

Handler modules declare their endpoints on `routes` (see auth.RouteTable) with the schemas of
their query and body (dvic_core/schema.py). `install` wraps each handler that declares any: the
wrapper parses the query and the body by those schemas, after the auth middleware's role check
and before the handler, and answers 400 (or 413) with the schema's code and message. Handlers read
`params(request)`, never the raw query or body. Routes a node calls (role NODE) authenticate the
node in the handler first, then call `await node_params(request)`.

The OpenAPI document (openapi.py) is built from the same schemas.
"""

from __future__ import annotations

import difflib
from typing import Any

from aiohttp import web

from dvic_core.schema import Raw, SchemaError, Stream

from .auth import NODE, ApiError, Handler, RouteSpec, RouteTable
from .strictjson import JsonError, check_numbers, loads

routes = RouteTable()

PARAMS = web.RequestKey("params", dict)
SPECS = web.AppKey("route_specs", dict)


def install(app: web.Application) -> dict[Any, RouteSpec]:
    """Add every declared route to `app`; returns aiohttp route -> declaration (also in app[SPECS])."""
    specs = routes.install(app, _with_params)
    app[SPECS] = specs
    return specs


def params(request: web.Request) -> dict[str, Any]:
    """The route's query parameters and body fields, parsed by its declared schemas."""
    return request[PARAMS]


async def node_params(request: web.Request) -> dict[str, Any]:
    """For a node's route, once the handler has authenticated the node: its parsed parameters."""
    spec: RouteSpec = request.app[SPECS][request.match_info.route]
    return await parse_params(request, spec)


def _with_params(spec: RouteSpec) -> Handler:
    handler = spec.handler
    if not spec.declares_params or spec.role == NODE:
        return handler

    async def parse_then_handle(request: web.Request) -> web.StreamResponse:
        if spec.gate is not None:
            await spec.gate(request)
        request[PARAMS] = await parse_params(request, spec)
        return await handler(request)

    return parse_then_handle


async def parse_params(request: web.Request, spec: RouteSpec) -> dict[str, Any]:
    """Query, then body; ApiError with the schema's code (bad_query, bad_field by default)."""
    parsed: dict[str, Any] = {}
    if spec.query is not None:
        parsed.update(_checked(spec.query.parse, request.query, "bad_query"))
    if isinstance(spec.body, Stream):
        parsed["body"] = request.content  # read by the handler as it arrives, never whole
    elif isinstance(spec.body, Raw):
        parsed["body"] = await _read_raw(request, spec.body)
    elif spec.body is not None:
        body = await _json_body(request, spec)
        if not isinstance(body, dict) and spec.body.expects is None:
            # (a body whose schema says what it expects instead, the keep-alive's, answers bad_field)
            raise ApiError(400, "bad_json", "body must be a JSON object")
        if spec.role != NODE and isinstance(body, dict):
            _refuse_unknown_fields(body, spec.body.fields)
        parsed.update(_checked(spec.body.parse, body, "bad_field"))
    return parsed


def _refuse_unknown_fields(body: dict[str, Any], declared: dict[str, Any]) -> None:
    """An operator's misspelled field would otherwise be dropped in silence (`expires` for
    `expires_in` issued a token that never expires). Node messages stay lenient: a newer daemon
    may send more."""
    unknown = sorted(set(body) - set(declared))
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], list(declared), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else (
        f" (this request takes {', '.join(sorted(declared))})" if declared else " (this request takes none)")
    raise ApiError(400, "unknown_field", f"unknown field {unknown[0]!r}{hint}")


def _checked(parse: Any, value: Any, default_code: str) -> dict[str, Any]:
    try:
        result: dict[str, Any] = parse(value)
    except SchemaError as exc:
        raise ApiError(exc.status, exc.code or default_code, exc.message) from None
    return result


async def _json_body(request: web.Request, spec: RouteSpec) -> Any:
    """The body as strict JSON (no NaN/Infinity, 64-bit integers, bounded nesting)."""
    raw = await _read_json_text(request, spec.body_limit)
    if spec.optional_body and not raw.strip():
        return {}
    try:
        body = loads(raw)
        check_numbers(body)
    except JsonError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    return body


async def _read_json_text(request: web.Request, limit: tuple[int, str] | None) -> bytes:
    if limit is None:
        return await request.read()  # the app's client_max_size: aiohttp answers 413 past it
    return await _read_at_most(request, *limit)


async def _read_raw(request: web.Request, body: Raw) -> bytes:
    return await _read_at_most(request, body.max_bytes, body.message or f"body over {body.max_bytes} bytes")


async def _read_at_most(request: web.Request, limit: int, too_large: str) -> bytes:
    """The body, refused with 413 past `limit` bytes (this route's own: the app's is for JSON)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", too_large)
        chunks.append(chunk)
    return b"".join(chunks)

