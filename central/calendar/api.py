"""The calendar's routes (docs/protocol.md section 4, docs/calendar.md): opening hours, runbooks and
their firings, bookings. Viewers read; operators book (and cancel or extend their own bookings);
admins edit hours and runbooks, run them now, and change anyone's bookings. Every change is
audited by the auth middleware."""

from __future__ import annotations

import functools
import time

from aiohttp import web

from dvic_core.constants import NODE_KINDS
from dvic_core.schema import Array, Enum, Int, Number, Object, Query, Str

from ..api.params import limit, services
from ..auth import ApiError, Handler, current_operator
from ..routes import params, routes
from ..strictjson import json_response
from .bookings import MAX_NOTE
from .errors import CalendarError
from .hours import HoursError, zone
from .service import MAX_CATCH_UP_S, MAX_NAME, Calendar
from .times import parse_when

MAX_LINES = 14
MAX_STEPS = 20


def refusals_answered(handler: Handler) -> Handler:
    """The calendar's refusals (CalendarError) answered as the API's JSON errors."""
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except CalendarError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None

    return answer


def _calendar(request: web.Request) -> Calendar:
    return services(request).calendar


def _group() -> Str:
    return Str(min_len=1, max_len=MAX_NAME, code="bad_group", expects="the name of a group of nodes",
               doc="a group of nodes")


def _when(doc: str) -> Str:
    return Str(min_len=1, max_len=64, code="bad_time", doc=f"{doc}: ISO 8601 (in the group's zone unless it "
                                                           "has an offset), Unix seconds, now, +30m, +2h or +1d")


# -- opening hours -----------------------------------------------------------------------------------
@routes.route("GET", "/api/v1/calendar", role="viewer", summary="Opening hours, exceptions and today's moments",
              query=Query({"group": _group(), "days": Int(min=1, max=31, default=1, doc="days shown from today")}))
@refusals_answered
async def show_calendar(request: web.Request) -> web.Response:
    p = params(request)
    return json_response({"groups": _calendar(request).groups_view(p["group"], p["days"])})


@routes.route("PUT", "/api/v1/calendar/{group}/hours", role="admin", summary="Set a group's weekly opening hours",
              body=Object({
                  "hours": Array(Str(max_len=200), min_items=1, max_items=MAX_LINES, required=True,
                                 code="bad_hours", doc="lines such as 'mon-fri 10:00-18:00', 'sat 14:00-18:00'"),
                  "zone": Str(max_len=64, nullable=True, code="bad_hours",
                              doc="IANA time zone (default: the group's, else the server's --calendar-zone)"),
              }))
@refusals_answered
async def set_hours(request: web.Request) -> web.Response:
    p = params(request)
    view = await _calendar(request).set_hours(request.match_info["group"], p["hours"], p["zone"],
                                              current_operator(request).name)
    return json_response(view)


@routes.route("PUT", "/api/v1/calendar/{group}/exceptions/{day}", role="admin",
              summary="Set one date's hours ('closed', '09:00-22:00', or 'normal' to drop the exception)",
              body=Object({
                  "hours": Str(min_len=1, max_len=200, required=True, code="bad_hours",
                               doc="'closed', ranges such as '09:00-22:00', or 'normal'"),
                  "note": Str(max_len=MAX_NOTE, default="", code="bad_note", doc="why (shown with the day)"),
              }))
@refusals_answered
async def set_exception(request: web.Request) -> web.Response:
    p = params(request)
    view = await _calendar(request).set_exception(request.match_info["group"], request.match_info["day"],
                                                  p["hours"], p["note"], current_operator(request).name)
    return json_response(view)


# -- runbooks --------------------------------------------------------------------------------------------
@routes.route("GET", "/api/v1/runbooks", role="viewer", summary="Runbooks (all, or a group's)",
              query=Query({"group": _group()}))
@refusals_answered
async def list_runbooks(request: web.Request) -> web.Response:
    group = params(request)["group"]
    books = [r.view() for r in sorted(_calendar(request).runbooks.values(), key=lambda r: (r.group, r.name))
             if group is None or r.group == group]
    return json_response({"runbooks": books})


