"""Every declared route, tried before authentication and from every role: the declared role holds."""

from __future__ import annotations

import re

import pytest

import central.app  # noqa: F401  (importing the app registers every route)
from central.auth import NODE, PUBLIC
from central.routes import routes
from dvic_core.constants import RANK
from tests.support.server import CentralServer

SPECS = [s for s in routes.specs if s.role not in (PUBLIC, NODE)]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> CentralServer:
    srv = CentralServer(tmp_path_factory.mktemp("roles") / "central", extra_args=("--self-register",)).start()
    srv.enroll("pi-roles")
    tokens = {}
    for role in ("viewer", "operator", "admin"):
        _, body = srv.api("POST", "/api/v1/operators", {"name": f"who-{role}", "role": role})
        tokens[role] = body["token"]
    _, pending = srv.api("POST", "/api/v1/register", {"name": "who-pending"}, token="")
    tokens["pending"] = pending["token"]
    srv.tokens = tokens  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def concrete(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: {"node": "pi-roles"}.get(m.group(1), "00000000-no-such"), path)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.method} {s.path}")
def test_route_refuses_callers_below_its_role(server: CentralServer, spec):
    path = concrete(spec.path)
    status, body = server.api(spec.method, path, {}, token="")
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    status, body = server.api(spec.method, path, {}, token="dvo_forged")
    assert status == 401
    for role, token in server.tokens.items():  # type: ignore[attr-defined]
        status, body = server.api(spec.method, path, {}, token=token)
        if role == "pending" and spec.role != "pending":
            assert status == 403 and body["error"]["code"] == "pending_approval", (role, status, body)
        elif RANK[role] < RANK[spec.role]:
            assert status == 403 and body["error"]["code"] == "forbidden", (role, status, body)
        else:
            # Allowed through the gate: whatever the handler says next, it is not an auth refusal.
            assert status not in (401,) and (body is None or not isinstance(body, dict)
                                              or body.get("error", {}).get("code") not in ("forbidden",
                                                                                           "pending_approval"))
