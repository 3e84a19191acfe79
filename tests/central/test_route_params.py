"""Every route, handler by handler, on the in-process app: what good and bad input get back.

Each route has its cases below (a test per route; a guard test fails when a route has none): the
status, the error code and, where clients or people read it, the message. Then one test derived
from the declarations themselves: every declared query parameter and body field, sent with a value
of the wrong type, is refused before the handler runs with the field's code and a message naming it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

import central.app  # noqa: F401  (importing the app registers every route)
from central.auth import NODE, RouteSpec
from central.release import MAX_DAEMON_BYTES
from central.routes import routes
from dvic_core import schema as schemas
from dvic_core.schema import Schema

from .inproc import InProcess, in_process

in_module_loop = pytest.mark.asyncio(loop_scope="module")

TARGETS = "give 'nodes' (a list of names or ids), 'group', or 'all': true"
NODE_NAME_RULE = "name: 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
OPERATOR_NAME_RULE = "name: 2-32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"


@dataclass
class World:
    app: InProcess
    tokens: dict[str, str] = field(default_factory=dict)
    node_token: str = ""
    registration_code: str = ""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    data_dir = tmp_path_factory.mktemp("params") / "central"
    async for app in in_process(data_dir, self_register=True, register_per_address=1000, register_total=1000):
        w = World(app)
        w.node_token = (await app.call("POST", "/api/v1/nodes", {"name": "pi-a", "group": "hall"}))[1]["token"]
        await app.call("POST", "/api/v1/nodes", {"name": "pi-b"})
        for role in ("viewer", "operator"):
            w.tokens[role] = await app.token_for(f"who-{role}", role)
        w.tokens["admin"] = app.admin
        status, pending = await app.call("POST", "/api/v1/register", {"name": "reg-pending"}, token="")
        assert status == 201, pending
        w.tokens["pending"] = pending["token"]
        w.registration_code = pending["code"]
        yield w


@dataclass
class Case:
    """One request and what must come back (`message`: the whole message, or a regex with `~` in front)."""

    path: str
    status: int
    code: str | None = None
    message: str | None = None
    body: Any = None
    raw: bytes | None = None
    who: str = "admin"
    headers: dict[str, str] = field(default_factory=dict)


def cases(method: str, path: str, *items: Case) -> tuple[tuple[str, str], list[Case]]:
    return (method, path), list(items)


V1 = "/api/v1"
CASES = dict([
    # -- public ---------------------------------------------------------------------------------
    cases("GET", f"{V1}/health", Case(f"{V1}/health", 200, who="none")),
    cases("GET", f"{V1}/openapi.json", Case(f"{V1}/openapi.json", 200, who="none")),
    cases("POST", f"{V1}/register",
          Case(f"{V1}/register", 400, "bad_name", OPERATOR_NAME_RULE, body={"name": "Bad Name"}, who="none"),
          Case(f"{V1}/register", 400, "bad_name", OPERATOR_NAME_RULE, body={}, who="none"),
          Case(f"{V1}/register", 409, "name_taken", "an operator named 'admin' already exists",
               body={"name": "admin"}, who="none"),
          Case(f"{V1}/register", 400, "bad_json", "body must be a JSON object", raw=b"[]", who="none"),
          Case(f"{V1}/register", 201, body={"name": "reg-ok"}, who="none")),
    cases("GET", f"{V1}/me", Case(f"{V1}/me", 200, who="pending")),
    # -- nodes ----------------------------------------------------------------------------------
    cases("GET", f"{V1}/nodes",
          Case(f"{V1}/nodes?state=gone", 400, "bad_query",
               "state: expected one of online, offline, maintenance, failed, new", who="viewer"),
          Case(f"{V1}/nodes?kind=toaster", 400, "bad_query", "kind: expected one of desktop, raspberry, esp32, other",
               who="viewer"),
          Case(f"{V1}/nodes?group=hall&state=&kind=", 200, who="viewer")),
    cases("GET", f"{V1}/nodes/{{node}}",
          Case(f"{V1}/nodes/ghost", 404, "no_such_node", "no node with id or name 'ghost'", who="viewer"),
          Case(f"{V1}/nodes/pi-a", 200, who="viewer")),
    cases("POST", f"{V1}/nodes",
          Case(f"{V1}/nodes", 400, "bad_name", NODE_NAME_RULE, body={"name": "bad name"}, who="operator"),
          Case(f"{V1}/nodes", 400, "bad_name", NODE_NAME_RULE, body={"name": "pi-x\n"}, who="operator"),
          Case(f"{V1}/nodes", 400, "bad_kind", "kind: expected one of desktop, raspberry, esp32, other",
               body={"name": "pi-x", "kind": "toaster"}, who="operator"),
          Case(f"{V1}/nodes", 400, "bad_group", "group: empty, or 1-63 characters like a name",
               body={"name": "pi-x", "group": "a b"}, who="operator"),
          Case(f"{V1}/nodes", 409, "name_taken", "a node named 'pi-a' already exists", body={"name": "pi-a"},
               who="operator"),
          Case(f"{V1}/nodes", 400, "bad_json", "~body is not valid JSON: ", raw=b"{oops", who="operator"),
          Case(f"{V1}/nodes", 400, "bad_json", "~body is not valid JSON: ", raw=b'{"name": NaN}', who="operator"),
          Case(f"{V1}/nodes", 201, body={"name": "pi-new", "kind": "raspberry"}, who="operator")),
    cases("DELETE", f"{V1}/nodes/{{node}}",
          Case(f"{V1}/nodes/ghost", 404, "no_such_node", who="operator"),
          Case(f"{V1}/nodes/pi-b", 403, "not_your_enrollment", who="operator"),
          Case(f"{V1}/nodes/pi-new", 200)),
    cases("POST", f"{V1}/nodes/{{node}}/maintenance",
          Case(f"{V1}/nodes/pi-a/maintenance", 400, "bad_field", "on: expected true or false", body={"on": "yes"},
               who="operator"),
          Case(f"{V1}/nodes/pi-a/maintenance", 400, "bad_field", "on: expected true or false", body={},
               who="operator"),
          Case(f"{V1}/nodes/ghost/maintenance", 404, "no_such_node", body={"on": True}, who="operator"),
          Case(f"{V1}/nodes/pi-a/maintenance", 200, body={"on": False}, who="operator")),
    cases("GET", f"{V1}/nodes/{{node}}/metrics",
          Case(f"{V1}/nodes/pi-a/metrics?from=x", 400, "bad_query", "from: expected a number (Unix seconds), got 'x'",
               who="viewer"),
          Case(f"{V1}/nodes/pi-a/metrics?from=nan", 400, "bad_query",
               "from: expected a finite, non-negative number (Unix seconds)", who="viewer"),
          Case(f"{V1}/nodes/pi-a/metrics?to=-1", 400, "bad_query",
               "to: expected a finite, non-negative number (Unix seconds)", who="viewer"),
          Case(f"{V1}/nodes/pi-a/metrics?from=10&to=5", 400, "bad_query", "from must be before to", who="viewer"),
          Case(f"{V1}/nodes/pi-a/metrics?step=abc", 400, "bad_query", "step: expected a whole number of seconds",
               who="viewer"),
          Case(f"{V1}/nodes/pi-a/metrics?step=1&from=0&to=100000", 400, "bad_query",
               "step: too small for this range (at most 10,000 points per series)", who="viewer"),
          Case(f"{V1}/nodes/ghost/metrics", 404, "no_such_node", who="viewer"),
          Case(f"{V1}/nodes/pi-a/metrics?names=cpu,,mem&step=60", 200, who="viewer")),
    # -- history --------------------------------------------------------------------------------
    cases("GET", f"{V1}/logs",
          Case(f"{V1}/logs?source=x", 400, "bad_query", "source: expected demo, system or daemon", who="viewer"),
          Case(f"{V1}/logs?level=loud", 400, "bad_query", "level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
               who="viewer"),
          Case(f"{V1}/logs?limit=0", 400, "bad_query", "limit: expected an integer from 1 to 1000", who="viewer"),
          Case(f"{V1}/logs?limit=%C2%B2", 400, "bad_query", "limit: expected an integer from 1 to 1000", who="viewer"),
          Case(f"{V1}/logs?node=pi-a,ghost", 404, "no_such_node", "no node with id or name 'ghost'", who="viewer"),
          Case(f"{V1}/logs?cursor=garbage", 400, "bad_query", "cursor: not a cursor this server issued for this query",
               who="viewer"),
          Case(f"{V1}/logs?group=hall&level=info&from=0&limit=5", 200, who="viewer")),
    cases("GET", f"{V1}/events",
          Case(f"{V1}/events?node=ghost", 404, "no_such_node", who="viewer"),
          Case(f"{V1}/events?to=later", 400, "bad_query", "to: expected a number (Unix seconds), got 'later'",
               who="viewer"),
          Case(f"{V1}/events?node=pi-a&kind=enrolled", 200, who="viewer")),
    # -- operators ------------------------------------------------------------------------------
    cases("GET", f"{V1}/operators", Case(f"{V1}/operators", 200)),
    cases("POST", f"{V1}/operators",
          Case(f"{V1}/operators", 400, "bad_name", OPERATOR_NAME_RULE, body={"name": "x"}),
          Case(f"{V1}/operators", 400, "bad_role", "role: expected one of viewer, operator, admin",
               body={"name": "op-x", "role": "boss"}),
          Case(f"{V1}/operators", 400, "bad_field",
               "expires_in: seconds from now, more than 0 and at most 315360000 (ten years)",
               body={"name": "op-x", "expires_in": 0}),
          Case(f"{V1}/operators", 400, "bad_field",
               "expires_in: seconds from now, more than 0 and at most 315360000 (ten years)",
               body={"name": "op-x", "expires_in": True}),
          Case(f"{V1}/operators", 201, body={"name": "op-x", "expires_in": None})),
    cases("POST", f"{V1}/operators/{{name}}/approve",
          Case(f"{V1}/operators/ghost/approve", 404, "no_such_operator", "no operator named 'ghost'", body={}),
          Case(f"{V1}/operators/op-x/approve", 409, "not_pending", "operator 'op-x' is active, not pending", body={}),
          Case(f"{V1}/operators/reg-pending/approve", 400, "code_required", body={"role": "viewer"}),
          Case(f"{V1}/operators/reg-pending/approve", 400, "bad_role", body={"role": "boss"}),
          Case(f"{V1}/operators/reg-pending/approve", 403, "wrong_code", body={"code": "AAAA-AAAA"})),
    cases("POST", f"{V1}/operators/{{name}}/role",
          Case(f"{V1}/operators/op-x/role", 400, "bad_role", "role: expected one of viewer, operator, admin", body={}),
          Case(f"{V1}/operators/ghost/role", 404, "no_such_operator", body={"role": "admin"}),
          Case(f"{V1}/operators/admin/role", 409, "self_demotion", body={"role": "viewer"}),
          Case(f"{V1}/operators/op-x/role", 200, body={"role": "operator"})),
    cases("DELETE", f"{V1}/operators/{{name}}",
          Case(f"{V1}/operators/ghost", 404, "no_such_operator"),
          Case(f"{V1}/operators/admin", 409, "self_disable")),
    cases("POST", f"{V1}/operators/{{name}}/delete",
          Case(f"{V1}/operators/ghost/delete", 404, "no_such_operator"),
          Case(f"{V1}/operators/op-x/delete", 409, "still_active",
               "operator 'op-x' is active: disable it first (dvic operators disable op-x)")),
    cases("POST", f"{V1}/operators/{{name}}/tokens",
          Case(f"{V1}/operators/ghost/tokens", 404, "no_such_operator"),
          Case(f"{V1}/operators/op-x/tokens", 400, "bad_field",
               "expires_in: seconds from now, more than 0 and at most 315360000 (ten years)", body={"expires_in": -1}),
          Case(f"{V1}/operators/op-x/tokens", 400, "unknown_field",
               "unknown field 'expires' (did you mean 'expires_in'?)", body={"expires": 60}),
          Case(f"{V1}/operators/op-x/tokens", 201),
          Case(f"{V1}/operators/op-x/tokens", 201, body={"expires_in": 60})),
    cases("GET", f"{V1}/audit",
          Case(f"{V1}/audit?limit=0", 400, "bad_query", "limit: expected an integer from 1 to 1000"),
          Case(f"{V1}/audit?limit=3", 200)),
    # -- alerts (issue 15) ----------------------------------------------------------------------
    cases("GET", f"{V1}/alerts",
          Case(f"{V1}/alerts?all=maybe", 400, "bad_query", "all: expected one of 0, 1, false, true", who="viewer"),
          Case(f"{V1}/alerts?all=1&cursor=x", 400, "bad_query", "~cursor: expected text matching", who="viewer"),
          Case(f"{V1}/alerts", 200, who="viewer"),
          Case(f"{V1}/alerts?all=1&limit=5", 200, who="viewer")),
    cases("GET", f"{V1}/alerts/{{id}}",
          Case(f"{V1}/alerts/12x", 404, "not_found", who="viewer"),
          Case(f"{V1}/alerts/999", 404, "not_found", "no alert #999", who="viewer")),
    cases("POST", f"{V1}/alerts/{{id}}/ack",
          Case(f"{V1}/alerts/999/ack", 400, "bad_note", "note: expected a string", body={"note": 5}, who="operator"),
          Case(f"{V1}/alerts/999/ack", 404, "not_found", "no open alert #999 (resolved, or never existed)",
               body={"note": "on it"}, who="operator")),
    cases("GET", f"{V1}/silences", Case(f"{V1}/silences", 200, who="viewer")),
    cases("POST", f"{V1}/silences",
          Case(f"{V1}/silences", 400, "bad_silence", "~a silence needs at least one of group, node, rule, severity",
               body={"for": "1h"}, who="operator"),
          Case(f"{V1}/silences", 400, "bad_duration", "~for: ", body={"group": "hall"}, who="operator"),
          Case(f"{V1}/silences", 400, "bad_duration", "~for: expected 0 to 30d", body={"group": "hall", "for": "90d"},
               who="operator"),
          Case(f"{V1}/silences", 201, body={"group": "hall", "for": "1h", "note": "rewiring"}, who="operator")),
    cases("DELETE", f"{V1}/silences/{{id}}",
          Case(f"{V1}/silences/999", 404, "not_found", "no current silence #999", who="operator")),
    cases("GET", f"{V1}/rules", Case(f"{V1}/rules", 200, who="viewer")),
    cases("POST", f"{V1}/rules",
          Case(f"{V1}/rules", 400, "unknown_metric", "~metric: unknown metric 'humidity'",
               body={"name": "h", "type": "metric", "metric": "humidity", "threshold": 1}, who="operator"),
          Case(f"{V1}/rules", 400, "bad_pattern", "~pattern: nested quantifiers",
               body={"name": "l", "type": "log", "pattern": "(a+)+", "rate": 1}, who="operator"),
          Case(f"{V1}/rules", 201, body={"name": "hot", "type": "metric", "metric": "temp", "threshold": 70},
               who="operator")),
    cases("PATCH", f"{V1}/rules/{{name}}",
          Case(f"{V1}/rules/nope", 404, "not_found", body={"enabled": False}, who="operator"),
          Case(f"{V1}/rules/disk_full", 400, "bad_duration", "~for: expected a duration", body={"for": "soon"},
               who="operator"),
          Case(f"{V1}/rules/disk_full", 200, body={"threshold": 92}, who="operator")),
    cases("DELETE", f"{V1}/rules/{{name}}",
          Case(f"{V1}/rules/nope", 404, "not_found", who="operator"),
          Case(f"{V1}/rules/disk_full", 200, who="operator")),
    cases("GET", "/metrics",
          Case("/metrics", 401, "unauthenticated", who="none"),
          Case("/metrics", 200, who="viewer")),
    # -- commands -------------------------------------------------------------------------------
    cases("POST", f"{V1}/commands",
          Case(f"{V1}/commands", 400, "bad_command", "give exactly one of 'argv' (list of strings) and 'shell' (string)",
               body={"nodes": ["pi-a"]}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_command", "give exactly one of 'argv' (list of strings) and 'shell' (string)",
               body={"nodes": ["pi-a"], "argv": ["id"], "shell": "id"}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_command", "argv: expected a non-empty list of strings",
               body={"nodes": ["pi-a"], "argv": "id"}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_command", "argv: expected a non-empty list of strings",
               body={"nodes": ["pi-a"], "argv": ["id", 5]}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_command", "shell: expected a non-empty string",
               body={"nodes": ["pi-a"], "shell": "  "}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_timeout", "timeout: seconds, more than 0 and at most 3600",
               body={"nodes": ["pi-a"], "argv": ["id"], "timeout": 0}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_timeout", "timeout: seconds, more than 0 and at most 3600",
               body={"nodes": ["pi-a"], "argv": ["id"], "timeout": None}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_targets", TARGETS, body={"argv": ["id"]}, who="operator"),
          Case(f"{V1}/commands", 400, "bad_targets", TARGETS, body={"argv": ["id"], "nodes": []}, who="operator"),
          Case(f"{V1}/commands", 404, "no_such_node", body={"nodes": ["ghost"], "argv": ["id"]}, who="operator"),
          Case(f"{V1}/commands", 404, "empty_group", "no node in group 'nobody'",
               body={"group": "nobody", "argv": ["id"]}, who="operator"),
          Case(f"{V1}/commands", 413, "too_large", "command longer than 65536 bytes",
               body={"nodes": ["pi-a"], "shell": "x" * 70_000}, who="operator"),
          Case(f"{V1}/commands", 201, body={"nodes": ["pi-a"], "argv": ["true"]}, who="operator"),
          Case(f"{V1}/commands", 201, body={"all": True, "shell": "true", "timeout": 5}, who="operator")),
    cases("POST", f"{V1}/commands/{{id}}/cancel",
          Case(f"{V1}/commands/ghost/cancel", 404, "no_such_command", who="operator")),
    cases("GET", f"{V1}/commands",
          Case(f"{V1}/commands?limit=0", 400, "bad_query", who="operator"),
          Case(f"{V1}/commands?node=ghost", 404, "no_such_node", who="operator"),
          Case(f"{V1}/commands?node=pi-a&limit=1", 200, who="operator")),
    cases("GET", f"{V1}/commands/{{id}}", Case(f"{V1}/commands/ghost", 404, "no_such_command", who="operator")),
    cases("GET", f"{V1}/commands/{{id}}/stream",
          Case(f"{V1}/commands/ghost/stream", 404, "no_such_command", who="operator")),
    # -- relays ---------------------------------------------------------------------------------
    cases("GET", f"{V1}/nodes/{{node}}/shell",
          Case(f"{V1}/nodes/pi-a/shell?cols=0", 400, "bad_query", "cols: expected an integer from 1 to 1000",
               who="operator"),
          Case(f"{V1}/nodes/pi-a/shell?rows=x", 400, "bad_query", "rows: expected an integer from 1 to 1000",
               who="operator"),
          Case(f"{V1}/nodes/ghost/shell", 404, "no_such_node", who="operator"),
          Case(f"{V1}/nodes/pi-a/shell", 403, "bad_origin", who="operator", headers={"Origin": "http://evil"}),
          Case(f"{V1}/nodes/pi-a/shell?cols=120&rows=40", 409, "node_offline",
               "node 'pi-a' is new: no shell possible", who="operator")),
    cases("GET", f"{V1}/sessions",
          Case(f"{V1}/sessions?limit=x", 400, "bad_query", who="operator"),
          Case(f"{V1}/sessions?node=pi-a", 200, who="operator")),
    cases("GET", f"{V1}/sessions/{{id}}/recording",
          Case(f"{V1}/sessions/ghost/recording", 404, "no_such_session", who="operator")),
    cases("GET", f"{V1}/nodes/{{node}}/tunnel",
          Case(f"{V1}/nodes/pi-a/tunnel", 400, "bad_query", "host: a host name or IP address", who="operator"),
          Case(f"{V1}/nodes/pi-a/tunnel?host=a%20b", 400, "bad_query", "host: a host name or IP address",
               who="operator"),
          Case(f"{V1}/nodes/pi-a/tunnel?host=x&port=99999", 400, "bad_query", "port: a TCP port number",
               who="operator"),
          Case(f"{V1}/nodes/pi-a/tunnel?host=x&port=23", 403, "port_not_allowed", who="operator"),
          Case(f"{V1}/nodes/pi-a/tunnel?host=x", 409, "node_offline", who="operator")),
    # -- actions and updates --------------------------------------------------------------------
    cases("POST", f"{V1}/nodes/{{node}}/actions",
          Case(f"{V1}/nodes/pi-a/actions", 400, "bad_action", "action: one of reboot, restart_demo, stop_demo, start_demo",
               body={"action": "update"}, who="operator"),
          Case(f"{V1}/nodes/pi-a/actions", 400, "bad_demo", "demo: a demo name", body={"action": "stop_demo", "demo": 5},
               who="operator"),
          Case(f"{V1}/nodes/pi-a/actions", 400, "bad_timeout", "timeout: seconds from 1 to 86400",
               body={"action": "reboot", "timeout": 0.5}, who="operator"),
          Case(f"{V1}/nodes/ghost/actions", 404, "no_such_node", body={"action": "reboot"}, who="operator"),
          Case(f"{V1}/nodes/pi-a/actions", 201, body={"action": "restart_demo", "demo": None, "timeout": 30},
               who="operator")),
    cases("GET", f"{V1}/actions",
          Case(f"{V1}/actions?limit=1001", 400, "bad_query", who="viewer"),
          Case(f"{V1}/actions?node=pi-a", 200, who="viewer")),
    cases("GET", f"{V1}/actions/{{id}}", Case(f"{V1}/actions/ghost", 404, "no_such_action", who="viewer")),
    cases("POST", f"{V1}/update",
          Case(f"{V1}/update", 400, "bad_targets", TARGETS, body={}, who="operator"),
          Case(f"{V1}/update", 400, "bad_targets", TARGETS, body={"nodes": "pi-a"}, who="operator"),
          Case(f"{V1}/update", 201, body={"nodes": ["pi-a"]}, who="operator")),
    # -- release --------------------------------------------------------------------------------
    cases("GET", f"{V1}/release", Case(f"{V1}/release", 200, who="viewer")),
    cases("GET", f"{V1}/node/release",
          Case(f"{V1}/node/release", 401, "bad_token", "unknown node token", who="none"),
          Case(f"{V1}/node/release", 200, who="node")),
    cases("GET", f"{V1}/release/daemon", Case(f"{V1}/release/daemon", 200, who="none")),
    cases("POST", f"{V1}/release",
          Case(f"{V1}/release", 413, "too_large", f"a daemon file is at most {MAX_DAEMON_BYTES} bytes",
               raw=b"#" * (MAX_DAEMON_BYTES + 1)),
          Case(f"{V1}/release", 400, "bad_release", raw=b"VERSION = '9.9.9'\nthis is not python(")),
    cases("POST", f"{V1}/release/rotate-key", Case(f"{V1}/release/rotate-key", 201)),
    # -- the calendar: hours, runbooks, bookings (docs/calendar.md) --------------------------------
    cases("GET", f"{V1}/calendar",
          Case(f"{V1}/calendar?days=0", 400, "bad_query", who="viewer"),
          Case(f"{V1}/calendar?group=nowhere", 404, "no_such_group", "~no node is in group 'nowhere'", who="viewer"),
          Case(f"{V1}/calendar?group=hall&days=7", 200, who="viewer")),
    cases("PUT", f"{V1}/calendar/{{group}}/hours",
          Case(f"{V1}/calendar/hall/hours", 403, "forbidden", body={"hours": ["mon 10:00-11:00"]}, who="operator"),
          Case(f"{V1}/calendar/hall/hours", 400, "bad_hours", "'18:00-10:00' ends before it starts: a range "
               "stays within one day (for a night past midnight, write two days, e.g. 'fri 20:00-24:00' "
               "'sat 00:00-02:00')", body={"hours": ["mon-fri 18:00-10:00"]}),
          Case(f"{V1}/calendar/hall/hours", 400, "bad_hours", body={"hours": []}),
          Case(f"{V1}/calendar/hall/hours", 400, "bad_hours", "~unknown time zone 'Mars/Base'",
               body={"hours": ["mon 10:00-11:00"], "zone": "Mars/Base"}),
          Case(f"{V1}/calendar/hall/hours", 200, body={"hours": ["mon-fri 10:00-18:00"], "zone": "Europe/Paris"})),
    cases("PUT", f"{V1}/calendar/{{group}}/exceptions/{{day}}",
          Case(f"{V1}/calendar/hall/exceptions/xmas", 400, "bad_hours", "~'xmas' is not a date",
               body={"hours": "closed"}),
          Case(f"{V1}/calendar/ghost/exceptions/2099-12-25", 404, "no_such_group", body={"hours": "closed"}),
          Case(f"{V1}/calendar/hall/exceptions/2099-12-25", 200, body={"hours": "closed", "note": "holiday"})),
    cases("GET", f"{V1}/runbooks", Case(f"{V1}/runbooks?group=hall", 200, who="viewer")),
    cases("POST", f"{V1}/runbooks",
          Case(f"{V1}/runbooks", 400, "bad_runbook", "~'noon' is not a moment",
               body={"group": "hall", "name": "rb", "at": "noon", "steps": ["reboot"]}),
          Case(f"{V1}/runbooks", 400, "bad_runbook", "~'launch x': unknown step 'launch'",
               body={"group": "hall", "name": "rb", "at": "03:00", "steps": ["launch x"]}),
          Case(f"{V1}/runbooks", 400, "unknown_demo", "~'start robot': no node of group 'hall' has reported",
               body={"group": "hall", "name": "rb", "at": "03:00", "steps": ["start robot"]}),
          Case(f"{V1}/runbooks", 400, "unknown_demo", "~'deploy kiosk@1.0': no such release: publish it first",
               body={"group": "hall", "name": "rb", "at": "03:00", "steps": ["deploy kiosk@1.0"]}),
          Case(f"{V1}/runbooks", 403, "forbidden", body={"group": "hall", "name": "rb", "at": "03:00",
                                                         "steps": ["reboot"]}, who="operator"),
          Case(f"{V1}/runbooks", 201, body={"group": "hall", "name": "nightly", "at": "03:00", "steps": ["reboot"]}),
          Case(f"{V1}/runbooks", 201, body={"group": "hall", "name": "doomed", "at": "close+30m",
                                            "steps": ["run echo bye"], "catch_up": 600}),
          Case(f"{V1}/runbooks", 409, "runbook_exists", "~group 'hall' already has a runbook 'nightly'",
               body={"group": "hall", "name": "nightly", "at": "04:00", "steps": ["reboot"]})),
    cases("GET", f"{V1}/runbooks/{{group}}/{{name}}",
          Case(f"{V1}/runbooks/hall/ghost", 404, "no_such_runbook", "~no runbook 'ghost' in group 'hall'",
               who="viewer"),
          Case(f"{V1}/runbooks/hall/nightly?limit=5", 200, who="viewer")),
    cases("POST", f"{V1}/runbooks/{{group}}/{{name}}/run",
          Case(f"{V1}/runbooks/hall/nightly/run", 403, "forbidden", who="operator"),
          Case(f"{V1}/runbooks/hall/nightly/run", 201)),
    cases("DELETE", f"{V1}/runbooks/{{group}}/{{name}}",
          Case(f"{V1}/runbooks/hall/ghost", 404, "no_such_runbook"),
          Case(f"{V1}/runbooks/hall/doomed", 200)),
    cases("GET", f"{V1}/firings",
          Case(f"{V1}/firings?runbook=nightly", 400, "bad_query", "runbook: give its group too", who="viewer"),
          Case(f"{V1}/firings?group=hall&runbook=nightly&limit=3", 200, who="viewer")),
    cases("GET", f"{V1}/firings/{{id}}",
          Case(f"{V1}/firings/999999", 404, "no_such_firing", who="viewer"),
          Case(f"{V1}/firings/1", 200, who="viewer")),
    cases("GET", f"{V1}/bookings",
          Case(f"{V1}/bookings?at=tomorrow", 400, "bad_time", "~at: 'tomorrow' is not a time", who="viewer"),
          Case(f"{V1}/bookings?mine=maybe", 400, "bad_query", who="viewer"),
          Case(f"{V1}/bookings?at=%2B20d&group=hall&mine=true", 200, who="viewer")),
    cases("POST", f"{V1}/bookings",
          Case(f"{V1}/bookings", 403, "forbidden", body={"nodes": ["pi-b"], "to": "+1h"}, who="viewer"),
          Case(f"{V1}/bookings", 400, "bad_time", "~to: 'soon' is not a time", body={"nodes": ["pi-b"], "to": "soon"},
               who="operator"),
          Case(f"{V1}/bookings", 404, "no_such_node", body={"nodes": ["ghost"], "to": "+1h"}, who="operator"),
          Case(f"{V1}/bookings", 403, "forbidden", "only admins may book for someone else: leave out holder",
               body={"nodes": ["pi-b"], "to": "+1h", "holder": "admin"}, who="operator"),
          Case(f"{V1}/bookings", 404, "no_such_operator", "no operator 'ghost' to book for",
               body={"nodes": ["pi-b"], "to": "+1h", "holder": "ghost"}),
          # In the future: it holds nothing the other cases act on.
          Case(f"{V1}/bookings", 201, body={"nodes": ["pi-b"], "from": "+20d", "to": "+21d"}, who="operator"),
          Case(f"{V1}/bookings", 409, "booked", "~node 'pi-b' is already booked by booking 1 of 'who-operator'",
               body={"nodes": ["pi-b"], "from": "+20d", "to": "+21d"}),
          Case(f"{V1}/bookings", 409, "booked", body={"nodes": ["pi-b"], "from": "+19d", "to": "+22d"})),
    cases("GET", f"{V1}/bookings/{{id}}",
          Case(f"{V1}/bookings/abc", 404, "no_such_booking", who="viewer"),
          Case(f"{V1}/bookings/1", 200, who="viewer")),
    cases("POST", f"{V1}/bookings/{{id}}/extend",
          Case(f"{V1}/bookings/1/extend", 400, "bad_time", body={"to": "+1m"}, who="operator"),
          Case(f"{V1}/bookings/1/extend", 200, body={"to": "+22d"}, who="operator")),
    cases("POST", f"{V1}/bookings/{{id}}/cancel",
          Case(f"{V1}/bookings/999/cancel", 404, "no_such_booking", who="operator"),
          Case(f"{V1}/bookings/1/cancel", 200, who="operator"),
          Case(f"{V1}/bookings/1/cancel", 409, "booking_over", who="operator")),
    # -- what nodes and live clients call -------------------------------------------------------
    cases("POST", f"{V1}/keepalive",
          # The node is authenticated before its body is looked at.
          Case(f"{V1}/keepalive", 401, "unauthenticated", body={"rssi": "strong"}, who="none"),
          Case(f"{V1}/keepalive", 400, "bad_field", "rssi: expected a number from -1e+15 to 1e+15",
               body={"rssi": "strong"}, who="node"),
          Case(f"{V1}/keepalive", 400, "bad_field", "logs.v: version 2 is not supported (this server reads 1)",
               body={"logs": {"v": 2}}, who="node"),
          Case(f"{V1}/keepalive", 400, "bad_json", "~body is not valid JSON: ", raw=b"{oops", who="node"),
          Case(f"{V1}/keepalive", 400, "bad_field", "expected a JSON object", raw=b"[]", who="node"),
          Case(f"{V1}/keepalive", 413, "too_large", "keep-alive body over 65536 bytes",
               raw=b" " * (64 * 1024 + 1), who="node"),
          Case(f"{V1}/keepalive", 200, raw=b"", who="node"),
          Case(f"{V1}/keepalive", 200, body={"uptime": 5, "firmware": "1.0", "rssi": None}, who="node")),
    # -- notifications (the channel 'hook' posts to a closed port: its test fails, as it should) ---------
    cases("GET", f"{V1}/channels", Case(f"{V1}/channels", 200, who="viewer")),
    cases("POST", f"{V1}/channels/{{name}}",
          Case(f"{V1}/channels/hook", 403, "forbidden", body={"kind": "webhook"}, who="viewer"),
          Case(f"{V1}/channels/hook", 400, "bad_kind",
               "kind: expected one of webhook, ntfy, slack, mattermost, discord, smtp", body={"kind": "pager"},
               who="operator"),
          Case(f"{V1}/channels/hook", 400, "bad_url", "the channel URL must start with http:// or https:// (got 'ftp')",
               body={"kind": "webhook", "url": "ftp://files.lab/x"}, who="operator"),
          Case(f"{V1}/channels/hook", 400, "bad_field", "slack channels take no secret: allowed fields are ca_pem, url",
               body={"kind": "slack", "url": "https://h/x", "secret": "s"}, who="operator"),
          Case(f"{V1}/channels/a.b!", 400, "bad_name",
               "~channel name 'a.b!' must be 1-64 letters", body={"kind": "webhook", "url": "https://h/"},
               who="operator"),
          Case(f"{V1}/channels/hook", 201, body={"kind": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s"},
               who="operator"),
          Case(f"{V1}/channels/hook", 409, "channel_exists",
               "a channel named 'hook' exists: remove it first to change it",
               body={"kind": "webhook", "url": "http://127.0.0.1:9/hook"}, who="operator")),
    cases("POST", f"{V1}/channels/{{name}}/test",
          Case(f"{V1}/channels/ghost/test", 404, "no_such_channel", "no channel named 'ghost'", who="operator"),
          Case(f"{V1}/channels/hook/test", 502, "delivery_failed", "~cannot connect to http://127.0.0.1:9/…: ",
               who="operator")),
    cases("GET", f"{V1}/alert-routes", Case(f"{V1}/alert-routes", 200, who="viewer")),
    cases("POST", f"{V1}/channels/{{name}}/routes",
          Case(f"{V1}/channels/hook/routes", 400, "bad_severity", "severity: expected one of *, critical, warning, info",
               body={"severity": "urgent"}, who="operator"),
          Case(f"{V1}/channels/ghost/routes", 404, "unknown_channel",
               "no channel named 'ghost': add it first (dvic channel add)", body={}, who="operator"),
          Case(f"{V1}/channels/hook/routes", 201, body={"group": "hall", "severity": "warning"}, who="operator"),
          Case(f"{V1}/channels/hook/routes", 409, "route_exists", "the route (hall, warning) -> hook exists",
               body={"group": "hall", "severity": "warning"}, who="operator")),
    cases("DELETE", f"{V1}/alert-routes/{{id}}",
          Case(f"{V1}/alert-routes/999", 404, "no_such_route", "no route 999", who="operator"),
          Case(f"{V1}/alert-routes/x", 404, "no_such_route", "no route 'x'", who="operator")),
    cases("DELETE", f"{V1}/channels/{{name}}",
          Case(f"{V1}/channels/ghost", 404, "no_such_channel", "no channel named 'ghost'", who="operator"),
          Case(f"{V1}/channels/hook", 200, who="operator")),
    cases("GET", f"{V1}/notifications",
          Case(f"{V1}/notifications?state=lost", 400, "bad_query", "state: expected one of pending, sent, failed",
               who="viewer"),
          Case(f"{V1}/notifications?cursor=zz", 400, "bad_query", who="viewer"),
          Case(f"{V1}/notifications?state=failed&channel=hook&limit=5", 200, who="viewer")),
    cases("GET", f"{V1}/notifications/{{id}}",
          Case(f"{V1}/notifications/7", 404, "no_such_notification", "no notification 7", who="viewer")),
    cases("POST", f"{V1}/notifications/{{id}}/resend",
          Case(f"{V1}/notifications/7/resend", 403, "forbidden", who="viewer"),
          Case(f"{V1}/notifications/7/resend", 404, "no_such_notification", "no notification 7", who="operator")),
    cases("POST", f"{V1}/notifications/resend-failed",
          Case(f"{V1}/notifications/resend-failed", 200, who="operator")),
    # -- demos (docs/demos.md) ----------------------------------------------------------------------
    cases("POST", f"{V1}/demos/releases",
          Case(f"{V1}/demos/releases", 400, "bad_archive", "~not a gzip-compressed tar archive", raw=b"garbage",
               who="operator"),
          Case(f"{V1}/demos/releases", 400, "bad_archive", "the body is empty: send the release's tar.gz", raw=b"",
               who="operator"),
          Case(f"{V1}/demos/releases?name=a%20b", 400, "bad_demo", "~name: a demo name", raw=b"x", who="operator"),
          Case(f"{V1}/demos/releases?version=one", 400, "bad_version", "~version: a version", raw=b"x",
               who="operator"),
          Case(f"{V1}/demos/releases", 403, "forbidden", raw=b"x", who="viewer")),
    cases("GET", f"{V1}/demos", Case(f"{V1}/demos", 200, who="viewer")),
    cases("GET", f"{V1}/demos/{{name}}/releases",
          Case(f"{V1}/demos/arm/releases", 404, "no_such_demo", "no demo 'arm' is published", who="viewer")),
    cases("GET", f"{V1}/demos/status",
          Case(f"{V1}/demos/status", 200, who="viewer"),
          Case(f"{V1}/demos/status?demo=a%20b", 400, "bad_demo", "~demo: a demo name", who="viewer")),
    cases("POST", f"{V1}/deployments",
          Case(f"{V1}/deployments", 400, "bad_demo", body={"version": "1.0.0", "all": True}, who="operator"),
          Case(f"{V1}/deployments", 400, "bad_target", "give exactly one of 'node' (a name or id), 'group' (a name)"
               " or 'all': true", body={"demo": "arm", "version": "1.0.0"}, who="operator"),
          Case(f"{V1}/deployments", 400, "bad_target", body={"demo": "arm", "version": "1.0.0", "all": True,
                                                             "group": "hall"}, who="operator"),
          Case(f"{V1}/deployments", 400, "bad_batch", body={"demo": "arm", "version": "1.0.0", "all": True, "batch": 0},
               who="operator"),
          Case(f"{V1}/deployments", 404, "no_such_release", "~no release arm 9.9.9",
               body={"demo": "arm", "version": "9.9.9", "all": True}, who="operator"),
          Case(f"{V1}/deployments", 403, "forbidden", body={"demo": "arm", "version": "1.0.0", "all": True},
               who="viewer")),
    cases("POST", f"{V1}/deployments/undeploy",
          Case(f"{V1}/deployments/undeploy", 404, "no_such_demo", body={"demo": "arm", "all": True}, who="operator"),
          Case(f"{V1}/deployments/undeploy", 404, "no_such_node", body={"demo": "arm", "node": "ghost"},
               who="operator")),
    cases("POST", f"{V1}/deployments/rollback",
          Case(f"{V1}/deployments/rollback", 409, "no_deployment", "nothing is deployed of arm on group hall",
               body={"demo": "arm", "group": "hall"}, who="operator")),
    cases("GET", f"{V1}/deployments",
          Case(f"{V1}/deployments", 200, who="viewer"),
          Case(f"{V1}/deployments?limit=0", 400, "bad_query", "limit: expected an integer from 1 to 1000",
               who="viewer")),
    cases("GET", f"{V1}/deployments/{{id}}",
          Case(f"{V1}/deployments/nope", 404, "no_such_deployment", "no deployment 'nope'", who="viewer")),
    cases("GET", f"{V1}/node/releases/{{sha256}}",
          Case(f"{V1}/node/releases/{'0' * 64}", 404, "no_such_release", who="node"),
          Case(f"{V1}/node/releases/{'0' * 64}", 401, "bad_token", who="none")),
    cases("GET", f"{V1}/node/ws", Case(f"{V1}/node/ws", 401, "bad_token", "unknown node token", who="none")),
    cases("GET", f"{V1}/stream",
          Case(f"{V1}/stream", 403, "bad_origin", who="viewer", headers={"Origin": "http://evil.example"})),
])


def _token(world: World, who: str) -> str:
    return {"none": "", "node": world.node_token}[who] if who in ("none", "node") else world.tokens[who]


def test_every_route_has_its_cases() -> None:
    declared = {(s.method, s.path) for s in routes.specs}
    assert declared == set(CASES), {"without cases": declared - set(CASES), "no such route": set(CASES) - declared}


@in_module_loop
@pytest.mark.parametrize("route", list(CASES), ids=lambda r: f"{r[0]} {r[1]}")
async def test_route_answers(world: World, route: tuple[str, str]) -> None:
    method = route[0]
    for case in CASES[route]:
        status, body = await world.app.call(method, case.path, case.body, token=_token(world, case.who),
                                            raw=case.raw, headers=case.headers)
        what = (method, case.path, case.body if case.raw is None else case.raw[:40])
        assert status == case.status, (what, status, body)
        if case.code is None:
            continue
        assert body["error"]["code"] == case.code, (what, body)
        if case.message is not None and case.message.startswith("~"):
            assert re.match(re.escape(case.message[1:]), body["error"]["message"]), (what, body)
        elif case.message is not None:
            assert body["error"]["message"] == case.message, (what, body)


@in_module_loop
async def test_approving_with_the_code_works_after_the_refusals(world: World) -> None:
    status, body = await world.app.call("POST", f"{V1}/operators/reg-pending/approve",
                                        {"role": "operator", "code": world.registration_code})
    assert status == 200 and body["status"] == "active" and body["role"] == "operator", body


# -- declared parameters are enforced, each with its code ------------------------------------------
def wrong_values(schema: Schema, *, text: bool) -> list[Any]:
    """Values `schema` must refuse: of another type (a JSON body), or text it cannot read (a query)."""
    if text:
        if isinstance(schema, schemas.Int | schemas.Number):
            return ["not-a-number"]
        if isinstance(schema, schemas.Enum):
            return ["no-such-value"]
        if isinstance(schema, schemas.Str) and schema.pattern is not None:
            return ["has a space"]
        return []
    if isinstance(schema, schemas.Str | schemas.Enum | schemas.Base64):
        return [12] + (["no-such-value"] if isinstance(schema, schemas.Enum) else [])
    if isinstance(schema, schemas.Int | schemas.Number):
        return ["12", True]
    if isinstance(schema, schemas.Bool):
        return [] if schema.coerce else ["yes"]
    if isinstance(schema, schemas.Array):
        return ["x"]
    if isinstance(schema, schemas.Object) or (isinstance(schema, schemas.Json) and schema.json_kind):
        return [[1]]
    return []


# Valid values of the other required fields, so the one under test is the only wrong one.
REQUIRED = {
    ("POST", f"{V1}/nodes/{{node}}/actions"): {"action": "reboot"},
    ("POST", f"{V1}/nodes"): {"name": "pi-fields"},
    ("POST", f"{V1}/operators"): {"name": "op-fields"},
    ("POST", f"{V1}/register"): {"name": "reg-fields"},
    ("POST", f"{V1}/commands"): {"argv": ["true"], "nodes": ["pi-a"]},
    ("GET", f"{V1}/nodes/{{node}}/tunnel"): {"host": "x"},
    ("POST", f"{V1}/rules"): {"name": "rule-fields", "type": "metric"},
    ("POST", f"{V1}/silences"): {"for": "1h"},
    ("POST", f"{V1}/channels/{{name}}"): {"kind": "webhook"},
    ("POST", f"{V1}/deployments"): {"demo": "arm", "version": "1.0.0", "all": True},
    ("POST", f"{V1}/deployments/undeploy"): {"demo": "arm", "all": True},
    ("POST", f"{V1}/deployments/rollback"): {"demo": "arm", "all": True},
    ("PUT", f"{V1}/calendar/{{group}}/hours"): {"hours": ["mon 10:00-11:00"]},
    ("PUT", f"{V1}/calendar/{{group}}/exceptions/{{day}}"): {"hours": "closed"},
    ("POST", f"{V1}/runbooks"): {"group": "hall", "name": "x", "at": "03:00", "steps": ["reboot"]},
    ("POST", f"{V1}/bookings"): {"to": "+1h"},
    ("POST", f"{V1}/bookings/{{id}}/extend"): {"to": "+1h"},
}


def declared_fields() -> list[tuple[RouteSpec, str, Schema, bool]]:
    out = []
    for spec in routes.specs:
        for schema_of, text in ((spec.query, True), (spec.body, False)):
            if isinstance(schema_of, schemas.Object):
                out += [(spec, name, schema, text) for name, schema in schema_of.fields.items()
                        if wrong_values(schema, text=text)]
    return out


@in_module_loop
@pytest.mark.parametrize("spec,name,schema,text", declared_fields(),
                         ids=lambda v: v if isinstance(v, str) else f"{v.method} {v.path}" if isinstance(v, RouteSpec)
                         else "")
async def test_a_declared_field_refuses_a_wrong_value_before_the_handler(world: World, spec: RouteSpec, name: str,
                                                                         schema: Schema, text: bool) -> None:
    path = re.sub(r"{(\w+)}", lambda m: {"node": "pi-a", "name": "op-x"}.get(m.group(1), "no-such-id"), spec.path)
    if spec.role == NODE:
        token = (await world.app.enroll("kp"))["token"]  # a fresh node: keep-alives have a rate limit
    else:
        token = "" if spec.role == "public" else world.tokens["admin"]
    others = {k: v for k, v in REQUIRED.get((spec.method, spec.path), {}).items() if k != name}
    for value in wrong_values(schema, text=text):
        if text:
            query = "&".join(f"{k}={v}" for k, v in {**others, name: value}.items())
            status, body = await world.app.call(spec.method, f"{path}?{query}", token=token)
        else:
            status, body = await world.app.call(spec.method, path, {**others, name: value}, token=token)
        default = "bad_query" if text else "bad_field"
        assert status == 400, (spec.path, name, value, status, body)
        assert body["error"]["code"] == (schema.code or default), (spec.path, name, value, body)
        assert name in body["error"]["message"] or name in (schema.message or ""), (spec.path, name, body)


def operator_bodies() -> list[RouteSpec]:
    return [spec for spec in routes.specs
            if spec.role != NODE and isinstance(spec.body, schemas.Object) and not isinstance(spec.body, schemas.Query)]


@in_module_loop
@pytest.mark.parametrize("spec", operator_bodies(), ids=lambda s: f"{s.method} {s.path}")
async def test_an_operator_body_with_an_unknown_field_is_refused_naming_it(world: World, spec: RouteSpec) -> None:
    """A misspelled field is an error, not a default taken in silence."""
    path = re.sub(r"{(\w+)}", lambda m: {"node": "pi-a", "name": "op-x"}.get(m.group(1), "no-such-id"), spec.path)
    token = "" if spec.role == "public" else world.tokens["admin"]
    body = {**REQUIRED.get((spec.method, spec.path), {}), "zz_not_a_field": 1}
    status, answer = await world.app.call(spec.method, path, body, token=token)
    assert status == 400 and answer["error"]["code"] == "unknown_field", (spec.path, status, answer)
    assert "'zz_not_a_field'" in answer["error"]["message"]


def test_the_logs_group_parameter_is_declared() -> None:
    spec = next(s for s in routes.specs if s.path == f"{V1}/logs")
    assert isinstance(spec.query, schemas.Query) and "group" in spec.query.fields
    assert isinstance(spec.query.fields["node"], schemas.Csv)


@in_module_loop
async def test_the_logs_group_filter_is_applied(world: World) -> None:
    status, body = await world.app.call("GET", f"{V1}/logs?group=no-such-group", token=world.tokens["viewer"])
    assert status == 200 and body["lines"] == [], body