@routes.route("POST", "/api/v1/runbooks", role="admin", summary="Add a runbook: steps fired at a calendar moment",
              body=Object({
                  "group": Str(min_len=1, max_len=MAX_NAME, required=True, code="bad_group",
                               doc="the group whose nodes run it"),
                  "name": Str(min_len=1, max_len=MAX_NAME, required=True, code="bad_name"),
                  "at": Str(min_len=1, max_len=32, required=True, code="bad_runbook",
                            doc="open, close, open-15m, close+30m or a local time such as 03:00"),
                  "steps": Array(Str(max_len=4200), min_items=1, max_items=MAX_STEPS, required=True,
                                 code="bad_runbook", doc="start DEMO, stop DEMO, restart DEMO, reboot, run COMMAND, "
                                                         "maintenance on|off, deploy DEMO@VERSION, undeploy DEMO"),
                  "catch_up": Number(min=0, max=MAX_CATCH_UP_S, default=0, code="bad_catch_up",
                                     doc="seconds during which a node offline at the moment is caught up"),
              }))
@refusals_answered
async def add_runbook(request: web.Request) -> web.Response:
    p = params(request)
    view = await _calendar(request).add_runbook(p["group"], p["name"], p["at"], p["steps"], float(p["catch_up"]),
                                                current_operator(request).name)
    return json_response(view, status=201)


@routes.route("GET", "/api/v1/runbooks/{group}/{name}", role="viewer", summary="A runbook and its latest firings",
              query=Query({"limit": limit(20)}))
@refusals_answered
async def show_runbook(request: web.Request) -> web.Response:
    calendar = _calendar(request)
    rb = calendar.runbook_named(request.match_info["group"], request.match_info["name"])
    firings = await calendar.queries.firings(rb.id, params(request)["limit"])
    return json_response({**rb.view(), "next_at": calendar.next_of(rb, time.time()), "firings": firings})


@routes.route("DELETE", "/api/v1/runbooks/{group}/{name}", role="admin", summary="Delete a runbook (its history stays)")
@refusals_answered
async def delete_runbook(request: web.Request) -> web.Response:
    view = await _calendar(request).delete_runbook(request.match_info["group"], request.match_info["name"])
    return json_response(view)


@routes.route("POST", "/api/v1/runbooks/{group}/{name}/run", role="admin", summary="Fire a runbook now")
@refusals_answered
async def run_now(request: web.Request) -> web.Response:
    calendar = _calendar(request)
    firing_id = await calendar.run_now(request.match_info["group"], request.match_info["name"],
                                       current_operator(request).name)
    firing = await calendar.queries.firing(firing_id)
    return json_response(firing, status=201)


@routes.route("GET", "/api/v1/firings", role="viewer", summary="Runbook firings, newest first (history)",
              query=Query({"group": _group(), "runbook": Str(max_len=MAX_NAME, doc="with group: one runbook"),
                           "limit": limit(50)}))
@refusals_answered
async def list_firings(request: web.Request) -> web.Response:
    calendar, p = _calendar(request), params(request)
    runbook_id = None
    if p["runbook"] is not None:
        if p["group"] is None:
            raise ApiError(400, "bad_query", "runbook: give its group too")
        runbook_id = calendar.runbook_named(p["group"], p["runbook"]).id
    return json_response({"firings": await calendar.queries.firings(runbook_id, p["limit"], p["group"])})


@routes.route("GET", "/api/v1/firings/{id}", role="viewer", summary="One firing and its per-node states")
@refusals_answered
async def get_firing(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    firing = await _calendar(request).queries.firing(int(raw)) if raw.isascii() and raw.isdigit() and len(raw) < 12 \
        else None
    if firing is None:
        raise ApiError(404, "no_such_firing", f"no firing {raw!r}")
    return json_response(firing)


# -- bookings ---------------------------------------------------------------------------------------------
def _booking_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) < 12):
        raise ApiError(404, "no_such_booking", f"no booking {raw!r}")
    return int(raw)


@routes.route("GET", "/api/v1/bookings", role="viewer", summary="Bookings holding at a time, or not over yet",
              query=Query({"at": _when("holding at this time (default: every booking not over yet)"),
                           "holder": Str(max_len=64, doc="only this operator's"),
                           "mine": Enum(("true", "false"), default="false", code="bad_query",
                                        doc="true: only the caller's"),
                           "group": _group(), "limit": limit(1000)}))
