"""Notification channels, their routes, and the delivery queue (docs/alerts.md "Notifications").

Viewers read channels (never a secret: central/alerts/channels/queries.py builds every view
without the secrets column), routes and notifications; operators add and remove channels and
routes, send a channel's test message, and resend notifications. Every change is audited by the
middleware, which records the path's names (the channel, the notification), never a body.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dvic_core.schema import Array, Enum, Int, Object, Query, Str

from ..alerts.channels import queries
from ..alerts.channels.send import DeliveryFailed
from ..alerts.channels.spec import (
    CHANNEL_KINDS,
    MAX_CA_PEM,
    MAX_RECIPIENTS,
    MAX_SECRET,
    MAX_URL,
    SMTP_SECURITY,
    ChannelInvalid,
    parse_channel,
)
from ..alerts.channels.store import NOTIFICATION_STATES
from ..alerts.dispatcher import RouteInvalid
from ..alerts.routing import ANY, ROUTE_SEVERITIES
from ..auth import ApiError, current_operator
from ..queries import QueryError, decode_cursor, encode_cursor
from ..routes import params, routes
from ..strictjson import json_response
from .params import cursor, limit, services

V1 = "/api/v1"


def _secret(doc: str) -> Str:
    return Str(max_len=MAX_SECRET, doc=f"{doc} (stored on the server, never returned)")


CHANNEL = Object({
    "kind": Enum(CHANNEL_KINDS, required=True, code="bad_kind"),
    "url": Str(max_len=MAX_URL, code="bad_url",
               doc="webhook, ntfy (the topic's URL), slack, mattermost, discord: http(s) only; kept secret"),
    "secret": _secret("webhook: the HMAC-SHA256 key that signs each body"),
    "token": _secret("ntfy: an access token"),
    "host": Str(max_len=255, code="bad_host", doc="smtp: the server's host name or address"),
    "port": Int(min=1, max=65535, code="bad_port", doc="smtp: 587 (starttls) or 465 (tls) if absent"),
    "security": Enum(SMTP_SECURITY, doc="smtp: starttls (the default), tls, or plain"),
    "to": Array(Str(max_len=254), min_items=1, max_items=MAX_RECIPIENTS, code="bad_address",
                doc="smtp: recipients"),
    "from": Str(max_len=254, code="bad_address", doc="smtp: sender (dvic@HOST if absent)"),
    "user": Str(max_len=256, doc="smtp: AUTH user"),
    "password": _secret("smtp: AUTH password"),
    "ca_pem": Str(max_len=MAX_CA_PEM, code="bad_ca", doc="PEM certificates to trust for this channel's TLS"),
}, required=True)


def _channel_fields(p: dict[str, Any]) -> dict[str, Any]:
    """What parse_channel is given: every field but the kind, as sent."""
    given = {"url": p["url"], "secret": p["secret"], "token": p["token"], "host": p["host"], "port": p["port"],
             "security": p["security"], "to": p["to"], "from": p["from"], "user": p["user"],
             "password": p["password"], "ca_pem": p["ca_pem"]}
    return {k: v for k, v in given.items() if v is not None}


@routes.route("GET", f"{V1}/channels", role="viewer", summary="Notification channels (no secrets)")
async def list_channels(request: web.Request) -> web.Response:
    return json_response({"channels": await queries.channels(services(request).read_db)})


@routes.route("POST", f"{V1}/channels/{{name}}", role="operator",
              summary="Add a notification channel (its secrets are never returned)", body=CHANNEL)
async def add_channel(request: web.Request) -> web.Response:
    p = params(request)
    name = request.match_info["name"]
    try:
        channel = parse_channel(name, p["kind"], _channel_fields(p))
    except ChannelInvalid as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    if not await services(request).notices.add_channel(channel, current_operator(request).name):
        raise ApiError(409, "channel_exists", f"a channel named {name!r} exists: remove it first to change it")
    return json_response(channel.public(), status=201)


@routes.route("DELETE", f"{V1}/channels/{{name}}", role="operator",
              summary="Remove a channel and its routes (what it had queued is kept, as failed)")
async def remove_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await services(request).notices.remove_channel(name):
        raise _no_channel(name)
    return json_response({"removed": name})


def _no_channel(name: str) -> ApiError:
    return ApiError(404, "no_such_channel", f"no channel named {name!r}")


@routes.route("POST", f"{V1}/channels/{{name}}/test", role="operator",
              summary="Send a test message now; answers with the receiver's answer (502 delivery_failed: why not)")
async def test_channel(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        answer = await services(request).notices.test(name)
    except LookupError:
        raise _no_channel(name) from None
    except DeliveryFailed as exc:
        raise ApiError(502, "delivery_failed", exc.message) from None
    return json_response({"channel": name, "answer": answer})


@routes.route("GET", f"{V1}/alert-routes", role="viewer",
              summary="Routes from (group, minimum severity) to channels; none: every channel gets every notice")
async def list_routes(request: web.Request) -> web.Response:
    found = await queries.routes(services(request).read_db)
    return json_response({"routes": found, "every_channel_gets_everything": not found})


@routes.route("POST", f"{V1}/channels/{{name}}/routes", role="operator",
              summary="Route a group's notices at or above a severity to this channel",
              body=Object({
                  "group": Str(max_len=64, default=ANY, code="bad_group",
                               doc="a group, '*' for any group, '' for nodes without one"),
                  "severity": Enum(ROUTE_SEVERITIES, default=ANY, code="bad_severity",
                                   doc="the lowest severity it takes ('*': all)"),
              }))
async def add_route(request: web.Request) -> web.Response:
    p = params(request)
    name = request.match_info["name"]
    try:
        route_id = await services(request).notices.add_route(p["group"], p["severity"], name,
                                                             current_operator(request).name)
    except RouteInvalid as exc:
        status = {"unknown_channel": 404, "route_exists": 409}.get(exc.code, 400)
        raise ApiError(status, exc.code, exc.message) from None
    return json_response({"id": route_id, "group": p["group"], "severity": p["severity"], "channel": name},
                         status=201)


@routes.route("DELETE", f"{V1}/alert-routes/{{id}}", role="operator", summary="Remove a route")
async def remove_route(request: web.Request) -> web.Response:
    route_id = _number(request.match_info["id"], "no_such_route", "route")
    if not await services(request).notices.remove_route(route_id):
        raise ApiError(404, "no_such_route", f"no route {route_id}")
    return json_response({"removed": route_id})


def _number(text: str, code: str, what: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise ApiError(404, code, f"no {what} {text!r}")
    return int(text)


@routes.route("GET", f"{V1}/notifications", role="viewer", summary="Notifications, newest first",
              query=Query({
                  "state": Enum(NOTIFICATION_STATES, doc="only those in this state"),
                  "channel": Str(max_len=64, doc="only those of this channel"),
                  "cursor": cursor(), "limit": limit(),
              }))
async def list_notifications(request: web.Request) -> web.Response:
    p = params(request)
    try:
        before = decode_cursor(p["cursor"])
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    db = services(request).read_db
    items = await queries.notifications(db, state=p["state"], channel=p["channel"],
                                        before=before[1] if before else None, limit=p["limit"])
    next_cursor = encode_cursor(items[-1]["id"]) if len(items) == p["limit"] else None
    return json_response({"notifications": items, "counts": await queries.counts(db), "next_cursor": next_cursor})


@routes.route("GET", f"{V1}/notifications/{{id}}", role="viewer",
              summary="One notification with the alerts it lists")
async def get_notification(request: web.Request) -> web.Response:
    notification_id = _number(request.match_info["id"], "no_such_notification", "notification")
    found = await queries.notification(services(request).read_db, notification_id)
    if found is None:
        raise ApiError(404, "no_such_notification", f"no notification {notification_id}")
    return json_response(found)


@routes.route("POST", f"{V1}/notifications/{{id}}/resend", role="operator",
              summary="Send a sent or failed notification again, with a fresh count of tries")
async def resend_notification(request: web.Request) -> web.Response:
    svc = services(request)
    notification_id = _number(request.match_info["id"], "no_such_notification", "notification")
    resent = await svc.notices.resend([notification_id])
    if not resent:
        found = await queries.notification(svc.read_db, notification_id)
        if found is None:
            raise ApiError(404, "no_such_notification", f"no notification {notification_id}")
        reason = "it is still pending" if found["state"] == "pending" else f"its channel {found['channel']!r} is gone"
        raise ApiError(409, "cannot_resend", f"notification {notification_id} cannot be sent again: {reason}")
    return json_response({"resent": resent})


@routes.route("POST", f"{V1}/notifications/resend-failed", role="operator",
              summary="Send every failed notification again (those whose channel still exists)")
async def resend_failed(request: web.Request) -> web.Response:
    return json_response({"resent": await services(request).notices.resend(None)})
