"""History: stored log lines and events, newest first, a page at a time."""

from __future__ import annotations

from aiohttp import web

from dvic_core.constants import LEVELS, LOG_SOURCES
from dvic_core.schema import Enum, Query, Str

from ..auth import ApiError
from ..queries import QueryError
from ..routes import params, routes
from ..strictjson import json_response
from .params import cursor, limit, node_id, node_named, node_ref, node_refs, services, since_until


@routes.route("GET", "/api/v1/logs", role="viewer", summary="Log history (newest first)", query=Query({
    "node": node_refs(),
    "group": Str(blank_is_value=True, doc="the nodes of this group (when no `node` is given)"),
    "demo": Str(doc="a demo's token"),
    "source": Enum(LOG_SOURCES, expects="expected demo, system or daemon"),
    "level": Enum(LEVELS, ignore_case=True, doc="this level and above"),
    "q": Str(doc="full-text search: every word must appear, the last as a prefix"),
    **since_until("lines"),
    "cursor": cursor(),
    "limit": limit(),
}))
async def logs(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    node_ids: list[str] | None = None
    if p["node"]:
        node_ids = [node_named(svc, ref).id for ref in p["node"]]
    elif p["group"] is not None:
        node_ids = [n.id for n in svc.registry.all() if n.group == p["group"]]
    try:
        page = await svc.queries.logs(
            node_ids=node_ids, source=p["source"], min_level=p["level"], text=p["q"], since=p["from"],
            until=p["to"], cursor=p["cursor"], limit=p["limit"], demo=p["demo"],
        )
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    return json_response({"lines": page.items, "next_cursor": page.next_cursor})


@routes.route("GET", "/api/v1/events", role="viewer", summary="Events (newest first)", query=Query({
    "node": node_ref(), "kind": Str(doc="only events of this kind"), **since_until("events"),
    "cursor": cursor(), "limit": limit(),
}))
async def events(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    try:
        page = await svc.queries.events(
            node_id=node_id(svc, p["node"]), kind=p["kind"], since=p["from"], until=p["to"], cursor=p["cursor"],
            limit=p["limit"],
        )
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    return json_response({"events": page.items, "next_cursor": page.next_cursor})
