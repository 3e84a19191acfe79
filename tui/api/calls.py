"""The operator API's calls as data: one function per endpoint (docs/protocol.md section 4), each
returning the `Request` (or, for a websocket, the `Upgrade`) that a transport sends:

    nodes = await api.send(calls.nodes(group="lab"))       # tui/api/aio.py
    nodes = api.send(calls.nodes(group="lab"))             # tui/api/sync.py (`dvic run`)

Nothing is sent here, and nothing slow is imported: `dvic run` builds its calls with this module.
"""

from __future__ import annotations

from tui.api.core import (
    RELAY_MAX_BYTES,
    Request,
    Upgrade,
    json_object,
    object_list,
    page,
    params,
    seg,
    text,
)

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from tui.api.core import Json


# -- public and account ----------------------------------------------------------------------------
def health() -> Request[Json]:
    return Request("GET", "/health", json_object)


def register(name: str) -> Request[Json]:
    """Asks for an account: its token (and the one-time code an admin approves it with)."""
    return Request("POST", "/register", json_object, body={"name": name})


def me() -> Request[Json]:
    return Request("GET", "/me", json_object)


# -- nodes -----------------------------------------------------------------------------------------
def nodes(group: str | None = None, kind: str | None = None, state: str | None = None) -> Request[list[Json]]:
    return Request("GET", "/nodes", object_list("nodes"), params(group=group, kind=kind, state=state))


def node(name: str) -> Request[Json]:
    """One node by name or id (404 `not_found` when the server has none)."""
    return Request("GET", f"/nodes/{seg(name)}", json_object)


def enroll(name: str, kind: str, group: str) -> Request[Json]:
    """A new node: its bundle (id, key, certificate, token), given once (protocol.md section 1)."""
    return Request("POST", "/nodes", json_object, body={"name": name, "kind": kind, "group": group})


def set_maintenance(name: str, on: bool) -> Request[Json]:
    return Request("POST", f"/nodes/{seg(name)}/maintenance", json_object, body={"on": on})


def revoke_node(name: str) -> Request[Json]:
    return Request("DELETE", f"/nodes/{seg(name)}", json_object)


def metrics(name: str, from_: float, to: float, step: int, names: list[str] | None = None) -> Request[Json]:
    import math

    # Whole seconds, widened outwards: truncating `to` would hide the newest second's samples.
    query = params(from_=math.floor(from_), to=math.ceil(to), step=step, names=",".join(names) if names else None)
    return Request("GET", f"/nodes/{seg(name)}/metrics", json_object, query)


# -- history ---------------------------------------------------------------------------------------
def logs(**query: str | float | None) -> Request[Json]:
    """One page of log lines, newest first: `{"lines": [...], "next_cursor": ...}`.

    Query: node, group, source, level, q, demo, from_, to, cursor, limit (docs/protocol.md 4.1)."""
    return Request("GET", "/logs", page("lines"), params(**query))


def events(**query: str | float | None) -> Request[Json]:
    """One page of events, newest first. Query: node, kind, from_, to, cursor, limit."""
    return Request("GET", "/events", page("events"), params(**query))


def audit(cursor: str | None = None, limit: int | None = None) -> Request[Json]:
    return Request("GET", "/audit", json_object, params(cursor=cursor, limit=limit))


# -- operators -------------------------------------------------------------------------------------
def operators() -> Request[list[Json]]:
    return Request("GET", "/operators", object_list("operators"))


def add_operator(name: str, role: str, expires_in: int | None = None) -> Request[Json]:
    return Request("POST", "/operators", json_object, body=_given(name=name, role=role, expires_in=expires_in))


def approve_operator(name: str, role: str, code: str | None = None) -> Request[Json]:
    return Request("POST", f"/operators/{seg(name)}/approve", json_object, body=_given(role=role, code=code))


def set_role(name: str, role: str) -> Request[Json]:
    return Request("POST", f"/operators/{seg(name)}/role", json_object, body={"role": role})


def disable_operator(name: str) -> Request[Json]:
    return Request("DELETE", f"/operators/{seg(name)}", json_object)


