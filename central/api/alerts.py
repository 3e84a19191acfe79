"""Alerts: open alerts and their history, acknowledgements, silences, rules, and `GET /metrics`.

Viewers read; operators acknowledge, silence and change rules (every change is audited by the
route table's middleware). The schemas check each field's type; what a value means (a duration, a
metric, a pattern that cannot stall the server) is checked by central/alerts/rules.py, which says
why a rule is refused. docs/alerts.md has the shapes.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from aiohttp import web

from dvic_core.constants import LEVELS, RANK
from dvic_core.schema import Bool, Enum, Json, Number, Object, Query, Str

from .. import accounts
from ..alerts import queries
from ..alerts.engine import AlertEngine, AlertError
from ..alerts.metrics_export import CONTENT_TYPE, render
from ..alerts.model import SEVERITIES
from ..alerts.rules import METRICS, RuleError
from ..alerts.silences import MAX_NOTE_CHARS, silence_request
from ..auth import PUBLIC, ApiError, current_operator, error_response
from ..routes import params, routes
from ..services import Services
from ..strictjson import json_response
from ..tokens import bearer, hash_token
from .params import limit, services

NAME = Str(max_len=64, doc="a name")
DURATION = Str(max_len=32, code="bad_duration", expects="expected a duration such as 30s, 5m, 2h or 1h30m",
               doc="90, 30s, 5m, 2h, 1h30m")
SEVERITY = Enum(SEVERITIES, code="bad_severity")
THRESHOLD = Number(code="bad_threshold")
# What a rule may change (a stock rule: the first six), as PATCH /rules/{name} takes it.
TUNING = {
    "enabled": Bool(code="bad_rule"), "severity": SEVERITY, "for": DURATION, "threshold": THRESHOLD,
    "clear": Number(code="bad_threshold", doc="the alert ends only past this value (hysteresis)"),
    "scope": Json(json_kind="object", code="bad_scope", doc='{"node"|"group"|"kind": name}: the nodes it watches'),
    "op": Enum((">", "<"), code="bad_rule", doc="a metric rule: fires above (>) or below (<) the threshold"),
    # Text, not an enum: the rule's check names the unknown metric and lists the known ones.
    "metric": Str(max_len=64, code="unknown_metric", doc=f"a metric rule's metric: {', '.join(METRICS)}"),
    "pattern": Str(max_len=1000, code="bad_pattern", doc="a log rule's regular expression"),
    "level": Enum(LEVELS, code="bad_rule", doc="a log rule: count lines at least this level"),
}


def _engine(request: web.Request) -> AlertEngine:
    return services(request).alerts


def _refused(exc: RuleError | AlertError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


def _alert_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise ApiError(404, "not_found", f"no alert {text!r}")
    return int(text)


def _tuning(p: dict[str, Any]) -> dict[str, Any]:
    """The rule settings given (a field not given is not changed)."""
    given = (("enabled", p["enabled"]), ("severity", p["severity"]), ("for", p["for"]),
             ("threshold", p["threshold"]), ("clear", p["clear"]), ("scope", p["scope"]), ("op", p["op"]),
             ("metric", p["metric"]), ("pattern", p["pattern"]), ("level", p["level"]))
    return {k: v for k, v in given if v is not None}


@routes.route("GET", "/api/v1/alerts", role="viewer", summary="Open alerts, firing first (all=1: the history too)",
              query=Query({
                  "all": Enum(("0", "1", "false", "true"), doc="1: resolved alerts too, newest first"),
                  "node": NAME, "rule": NAME,
                  "cursor": Str(max_len=20, pattern=r"[0-9]+", doc="the next_cursor of the previous page"),
                  "limit": limit(),
              }))
async def list_alerts(request: web.Request) -> web.Response:
    engine, p = _engine(request), params(request)
    node, rule = p["node"], p["rule"]
    if p["all"] in ("1", "true"):
        before = int(p["cursor"]) if p["cursor"] else None
        page = await queries.alert_history(services(request).read_db, before_id=before, limit=p["limit"] + 1,
                                           node=node, rule=rule)
        shown = page[:p["limit"]]
        next_cursor = str(shown[-1].id) if len(page) > p["limit"] else None
        return json_response({"alerts": [engine.alert_view(a) for a in shown], "counts": engine.counts(),
                              "next_cursor": next_cursor})
    alerts = [a for a in engine.open_alerts() if (node is None or a.node == node) and (rule is None or a.rule == rule)]
    return json_response({"alerts": [engine.alert_view(a) for a in alerts], "counts": engine.counts(),
                          "next_cursor": None})


@routes.route("GET", "/api/v1/alerts/{id}", role="viewer", summary="One alert with its history")
async def get_alert(request: web.Request) -> web.Response:
    alert_id = _alert_id(request)
    db = services(request).read_db
    alert = await queries.alert(db, alert_id)
    if alert is None:
        raise ApiError(404, "not_found", f"no alert #{alert_id}")
    return json_response({**_engine(request).alert_view(alert), "history": await queries.alert_events(db, alert_id)})


@routes.route("POST", "/api/v1/alerts/{id}/ack", role="operator", summary="Acknowledge an alert",
              body=Object({"note": Str(max_len=MAX_NOTE_CHARS, default="", code="bad_note",
                                       doc="what is being done about it")}))
async def ack_alert(request: web.Request) -> web.Response:
    alert_id = _alert_id(request)
    try:
        alert = await _engine(request).acknowledge(alert_id, current_operator(request).name, params(request)["note"])
    except AlertError as exc:
        raise _refused(exc) from None
    return json_response(_engine(request).alert_view(alert))


@routes.route("GET", "/api/v1/silences", role="viewer", summary="Current silences")
async def list_silences(request: web.Request) -> web.Response:
    now = time.time()
    return json_response({"silences": [s.as_dict(now) for s in _engine(request).current_silences()]})


@routes.route("POST", "/api/v1/silences", role="operator", summary="Silence matching alerts for a while",
              body=Object({
                  "group": NAME, "node": NAME, "rule": NAME, "severity": SEVERITY,
                  "for": Str(max_len=32, required=True, code="bad_duration",
                             expects="say how long the silence lasts, e.g. 2h (at most 30d)"),
                  "note": Str(max_len=MAX_NOTE_CHARS, default="", code="bad_silence"),
              }))
async def add_silence(request: web.Request) -> web.Response:
    p = params(request)
    given = (("group", p["group"]), ("node", p["node"]), ("rule", p["rule"]), ("severity", p["severity"]),
             ("for", p["for"]), ("note", p["note"]))
    try:
        wanted = silence_request({k: v for k, v in given if v is not None})
        silence = await _engine(request).add_silence(wanted, current_operator(request).name)
    except (RuleError, AlertError) as exc:
        raise _refused(exc) from None
    return json_response(silence.as_dict(time.time()), status=201)


@routes.route("DELETE", "/api/v1/silences/{id}", role="operator", summary="End a silence now")
async def remove_silence(request: web.Request) -> web.Response:
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise ApiError(404, "not_found", f"no current silence {text!r}")
    try:
        silence = await _engine(request).remove_silence(int(text), current_operator(request).name)
    except AlertError as exc:
        raise _refused(exc) from None
    return json_response(silence.as_dict(time.time()))


@routes.route("GET", "/api/v1/rules", role="viewer", summary="Alert rules (stock and operator-written)")
async def list_rules(request: web.Request) -> web.Response:
    engine = _engine(request)
    rules = sorted(engine.rules.values(), key=lambda r: (not r.stock, r.name))
    return json_response({"rules": [engine.rule_view(r) for r in rules]})


@routes.route("POST", "/api/v1/rules", role="operator", summary="Add an operator rule", body=Object({
    "name": Str(max_len=63, required=True, code="bad_name", doc="a-z, 0-9, '_', '.', '-'"),
    "type": Enum(("metric", "log"), required=True, code="bad_rule",
                 doc="metric: a threshold; log: a pattern with a rate"),
    "rate": Number(code="bad_threshold", doc="a log rule: fires above this many matching lines per minute"),
    **TUNING,
}))
async def add_rule(request: web.Request) -> web.Response:
    engine, p = _engine(request), params(request)
    spec = {"name": p["name"], "type": p["type"], **_tuning(p)}
    if p["rate"] is not None:
        spec["rate"] = p["rate"]
    try:
        rule = await engine.add_rule(spec, current_operator(request).name)
    except (RuleError, AlertError) as exc:
        raise _refused(exc) from None
    return json_response(engine.rule_view(rule), status=201)


@routes.route("PATCH", "/api/v1/rules/{name}", role="operator", summary="Tune a rule", body=Object(TUNING))
async def set_rule(request: web.Request) -> web.Response:
    engine = _engine(request)
    try:
        rule = await engine.set_rule(request.match_info["name"], _tuning(params(request)),
                                     current_operator(request).name)
    except (RuleError, AlertError) as exc:
        raise _refused(exc) from None
    return json_response(engine.rule_view(rule))


@routes.route("DELETE", "/api/v1/rules/{name}", role="operator",
              summary="Remove an operator rule, or put a stock rule back to its defaults")
async def remove_rule(request: web.Request) -> web.Response:
    engine = _engine(request)
    try:
        rule = await engine.remove_rule(request.match_info["name"], current_operator(request).name)
    except AlertError as exc:
        raise _refused(exc) from None
    return json_response(engine.rule_view(rule))


@routes.route("GET", "/metrics", role=PUBLIC,
              summary="Prometheus metrics (a viewer's token, or an address allowed by --metrics-allow)")
async def metrics(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    if not _allowed_address(request.remote, svc.config.metrics_allow):
        refusal = await _viewer_refusal(request, svc)
        if refusal is not None:
            return refusal
    figures = await svc.features.alert_figures()  # with several replicas: the features leader's
    text = render(svc.registry, svc.alerts, svc.writer, svc.bus, svc.started_at, figures)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def _allowed_address(remote: str | None, allowed: tuple[str, ...]) -> bool:
    if not remote or not allowed:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)


async def _viewer_refusal(request: web.Request, services: Services) -> web.Response | None:
    """None when the request carries the token of an active account (viewer or more)."""
    token = bearer(request)
    if token is None:
        return error_response(401, "unauthenticated", "missing 'Authorization: Bearer <token>' header "
                                                      "(or scrape from an address allowed by --metrics-allow)")
    row: dict[str, Any] | None = await accounts.token_owner(services.read_db, hash_token(token))
    if row is None:
        return error_response(401, "bad_token", "unknown or revoked token")
    expires_at = row.get("expires_at")
    if expires_at is not None and time.time() >= expires_at:
        return error_response(401, "token_expired", "this token expired: ask an admin for a new one")
    if row["status"] != "active" or RANK.get(row["role"], 0) < RANK["viewer"]:
        return error_response(403, "forbidden", "this needs an active account with the viewer role or more")
    return None