@refusals_answered
async def list_bookings(request: web.Request) -> web.Response:
    calendar, p = _calendar(request), params(request)
    holder = current_operator(request).name if p["mine"] == "true" else p["holder"]
    at = None
    if p["at"] is not None:
        try:
            at = parse_when(p["at"], time.time(), zone(calendar.zone_of(p["group"])))
        except HoursError as exc:
            raise ApiError(400, "bad_time", f"at: {exc}") from None
    rows = await calendar.bookings.listing(at=at, holder=holder, limit=p["limit"])
    if p["group"] is not None:
        members = {n.id for n in calendar.group_nodes(p["group"])}
        rows = [r for r in rows if members.intersection(r["nodes"])]
    return json_response({"bookings": rows})


@routes.route("POST", "/api/v1/bookings", role="operator",
              summary="Book machines by name, or by group, kind and count (the server picks free ones)",
              body=Object({
                  "nodes": Array(Str(max_len=64), min_items=1, max_items=200, nullable=True, code="bad_targets",
                                 doc="node names or ids"),
                  "group": Str(min_len=1, max_len=MAX_NAME, nullable=True, code="bad_group",
                               doc="with count: machines of this group"),
                  "kind": Enum(NODE_KINDS, nullable=True, code="bad_kind", doc="with group: only this kind"),
                  "count": Int(min=1, max=1000, nullable=True, code="bad_count", doc="with group: how many"),
                  "from": _when("start (default now)"),
                  "to": Str(min_len=1, max_len=64, required=True, code="bad_time", doc="end"),
                  "note": Str(max_len=MAX_NOTE, default="", code="bad_note"),
                  "deploy": Str(max_len=200, default="", code="bad_deploy",
                                doc="NAME@VERSION deployed on the machines while the booking holds"),
                  "holder": Str(min_len=1, max_len=64, nullable=True, code="bad_holder",
                                doc="admins: book for this operator (default: the caller)"),
              }))
@refusals_answered
async def book(request: web.Request) -> web.Response:
    p, operator = params(request), current_operator(request)
    holder = p["holder"] or operator.name
    if holder != operator.name and operator.role != "admin":
        raise ApiError(403, "forbidden", "only admins may book for someone else: leave out holder")
    if holder != operator.name and await services(request).queries.operator(holder) is None:
        raise ApiError(404, "no_such_operator", f"no operator {holder!r} to book for")
    view = await _calendar(request).bookings.book(holder, operator.name, nodes=p["nodes"], group=p["group"], kind=p["kind"],
                                         count=p["count"], start=p["from"], end=p["to"], note=p["note"],
                                         deploy=p["deploy"])
    return json_response(view, status=201)


@routes.route("GET", "/api/v1/bookings/{id}", role="viewer", summary="One booking")
@refusals_answered
async def get_booking(request: web.Request) -> web.Response:
    calendar = _calendar(request)
    booking_id = _booking_id(request)
    row = await calendar.queries.booking(booking_id)
    if row is None:
        raise ApiError(404, "no_such_booking", f"no booking {booking_id}")
    return json_response(calendar.bookings.view(row))


@routes.route("POST", "/api/v1/bookings/{id}/cancel", role="operator",
              summary="Cancel a booking (its holder, or an admin)")
@refusals_answered
async def cancel_booking(request: web.Request) -> web.Response:
    operator = current_operator(request)
    return json_response(await _calendar(request).bookings.cancel(_booking_id(request), operator.name, operator.role))


@routes.route("POST", "/api/v1/bookings/{id}/extend", role="operator",
              summary="Move a booking's end (its holder, or an admin)",
              body=Object({"to": Str(min_len=1, max_len=64, required=True, code="bad_time", doc="the new end")}))
@refusals_answered
async def extend_booking(request: web.Request) -> web.Response:
    operator = current_operator(request)
    view = await _calendar(request).bookings.extend(_booking_id(request), params(request)["to"], operator.name, operator.role)
    return json_response(view)