def delete_operator(name: str) -> Request[Json]:
    """Deletes a pending or disabled account (its name becomes free)."""
    return Request("POST", f"/operators/{seg(name)}/delete", json_object)


def new_token(name: str, expires_in: int | None = None) -> Request[Json]:
    body = None if expires_in is None else {"expires_in": expires_in}
    return Request("POST", f"/operators/{seg(name)}/tokens", json_object, body=body)


# -- commands, shells, sessions --------------------------------------------------------------------
def run_command(targets: Json, argv: list[str] | None = None, shell: str | None = None,
                timeout: float | None = None) -> Request[Json]:
    """Starts a command (`argv`, or `shell` for /bin/sh -c) on `targets`: `{"nodes": [...]}`,
    `{"group": G}` or `{"all": True}`. The answer is the command with one run per target node."""
    body: Json = dict(targets)
    if shell is not None:
        body["shell"] = shell
    else:
        body["argv"] = argv
    if timeout is not None:
        body["timeout"] = timeout
    return Request("POST", "/commands", json_object, body=body)


def commands(node: str | None = None, limit: int | None = None) -> Request[list[Json]]:
    return Request("GET", "/commands", object_list("commands"), params(node=node, limit=limit))


def command(command_id: str) -> Request[Json]:
    """A command: its runs, their states and stored output."""
    return Request("GET", f"/commands/{seg(command_id)}", json_object)


def cancel_command(command_id: str) -> Request[Json]:
    return Request("POST", f"/commands/{seg(command_id)}/cancel", json_object)


def command_stream(command_id: str) -> Upgrade:
    """The live messages of a command (`command`, `output`, `state`, `done`)."""
    return Upgrade(f"/commands/{seg(command_id)}/stream", what="the command stream")


def shell(node: str, cols: int, rows: int) -> Upgrade:
    return Upgrade(f"/nodes/{seg(node)}/shell", params(cols=cols, rows=rows), "the shell", RELAY_MAX_BYTES)


def tunnel(node: str, host: str, port: int) -> Upgrade:
    """A TCP connection the node opens to host:port, as the websocket's binary messages."""
    return Upgrade(f"/nodes/{seg(node)}/tunnel", params(host=host, port=port), "the tunnel", RELAY_MAX_BYTES)


def stream() -> Upgrade:
    """The live events: node changes, events, and the log tails subscribed to."""
    return Upgrade("/stream", what="the stream")


def sessions(node: str | None = None) -> Request[list[Json]]:
    return Request("GET", "/sessions", object_list("sessions"), params(node=node))


def recording(session_id: str) -> Request[str]:
    """The asciicast v2 text of a recorded shell session."""
    return Request("GET", f"/sessions/{seg(session_id)}/recording", text)


# -- actions, updates, releases --------------------------------------------------------------------
def request_action(node: str, action: str, demo: str | None = None, timeout: float | None = None) -> Request[Json]:
    return Request("POST", f"/nodes/{seg(node)}/actions", json_object,
                   body=_given(action=action, demo=demo or None, timeout=timeout))


def actions(node: str | None = None) -> Request[list[Json]]:
    return Request("GET", "/actions", object_list("actions"), params(node=node))


def update(targets: Json) -> Request[Json]:
    return Request("POST", "/update", json_object, body=dict(targets))


def release() -> Request[Json]:
    return Request("GET", "/release", json_object)


def publish_release(data: bytes) -> Request[Json]:
    """Publishes a daemon file (its text) as the release nodes update to."""
    return Request("POST", "/release", json_object, data=data, content_type="text/x-python")


# -- alerts (docs/alerts.md) ---------------------------------------------------------------------
def alerts(everything: bool = False, node: str | None = None, rule: str | None = None, cursor: str | None = None,
           limit: int | None = None) -> Request[Json]:
    """Open alerts (firing first), or with `everything` the history too, newest first:
    `{"alerts": [...], "counts": {...}, "next_cursor": ...}`."""
    query = params(all="1" if everything else None, node=node, rule=rule, cursor=cursor, limit=limit)
    return Request("GET", "/alerts", page("alerts"), query)


