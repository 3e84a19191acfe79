"""The operator API: roles, approval, audit, history queries and the live stream, on a real server."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.central.streamkit import stream_seqs
from tests.support.fake_node import FakeNode
from tests.support.nodes import greeted
from tests.support.server import CentralServer


def make_operator(server: CentralServer, name: str, role: str) -> str:
    status, body = server.api("POST", "/api/v1/operators", {"name": name, "role": role})
    assert status == 201, body
    return body["token"]


def test_self_registration_waits_for_approval(tmp_path):
    server = CentralServer(tmp_path / "central", extra_args=("--self-register",)).start()
    try:
        _registration_waits_for_approval(server)
    finally:
        server.stop()


def _registration_waits_for_approval(server: CentralServer) -> None:
    status, body = server.api("POST", "/api/v1/register", {"name": "alice"}, token="")
    assert status == 201 and body["status"] == "pending"
    token, code = body["token"], body["code"]
    assert server.api("GET", "/api/v1/me", token=token) == (200, {"name": "alice", "role": "viewer",
                                                                  "status": "pending"})
    status, body = server.api("GET", "/api/v1/nodes", token=token)
    assert status == 403 and body["error"]["code"] == "pending_approval"
    status, body = server.api("POST", "/api/v1/operators/alice/approve", {"role": "operator", "code": code})
    assert status == 200 and body["status"] == "active" and body["role"] == "operator"
    assert server.api("GET", "/api/v1/nodes", token=token)[0] == 200
    # Approving twice is a conflict, not a silent success.
    assert server.api("POST", "/api/v1/operators/alice/approve", {"role": "viewer"})[0] == 409
    # Registering an existing name is refused.
    assert server.api("POST", "/api/v1/register", {"name": "alice"}, token="")[0] == 409


def test_roles_gate_every_endpoint(central_server: CentralServer):
    server = central_server
    viewer = make_operator(server, "vic", "viewer")
    operator = make_operator(server, "olga", "operator")
    server.enroll("pi-r")
    cases = [
        ("GET", "/api/v1/nodes", None, {"viewer": 200, "operator": 200}),
        ("POST", "/api/v1/nodes", {"name": "pi-new", "kind": "desktop"}, {"viewer": 403, "operator": 201}),
        ("POST", "/api/v1/nodes/pi-r/maintenance", {"on": True}, {"viewer": 403, "operator": 200}),
        # Routes whose handler refuses an operator (not its own enrollment) answer 403 with a reason
        # of their own; the role gate's refusals say `forbidden`.
        ("DELETE", "/api/v1/nodes/pi-r", None, {"viewer": 403, "operator": 403}),
        ("GET", "/api/v1/operators", None, {"viewer": 403, "operator": 403}),
        ("GET", "/api/v1/audit", None, {"viewer": 403, "operator": 403}),
    ]
    for method, path, body, expected in cases:
        for role, token in (("viewer", viewer), ("operator", operator)):
            status, reply = server.api(method, path, body, token=token)
            assert status == expected[role], (method, path, role, reply)
            if status == 403:
                expected_code = "not_your_enrollment" if (method, role) == ("DELETE", "operator") else "forbidden"
                assert reply["error"]["code"] == expected_code, (method, path, role, reply)
        status, reply = server.api(method, path, body, token="")
        assert status == 401 and reply["error"]["code"] == "unauthenticated"
        status, reply = server.api(method, path, body, token="dvo_wrong")
        assert status == 401 and reply["error"]["code"] == "bad_token"
    assert server.node("pi-r")["state"] == "maintenance"


def test_disabled_operator_loses_access_and_audit_records_who_did_what(central_server: CentralServer):
    server = central_server
    token = make_operator(server, "bob", "operator")
    assert server.api("GET", "/api/v1/nodes", token=token)[0] == 200
    assert server.api("DELETE", "/api/v1/operators/bob")[0] == 200
    assert server.api("GET", "/api/v1/nodes", token=token)[0] == 401
    status, audit = server.api("GET", "/api/v1/audit")
    actions = [(e["operator"], e["action"], e["status"]) for e in audit["entries"]]
    assert ("admin", "DELETE /api/v1/operators/{name}", 200) in actions
    assert ("admin", "POST /api/v1/operators", 201) in actions
    # The admin cannot lock themselves out.
    assert server.api("DELETE", "/api/v1/operators/admin")[1]["error"]["code"] == "self_disable"
    assert server.api("POST", "/api/v1/operators/admin/role", {"role": "viewer"})[0] == 409


def test_undeclared_paths_and_bad_bodies_get_json_errors(central_server: CentralServer):
    server = central_server
    status, body = server.api("GET", "/api/v1/secret-admin-thing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = server.api("POST", "/api/v1/nodes", {"name": "bad name!", "kind": "desktop"})
    assert status == 400 and body["error"]["code"] == "bad_name"
    status, body = server.api("POST", "/api/v1/nodes", {"name": "ok", "kind": "toaster"})
    assert status == 400 and "desktop" in body["error"]["message"]
    server.enroll("twin")
    status, body = server.api("POST", "/api/v1/nodes", {"name": "twin", "kind": "desktop"})
    assert status == 409 and body["error"]["code"] == "name_taken"
    assert server.api("GET", "/api/v1/nodes/nope")[0] == 404
    assert server.api("GET", "/api/v1/nodes?state=sleepy")[0] == 400
    assert server.api("GET", "/api/v1/logs?cursor=garbage")[1]["error"]["code"] == "bad_query"
    assert server.api("GET", "/api/v1/logs?limit=0")[0] == 400
    assert server.api("GET", "/api/v1/logs?from=yesterday")[0] == 400


def test_openapi_lists_every_route_with_its_role(central_server: CentralServer):
    status, doc = central_server.api("GET", "/api/v1/openapi.json", token="")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert doc["paths"]["/api/v1/nodes"]["post"]["x-dvic-role"] == "operator"
    assert doc["paths"]["/api/v1/nodes/{node}"]["delete"]["x-dvic-role"] == "operator"
    assert doc["paths"]["/api/v1/operators/{name}/delete"]["post"]["x-dvic-role"] == "admin"
    assert doc["paths"]["/api/v1/register"]["post"]["x-dvic-role"] == "public"
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["x-dvic-role"], path


async def test_log_search_filters_and_pagination(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-logs", group="hall-b")
    async with greeted(bundle) as node:
        lines = [node.line(f"calibration step {i}", level="INFO") for i in range(30)]
        lines += [node.line("motor overheated: stopping", level="ERROR"),
                  node.line("kernel: usb 1-1 disconnect", source="system", unit="kernel", level="WARNING"),
                  node.line('weird "quotes" OR - * (parens)', level="INFO")]
        await node.send_logs(lines)
    _, body = server.api("GET", "/api/v1/logs?node=pi-logs&q=overheat")
    assert [line["msg"] for line in body["lines"]] == ["motor overheated: stopping"]
    _, body = server.api("GET", "/api/v1/logs?node=pi-logs&level=warning")
    assert {line["level"] for line in body["lines"]} == {"ERROR", "WARNING"}
    _, body = server.api("GET", "/api/v1/logs?node=pi-logs&source=system")
    assert body["lines"][0]["unit"] == "kernel"
    # FTS syntax in user text is taken literally, never an error.
    status, body = server.api("GET", '/api/v1/logs?q=%22quotes%22%20OR%20-%20*')
    assert status == 200 and len(body["lines"]) == 1
    _, body = server.api("GET", "/api/v1/logs?group=hall-b&limit=1")
    assert body["lines"][0]["node_name"] == "pi-logs"
    # Pagination: newest first, every line exactly once.
    seen: list[int] = []
    cursor = ""
    for _ in range(10):
        _, page = server.api("GET", f"/api/v1/logs?node=pi-logs&limit=7&cursor={cursor}")
        seen += [line["seq"] for line in page["lines"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(range(33, 0, -1))


async def test_stream_pushes_node_updates_and_subscribed_logs(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-live")
    quiet = server.enroll("pi-quiet")
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url + "/api/v1/stream", headers=headers, ssl=server.ssl_context) as ws:
            hello = json.loads((await ws.receive(timeout=5)).data)
            assert hello["type"] == "hello" and {n["name"] for n in hello["nodes"]} == {"pi-live", "pi-quiet"}
            await ws.send_str(json.dumps({"type": "subscribe", "logs": ["pi-live"]}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "subscribed"
            async with greeted(bundle) as node, FakeNode(quiet) as other:
                await other.connect()
                await other.hello()
                sent = time.time()
                await other.send_logs([other.line("not for this client")])
                await node.send_logs([node.line("hello operators")])
                got_logs: list[dict] = []
                online: set[str] = set()
                deadline = time.monotonic() + 10
                while not got_logs and time.monotonic() < deadline:
                    msg = json.loads((await ws.receive(timeout=5)).data)
                    if msg["type"] == "node" and msg["node"]["state"] == "online":
                        online.add(msg["node"]["name"])
                    elif msg["type"] == "logs":
                        got_logs = msg["lines"]
                        assert msg["node"] == bundle["node_id"]
                assert [line["msg"] for line in got_logs] == ["hello operators"]
                assert got_logs[0]["node_name"] == "pi-live" and got_logs[0]["ts"] >= sent - 1
                assert "pi-live" in online


async def test_stream_refuses_foreign_origin_and_bad_subscribe(central_server: CentralServer):
    server = central_server
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with aiohttp.ClientSession() as http:
        try:
            await http.ws_connect(server.url + "/api/v1/stream", ssl=server.ssl_context,
                                  headers={**headers, "Origin": "https://evil.example"})
            raise AssertionError("foreign origin was accepted")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
        async with http.ws_connect(server.url + "/api/v1/stream", headers=headers, ssl=server.ssl_context) as ws:
            await ws.receive(timeout=5)
            await ws.send_str('{"type": "subscribe", "logs": "everything"}')
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001


async def test_a_stream_client_that_stops_reading_is_cut_off_and_slows_nobody(tmp_path):
    # A small queue so the cut-off comes after megabytes, not after the default 5,000 frames.
    server = CentralServer(tmp_path / "central", extra_args=("--max-client-queue", "8")).start()
    try:
        bundle = server.enroll("pi-chatty")
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with aiohttp.ClientSession() as http:
            slow = await http.ws_connect(server.url + "/api/v1/stream", headers=headers, ssl=server.ssl_context)
            fast = await http.ws_connect(server.url + "/api/v1/stream", headers=headers, ssl=server.ssl_context)
            for ws in (slow, fast):
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
                await ws.send_str(json.dumps({"type": "subscribe", "logs": ["*"]}))
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "subscribed"
            # From here `slow` is not read: its socket fills, then its queue on the server.
            reader = asyncio.create_task(stream_seqs(fast, 40 * 500))
            async with greeted(bundle) as node:
                for _ in range(40):  # 40 batches of 500 lines of 1 KB: about 20 MB to every subscriber
                    ack = await node.send_logs([node.line("x" * 1000) for _ in range(500)])
                assert ack["seq"] == 40 * 500  # the node was acked all along
            seen = await asyncio.wait_for(reader, 60)
            assert seen == list(range(1, 40 * 500 + 1))  # the reading client got every line, in order
            closed = None
            while closed is None:  # what the slow client had buffered, then the cut-off
                msg = await slow.receive(timeout=30)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    closed = slow.close_code
            # 4429, or a dropped connection when the close frame sat behind what it never read.
            assert closed in (4429, aiohttp.WSCloseCode.ABNORMAL_CLOSURE)
            await fast.close()
    finally:
        server.stop()
