"""Accounts on a real server: opt-in, rate-limited self-registration with a one-time code, strict
names, reclaiming squatted names, token expiry and last use, refused calls in the audit trail and
the access log, and an operator undoing its own enrollment (docs/security.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for


def make_operator(server: CentralServer, name: str, role: str, **extra: Any) -> str:
    status, body = server.api("POST", "/api/v1/operators", {"name": name, "role": role, **extra})
    assert status == 201, body
    return body["token"]


def operator_row(server: CentralServer, name: str) -> dict[str, Any] | None:
    _, body = server.api("GET", "/api/v1/operators")
    return next((o for o in body["operators"] if o["name"] == name), None)


def audit_entries(server: CentralServer) -> list[dict[str, Any]]:
    _, body = server.api("GET", "/api/v1/audit?limit=1000")
    return body["entries"]


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[CentralServer]:
    """A server that lets people register (at most 3 attempts per address, 4 accounts an hour)."""
    server = CentralServer(tmp_path / "central", extra_args=(
        "--self-register", "--register-per-address", "3", "--register-total", "4")).start()
    try:
        yield server
    finally:
        server.stop()


# -- M7: self-registration ------------------------------------------------------------------------
def test_self_registration_is_off_unless_the_server_allows_it(central_server: CentralServer):
    status, body = central_server.api("POST", "/api/v1/register", {"name": "alice"}, token="")
    assert status == 403 and body["error"]["code"] == "registration_closed"
    assert "ask an admin" in body["error"]["message"]
    assert operator_row(central_server, "alice") is None


def test_approval_needs_the_code_the_requester_was_shown(open_server: CentralServer):
    server = open_server
    status, body = server.api("POST", "/api/v1/register", {"name": "alice"}, token="")
    assert status == 201 and body["status"] == "pending", body
    code, token = body["code"], body["token"]
    assert code in body["message"]
    row = operator_row(server, "alice")
    assert row is not None and row["needs_code"] and row["registered_from"] == "127.0.0.1"
    status, body = server.api("POST", "/api/v1/operators/alice/approve", {"role": "operator"})
    assert status == 400 and body["error"]["code"] == "code_required"
    assert "dvic operators approve alice --code CODE" in body["error"]["message"]
    status, body = server.api("POST", "/api/v1/operators/alice/approve", {"role": "operator", "code": "AAAA-AAAA"})
    assert status == 403 and body["error"]["code"] == "wrong_code"
    assert server.api("GET", "/api/v1/nodes", token=token)[1]["error"]["code"] == "pending_approval"
    # Case and dashes do not matter: the code is read out or typed by a person.
    typed = code.replace("-", "").lower()
    status, body = server.api("POST", "/api/v1/operators/alice/approve", {"role": "operator", "code": typed})
    assert status == 200 and body["status"] == "active" and body["role"] == "operator"
    assert server.api("GET", "/api/v1/nodes", token=token)[0] == 200
    assert "needs_code" not in operator_row(server, "alice")  # type: ignore[operator]
    # The code is stored hashed and forgotten once used.
    assert server.query("SELECT count(*) FROM registrations") == [(0,)]


async def test_registration_is_rate_limited_per_address_and_in_total(open_server: CentralServer):
    server = open_server

    async def register(session: aiohttp.ClientSession, name: str) -> tuple[int, dict[str, Any]]:
        async with session.post(server.url + "/api/v1/register", json={"name": name},
                                ssl=server.ssl_context) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession() as first:
        assert (await register(first, "bad name"))[0] == 400  # every attempt counts for its address
        assert (await register(first, "r1"))[0] == 201
        assert (await register(first, "r2"))[0] == 201
        status, body = await register(first, "r3")
        assert status == 429 and body["error"]["code"] == "rate_limited", body
    # Another address (the loopback net is 127.0.0.0/8) has its own allowance, not the total's.
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=other) as second:
        assert (await register(second, "r4"))[0] == 201
        assert (await register(second, "r5"))[0] == 201
        status, body = await register(second, "r6")
        assert status == 429 and body["error"]["code"] == "rate_limited", body
    names = {o["name"] for o in server.api("GET", "/api/v1/operators")[1]["operators"]}
    assert names == {"admin", "r1", "r2", "r4", "r5"}
    # One server on SQLite counts in its memory, as it always did; on PostgreSQL (replicas may share
    # it) the attempts are counted in the database: the table docs/security.md describes.
    counted = server.query("SELECT scope, count(*) FROM attempts GROUP BY scope ORDER BY scope")
    # (the three refused attempts are audited as anonymous refusals, within that budget)
    expected = [("anonymous_audit", 3), ("register", 5), ("registered", 4)]
    assert counted == ([] if not server.database else expected), counted


def test_names_are_matched_whole_a_trailing_newline_is_refused(open_server: CentralServer):
    server = open_server
    status, body = server.api("POST", "/api/v1/register", {"name": "admin\n"}, token="")
    assert status == 400 and body["error"]["code"] == "bad_name"
    status, body = server.api("POST", "/api/v1/operators", {"name": "alice\n", "role": "viewer"})
    assert status == 400 and body["error"]["code"] == "bad_name"
    status, body = server.api("POST", "/api/v1/nodes", {"name": "nodeA\n", "kind": "desktop"})
    assert status == 400 and body["error"]["code"] == "bad_name"
    status, body = server.api("POST", "/api/v1/nodes", {"name": "nodeA", "kind": "desktop", "group": "hall\n"})
    assert status == 400 and body["error"]["code"] == "bad_group"
    assert [n["name"] for n in server.api("GET", "/api/v1/nodes")[1]["nodes"]] == []
    assert {o["name"] for o in server.api("GET", "/api/v1/operators")[1]["operators"]} == {"admin"}


def test_an_admin_reclaims_a_squatted_or_disabled_name(open_server: CentralServer):
    server = open_server
    status, squatter = server.api("POST", "/api/v1/register", {"name": "alice"}, token="")
    assert status == 201
    assert server.api("POST", "/api/v1/operators", {"name": "alice", "role": "operator"})[0] == 409
    status, body = server.api("POST", "/api/v1/operators/alice/delete")
    assert status == 200 and body == {"name": "alice", "deleted": True, "was": "pending"}
    assert server.api("GET", "/api/v1/me", token=squatter["token"])[0] == 401
    alice = make_operator(server, "alice", "operator")
    # An active account is disabled first (its history stays attributed while it exists).
    status, body = server.api("POST", "/api/v1/operators/alice/delete")
    assert status == 409 and body["error"]["code"] == "still_active"
    assert "dvic operators disable alice" in body["error"]["message"]
    assert server.api("DELETE", "/api/v1/operators/alice")[0] == 200
    assert server.api("POST", "/api/v1/operators/alice/delete")[0] == 200
    make_operator(server, "alice", "viewer")
    assert server.api("GET", "/api/v1/me", token=alice)[0] == 401
    assert server.api("POST", "/api/v1/operators/nobody/delete")[0] == 404
    actions = [(e["operator"], e["action"], e["target"]) for e in audit_entries(server)]
    assert ("admin", "POST /api/v1/operators/{name}/delete", "name=alice") in actions


# -- I5: token expiry and last use ---------------------------------------------------------------
def test_tokens_can_expire_and_record_their_last_use_coarsely(central_server: CentralServer):
    server = central_server
    status, body = server.api("POST", "/api/v1/operators", {"name": "temp", "role": "viewer", "expires_in": 2})
    assert status == 201 and body["expires_at"] == pytest.approx(time.time() + 2, abs=2)
    token = body["token"]
    assert server.api("GET", "/api/v1/nodes", token=token)[0] == 200

    def expired() -> bool:
        status, body = server.api("GET", "/api/v1/nodes", token=token)
        return status == 401 and body["error"]["code"] == "token_expired"

    wait_for(expired, timeout=10, what="the token to expire")
    assert "ask an admin for a new one" in server.api("GET", "/api/v1/me", token=token)[1]["error"]["message"]
    status, body = server.api("POST", "/api/v1/operators/temp/tokens", {"expires_in": 3600})
    assert status == 201 and body["expires_at"] > time.time() + 3500
    assert server.api("GET", "/api/v1/nodes", token=body["token"])[0] == 200
    for bad in (0, -5, "30d", True, 1e12):
        status, reply = server.api("POST", "/api/v1/operators/temp/tokens", {"expires_in": bad})
        assert status == 400 and reply["error"]["code"] == "bad_field", bad
    # A token issued without a body never expires (the route's old form still works).
    assert server.api("POST", "/api/v1/operators/temp/tokens")[0] == 201

    # Last use: written once, then not again within the minute however many calls come.
    wait_for(lambda: (operator_row(server, "temp") or {}).get("last_used_at"), what="last use recorded")
    first = operator_row(server, "temp")["last_used_at"]  # type: ignore[index]
    for _ in range(5):
        server.api("GET", "/api/v1/nodes", token=body["token"])
    assert operator_row(server, "temp")["last_used_at"] == first  # type: ignore[index]
    assert operator_row(server, "temp")["token_expires_at"] == body["expires_at"]  # type: ignore[index]


# -- L5: refused calls are audited, 401s counted, an access log ------------------------------------
def test_refused_calls_leave_audit_rows_and_log_lines(central_server: CentralServer):
    server = central_server
    viewer = make_operator(server, "v1", "viewer")
    oper = make_operator(server, "op1", "operator")
    server.enroll("nodeB")
    before = audit_entries(server)[0]["id"]
    guess = "dvo_guessed-token-0123456789"
    # The review's l5.sh sequence.
    assert server.api("POST", "/api/v1/commands", {"all": True, "shell": "id"}, token=viewer)[0] == 403
    assert server.api("DELETE", "/api/v1/nodes/nodeB", token=oper)[0] == 403
    assert server.api("POST", "/api/v1/operators", {"name": "evil", "role": "admin"}, token=oper)[0] == 403
    assert server.api("GET", "/api/v1/nodes", token=guess)[0] == 401
    assert server.api("POST", "/api/v1/operators", {"name": "evil", "role": "admin"}, token=guess)[0] == 401
    added = [e for e in audit_entries(server) if e["id"] > before and e["action"] != "GET /api/v1/audit"]
    got = sorted((e["operator"], e["action"], e["status"], e["detail"].get("error")) for e in added)
    assert got == [
        ("anonymous", "POST /api/v1/operators", 401, "bad_token"),
        ("op1", "DELETE /api/v1/nodes/{node}", 403, "not_your_enrollment"),
        ("op1", "POST /api/v1/operators", 403, "forbidden"),
        ("v1", "POST /api/v1/commands", 403, "forbidden"),
    ]
    # A known token is named by a hash prefix; a guessed one is not kept in any form.
    forbidden = next(e for e in added if e["operator"] == "v1")
    assert len(forbidden["detail"]["token"]) == 8 and _sha256(viewer).startswith(forbidden["detail"]["token"])
    anonymous = next(e for e in added if e["operator"] == "anonymous")
    assert "token" not in anonymous["detail"] and anonymous["remote"] == "127.0.0.1"
    wait_for(lambda: "refused a request from 127.0.0.1" in server.log(), what="the 401 logged")
    server.stop()
    assert guess not in server.log()
    if server.database:  # PostgreSQL: every table the refusal could have written to
        raw = repr([server.query(f"SELECT * FROM {table}") for table in ("audit", "tokens", "events")]).encode()
    else:
        raw = (server.data_dir / "dvic.sqlite3").read_bytes() + _wal(server)
    assert guess.encode() not in raw and _sha256(guess).encode() not in raw


def test_an_anonymous_flood_gets_a_bounded_number_of_audit_rows(central_server: CentralServer):
    server = central_server
    for _ in range(25):
        assert server.api("POST", "/api/v1/operators", {"name": "x", "role": "admin"}, token="dvo_nope")[0] == 401
    rows = [e for e in audit_entries(server) if e["operator"] == "anonymous"]
    assert len(rows) == 10
    assert server.log().count("refused a request from 127.0.0.1") == 1


async def test_access_log_one_line_per_request_keepalives_summed_up(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-acc")
    assert server.api("GET", "/api/v1/logs?node=pi-acc&token=s3cret-value&limit=5")[0] == 200
    for _ in range(3):
        assert server.api("POST", "/api/v1/keepalive", {}, token=bundle["token"])[0] == 200
    async with greeted(bundle):  # connects, says hello, leaves
        pass
    line = wait_for(lambda: _line_with(server, "GET /api/v1/logs"), what="the access log line")
    assert "127.0.0.1 admin GET /api/v1/logs?node=pi-acc&token=***&limit=5 200 " in line and line.endswith(" ms")
    assert "s3cret-value" not in server.log()
    # Refused calls name who was refused; undeclared paths are logged with aiohttp's answer.
    viewer = make_operator(server, "vic", "viewer")
    assert server.api("GET", "/api/v1/operators", token=viewer)[0] == 403
    assert server.api("GET", "/api/v1/no-such-thing", token="")[0] == 404
    wait_for(lambda: _line_with(server, "127.0.0.1 vic GET /api/v1/operators 403 "), what="the refused call's line")
    wait_for(lambda: _line_with(server, "127.0.0.1 - GET /api/v1/no-such-thing 404 "), what="the 404's line")
    wait_for(lambda: _line_with(server, "node:pi-acc GET /api/v1/node/ws 101"), what="the websocket's line")
    # Keep-alives are not logged one by one by default.
    assert "/api/v1/keepalive" not in server.log()


@pytest.mark.parametrize("mode", ["all", "off"])
def test_access_log_modes(tmp_path: Path, mode: str):
    server = CentralServer(tmp_path / "central", extra_args=("--access-log", mode)).start()
    try:
        bundle = server.enroll("pi-mode")
        assert server.api("POST", "/api/v1/keepalive", {}, token=bundle["token"])[0] == 200
        assert server.api("GET", "/api/v1/health", token="")[0] == 200
        if mode == "all":
            wait_for(lambda: _line_with(server, "node:pi-mode POST /api/v1/keepalive 200"), what="keep-alive line")
        else:
            server.stop()
            assert "GET /api/v1/health" not in server.log() and "/api/v1/keepalive" not in server.log()
    finally:
        server.stop()


def _line_with(server: CentralServer, text: str) -> str:
    return next((line for line in server.log().splitlines() if text in line), "")


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _wal(server: CentralServer) -> bytes:
    wal = server.data_dir / "dvic.sqlite3-wal"
    return wal.read_bytes() if wal.exists() else b""


# -- issue 12 item 4: an operator undoes its own enrollment -----------------------------------------
async def test_an_operator_revokes_its_own_enrollment_until_the_node_connects(central_server: CentralServer):
    server = central_server
    olga = make_operator(server, "olga", "operator")
    otto = make_operator(server, "otto", "operator")
    # A failed add-node leaves an enrollment behind: its operator can undo it, and the name is free again.
    status, failed = server.api("POST", "/api/v1/nodes", {"name": "pi-fail", "kind": "desktop"}, token=olga)
    assert status == 201
    status, body = server.api("DELETE", "/api/v1/nodes/pi-fail", token=otto)
    assert status == 403 and body["error"]["code"] == "not_your_enrollment"
    assert "ask an admin" in body["error"]["message"]
    status, body = server.api("DELETE", f"/api/v1/nodes/{failed['node_id']}", token=olga)
    assert status == 200 and body["revoked"]
    assert server.api("POST", "/api/v1/nodes", {"name": "pi-fail", "kind": "desktop"}, token=olga)[0] == 201

    # Once the node has connected, it is in the fleet: only an admin revokes it, even after a restart.
    status, bundle = server.api("POST", "/api/v1/nodes", {"name": "pi-live", "kind": "desktop"}, token=olga)
    async with greeted(bundle):
        status, body = server.api("DELETE", "/api/v1/nodes/pi-live", token=olga)
        assert status == 403 and body["error"]["code"] == "node_has_connected"
        assert "only an admin" in body["error"]["message"] and "dvic remove-node pi-live" in body["error"]["message"]
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)
    status, body = server.api("DELETE", "/api/v1/nodes/pi-live", token=olga)
    assert status == 403 and body["error"]["code"] == "node_has_connected"
    # An ESP32-style node that only ever sent keep-alives has connected too.
    status, esp = server.api("POST", "/api/v1/nodes", {"name": "esp-1", "kind": "esp32"}, token=olga)
    assert server.api("POST", "/api/v1/keepalive", {}, token=esp["token"])[0] == 200
    assert server.api("DELETE", "/api/v1/nodes/esp-1", token=olga)[1]["error"]["code"] == "node_has_connected"
    # Nodes enrolled by an admin stay the admin's to revoke; viewers never pass the role gate.
    server.enroll("pi-admin")
    assert server.api("DELETE", "/api/v1/nodes/pi-admin", token=olga)[1]["error"]["code"] == "not_your_enrollment"
    viewer = make_operator(server, "vic", "viewer")
    assert server.api("DELETE", "/api/v1/nodes/pi-fail", token=viewer)[1]["error"]["code"] == "forbidden"
    assert server.api("DELETE", "/api/v1/nodes/pi-live")[0] == 200
    _, events = server.api("GET", "/api/v1/events?kind=enrolled")
    assert any(e["data"].get("by") == "olga" for e in events["events"])