def alert(alert_id: int) -> Request[Json]:
    """One alert with its `history`."""
    return Request("GET", f"/alerts/{int(alert_id)}", json_object)


def ack_alert(alert_id: int, note: str) -> Request[Json]:
    return Request("POST", f"/alerts/{int(alert_id)}/ack", json_object, body={"note": note})


def silences() -> Request[list[Json]]:
    return Request("GET", "/silences", object_list("silences"))


def add_silence(matcher: Json, duration: str, note: str) -> Request[Json]:
    """A silence of alerts matching every field of `matcher` (group, node, rule, severity) for `duration`."""
    return Request("POST", "/silences", json_object, body={**matcher, "for": duration, "note": note})


def remove_silence(silence_id: int) -> Request[Json]:
    return Request("DELETE", f"/silences/{int(silence_id)}", json_object)


def rules() -> Request[list[Json]]:
    return Request("GET", "/rules", object_list("rules"))


def add_rule(spec: Json) -> Request[Json]:
    return Request("POST", "/rules", json_object, body=spec)


def set_rule(name: str, settings: Json) -> Request[Json]:
    return Request("PATCH", f"/rules/{seg(name)}", json_object, body=settings)


def remove_rule(name: str) -> Request[Json]:
    """Deletes an operator rule; a stock rule goes back to its defaults."""
    return Request("DELETE", f"/rules/{seg(name)}", json_object)
# -- the venue calendar (docs/calendar.md) ---------------------------------------------------------
def calendar(group: str | None = None, days: int | None = None) -> Request[list[Json]]:
    return Request("GET", "/calendar", object_list("groups"), params(group=group, days=days))


def set_hours(group: str, lines: list[str], zone: str | None = None) -> Request[Json]:
    return Request("PUT", f"/calendar/{seg(group)}/hours", json_object, body=_given(hours=lines, zone=zone))


def set_exception(group: str, day: str, hours: str, note: str | None = None) -> Request[Json]:
    return Request("PUT", f"/calendar/{seg(group)}/exceptions/{seg(day)}", json_object,
                   body=_given(hours=hours, note=note))


def runbooks(group: str | None = None) -> Request[list[Json]]:
    return Request("GET", "/runbooks", object_list("runbooks"), params(group=group))


def add_runbook(group: str, name: str, at: str, steps: list[str], catch_up: float | None = None) -> Request[Json]:
    return Request("POST", "/runbooks", json_object,
                   body=_given(group=group, name=name, at=at, steps=steps, catch_up=catch_up))


def runbook(group: str, name: str, limit: int | None = None) -> Request[Json]:
    return Request("GET", f"/runbooks/{seg(group)}/{seg(name)}", json_object, params(limit=limit))


def delete_runbook(group: str, name: str) -> Request[Json]:
    return Request("DELETE", f"/runbooks/{seg(group)}/{seg(name)}", json_object)


def run_runbook(group: str, name: str) -> Request[Json]:
    return Request("POST", f"/runbooks/{seg(group)}/{seg(name)}/run", json_object)


def firings(group: str | None = None, runbook: str | None = None, limit: int | None = None) -> Request[list[Json]]:
    return Request("GET", "/firings", object_list("firings"), params(group=group, runbook=runbook, limit=limit))


def firing(firing_id: int) -> Request[Json]:
    return Request("GET", f"/firings/{firing_id}", json_object)


def bookings(at: str | None = None, mine: bool = False, group: str | None = None,
             holder: str | None = None) -> Request[list[Json]]:
    return Request("GET", "/bookings", object_list("bookings"),
                   params(at=at, mine="true" if mine else None, group=group, holder=holder))


def book(fields: Json) -> Request[Json]:
    """`fields`: nodes, or group/kind/count; from, to, note, deploy (docs/protocol.md section 4)."""
    return Request("POST", "/bookings", json_object, body=_given(**fields))


def cancel_booking(booking_id: int) -> Request[Json]:
    return Request("POST", f"/bookings/{booking_id}/cancel", json_object)


def extend_booking(booking_id: int, to: str) -> Request[Json]:
    return Request("POST", f"/bookings/{booking_id}/extend", json_object, body={"to": to})


# -- demo releases and deployments (docs/demos.md) ---------------------------------------------------
def publish_demo(name: str | None = None, version: str | None = None) -> Request[Json]:
    """A demo release; its body, the archive, is streamed from a file (`AsyncClient.upload`)."""
    return Request("POST", "/demos/releases", json_object, params(name=name, version=version),
                   content_type="application/gzip")


def demos() -> Request[list[Json]]:
    return Request("GET", "/demos", object_list("demos"))


def demo_releases(name: str) -> Request[list[Json]]:
    return Request("GET", f"/demos/{seg(name)}/releases", object_list("releases"))


def demo_status(name: str | None = None) -> Request[list[Json]]:
    return Request("GET", "/demos/status", object_list("status"), params(demo=name))


def deploy(demo: str, version: str, target: Json, batch: int | None = None) -> Request[Json]:
    """`target`: `{"node": N}`, `{"group": G}` or `{"all": True}`."""
    return Request("POST", "/deployments", json_object, body={"demo": demo, "version": version, **target,
                                                              **_given(batch=batch)})


def undeploy(demo: str, target: Json) -> Request[Json]:
    return Request("POST", "/deployments/undeploy", json_object, body={"demo": demo, **target})


def rollback(demo: str, target: Json) -> Request[Json]:
    return Request("POST", "/deployments/rollback", json_object, body={"demo": demo, **target})


def deployments(demo: str | None = None, limit: int | None = None) -> Request[list[Json]]:
    return Request("GET", "/deployments", object_list("deployments"), params(demo=demo, limit=limit))


def deployment(deployment_id: str) -> Request[Json]:
    return Request("GET", f"/deployments/{seg(deployment_id)}", json_object)


def _given(**fields: object) -> Json:
    """A JSON body of the fields that are set."""
    return {k: v for k, v in fields.items() if v is not None}


# -- notifications (docs/alerts.md "Notifications") ------------------------------------------------
def channels() -> Request[list[Json]]:
    """Every channel's public view (the server never returns a secret)."""
    return Request("GET", "/channels", object_list("channels"))


def add_channel(name: str, fields: Json) -> Request[Json]:
    """`fields`: `kind` and the kind's settings and secrets; the answer holds no secret."""
    return Request("POST", f"/channels/{seg(name)}", json_object, body=fields)


def remove_channel(name: str) -> Request[Json]:
    return Request("DELETE", f"/channels/{seg(name)}", json_object)


def channel_test(name: str) -> Request[Json]:
    """Sends a test message: `{"channel", "answer"}`; ApiError `delivery_failed` says why not."""
    return Request("POST", f"/channels/{seg(name)}/test", json_object)


def alert_routes() -> Request[Json]:
    return Request("GET", "/alert-routes", page("routes"))


def add_alert_route(channel: str, group: str, severity: str) -> Request[Json]:
    return Request("POST", f"/channels/{seg(channel)}/routes", json_object,
                   body={"group": group, "severity": severity})


def remove_alert_route(route_id: int) -> Request[Json]:
    return Request("DELETE", f"/alert-routes/{route_id}", json_object)


def notifications(state: str | None = None, channel: str | None = None, cursor: str | None = None,
                  limit: int | None = None) -> Request[Json]:
    """One page, newest first: `{"notifications": [...], "counts": {...}, "next_cursor": ...}`."""
    return Request("GET", "/notifications", page("notifications"),
                   params(state=state, channel=channel, cursor=cursor, limit=limit))


def notification(notification_id: int) -> Request[Json]:
    return Request("GET", f"/notifications/{notification_id}", json_object)


def resend_notification(notification_id: int) -> Request[Json]:
    return Request("POST", f"/notifications/{notification_id}/resend", json_object)


def resend_failed() -> Request[Json]:
    return Request("POST", "/notifications/resend-failed", json_object)
