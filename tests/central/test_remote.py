"""Remote control on the server side: commands and shells relayed to a scripted node over mTLS."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused_shell(server: CentralServer, node: str) -> aiohttp.WSServerHandshakeError:
    """Asks for a shell on `node` as admin; the server must refuse the upgrade. Returns the refusal."""
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{server.url}/api/v1/nodes/{node}/shell", headers=headers(server.admin_token),
                                  ssl=server.ssl_context)
    return refused.value


async def test_command_runs_streams_output_and_reports_offline_nodes(central_server: CentralServer):
    server = central_server
    online = server.enroll("pi-cmd", group="lab")
    server.enroll("pi-away", group="lab")
    async with greeted(online) as node, aiohttp.ClientSession() as http:
        status, cmd = server.api("POST", "/api/v1/commands", {"group": "lab", "argv": ["uname", "-a"], "timeout": 30})
        assert status == 201, cmd
        runs = {r["node_name"]: r for r in cmd["runs"]}
        assert runs["pi-away"]["state"] == "offline" and "offline" not in runs["pi-cmd"]["state"]
        request = await node.recv()
        assert request["type"] == "exec" and request["argv"] == ["uname", "-a"] and request["timeout"] == 30
        # The audit row exists before the node hears of the command.
        _, audit = server.api("GET", "/api/v1/audit")
        assert audit["entries"][0]["action"] == "command" and audit["entries"][0]["detail"]["argv"] == ["uname", "-a"]
        async with http.ws_connect(f"{server.url}/api/v1/commands/{cmd['id']}/stream",
                                   headers=headers(server.admin_token), ssl=server.ssl_context) as ws:
            first = json.loads((await ws.receive(timeout=5)).data)
            assert first["type"] == "command"
            rid = request["id"]
            await node.send({"type": "exec_started", "id": rid, "pid": 99})
            await node.send({"type": "exec_output", "id": rid, "stream": "stdout", "data": "Linux pi 6.1\n"})
            await node.send({"type": "exec_output", "id": rid, "stream": "stderr", "data": "warn\n"})
            await node.send({"type": "exec_exit", "id": rid, "code": 0, "reason": "exited"})
            events = []
            while not events or events[-1]["type"] != "done":
                events.append(json.loads((await ws.receive(timeout=5)).data))
        outputs = [(e["stream"], e["data"]) for e in events if e["type"] == "output"]
        assert outputs == [("stdout", "Linux pi 6.1\n"), ("stderr", "warn\n")]
    status, stored = server.api("GET", f"/api/v1/commands/{cmd['id']}")
    runs = {r["node_name"]: r for r in stored["runs"]}
    assert runs["pi-cmd"]["state"] == "exited" and runs["pi-cmd"]["code"] == 0
    assert [o["data"] for o in runs["pi-cmd"]["output"]] == ["Linux pi 6.1\n", "warn\n"]
    assert stored["done"] is True
    _, listing = server.api("GET", "/api/v1/commands?node=pi-cmd")
    assert listing["commands"][0]["id"] == cmd["id"]


async def test_node_leaving_mid_command_marks_the_run_lost(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-gone")
    async with greeted(bundle) as node:
        _, cmd = server.api("POST", "/api/v1/commands", {"nodes": ["pi-gone"], "shell": "sleep 100"})
        request = await node.recv()
        assert request["shell"] == "sleep 100"
        await node.send({"type": "exec_started", "id": request["id"], "pid": 1})

    def lost_run() -> dict | None:
        run = server.api("GET", f"/api/v1/commands/{cmd['id']}")[1]["runs"][0]
        return run if run["state"] == "lost" else None

    assert "offline" in wait_for(lost_run, timeout=5, what="the run marked lost")["message"]


async def test_cancel_reaches_the_node(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-cancel")
    async with greeted(bundle) as node:
        _, cmd = server.api("POST", "/api/v1/commands", {"nodes": ["pi-cancel"], "argv": ["sleep", "60"]})
        request = await node.recv()
        status, _ = server.api("POST", f"/api/v1/commands/{cmd['id']}/cancel")
        assert status == 200
        assert await node.recv() == {"type": "cancel", "id": request["id"]}


def test_viewers_and_bad_commands_are_refused(central_server: CentralServer):
    server = central_server
    server.enroll("pi-v")
    _, viewer = server.api("POST", "/api/v1/operators", {"name": "vera", "role": "viewer"})
    assert server.api("POST", "/api/v1/commands", {"nodes": ["pi-v"], "argv": ["id"]},
                      token=viewer["token"])[0] == 403
    assert server.api("GET", "/api/v1/commands", token=viewer["token"])[0] == 403
    cases = [
        ({"nodes": ["pi-v"]}, "bad_command"),
        ({"nodes": ["pi-v"], "argv": ["id"], "shell": "id"}, "bad_command"),
        ({"nodes": ["pi-v"], "argv": "id"}, "bad_command"),
        ({"nodes": ["pi-v"], "argv": ["id"], "timeout": 0}, "bad_timeout"),
        ({"argv": ["id"]}, "bad_targets"),
        ({"nodes": ["ghost"], "argv": ["id"]}, "no_such_node"),
    ]
    for body, code in cases:
        status, reply = server.api("POST", "/api/v1/commands", body)
        assert reply["error"]["code"] == code, (body, reply)
    # Maintenance: operators may not act on the node, admins may.
    _, olga = server.api("POST", "/api/v1/operators", {"name": "olga", "role": "operator"})
    server.api("POST", "/api/v1/nodes/pi-v/maintenance", {"on": True})
    status, reply = server.api("POST", "/api/v1/commands", {"nodes": ["pi-v"], "argv": ["id"]}, token=olga["token"])
    assert status == 403 and reply["error"]["code"] == "maintenance"
    assert server.api("POST", "/api/v1/commands", {"nodes": ["pi-v"], "argv": ["id"]})[0] == 201
    assert server.api("POST", "/api/v1/commands", {"nodes": ["pi-v"], "argv": ["id"]})[0] == 201
    # History listings honour `limit` and refuse a bad one, like the other listings.
    assert len(server.api("GET", "/api/v1/commands?limit=1")[1]["commands"]) == 1
    for path in ("/api/v1/commands", "/api/v1/sessions", "/api/v1/actions"):
        status, reply = server.api("GET", f"{path}?limit=0")
        assert status == 400 and reply["error"]["code"] == "bad_query", path


async def test_shell_relays_bytes_and_resizes_and_is_recorded(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-sh")
    async with greeted(bundle) as node, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/api/v1/nodes/pi-sh/shell?cols=100&rows=30",
                                   headers=headers(server.admin_token), ssl=server.ssl_context)
        opened = await node.recv()
        assert opened["type"] == "shell_open" and (opened["cols"], opened["rows"]) == (100, 30)
        sid = opened["id"]
        await node.send({"type": "shell_opened", "id": sid, "pid": 7})
        assert json.loads((await ws.receive(timeout=5)).data) == {"type": "opened", "session": sid}
        await ws.send_bytes(b"ls\r")
        got = await node.recv()
        assert got["type"] == "shell_input" and base64.b64decode(got["data"]) == b"ls\r"
        await ws.send_str(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        assert await node.recv() == {"type": "shell_resize", "id": sid, "cols": 120, "rows": 40}
        await node.send({"type": "shell_output", "id": sid, "data": base64.b64encode("café\r\n".encode()).decode()})
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == "café\r\n".encode()
        await node.send({"type": "shell_exit", "id": sid, "code": 0})
        final = json.loads((await ws.receive(timeout=5)).data)
        assert final["type"] == "exit" and final["code"] == 0
        assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
    # (the operator is told of the exit as it arrives; its record follows with the writer's commit)
    recorded = wait_for(lambda: next((one for one in server.api("GET", "/api/v1/sessions")[1]["sessions"]
                                      if one["id"] == sid and one["exit_code"] is not None), None),
                        what="the session's exit recorded")
    assert recorded["exit_code"] == 0
    cast = (server.data_dir / "recordings" / f"{sid}.cast").read_text().splitlines()
    header = json.loads(cast[0])
    assert header["version"] == 2 and header["width"] == 100
    events = [json.loads(line) for line in cast[1:]]
    assert ["r", "120x40"] in [e[1:] for e in events]
    assert "café\r\n" in [e[2] for e in events if e[1] == "o"]
    # Keystrokes are not recorded (they may be passwords).
    assert not any(e[1] == "i" for e in events)


async def test_shell_on_offline_node_is_refused_before_upgrade(central_server: CentralServer):
    server = central_server
    server.enroll("pi-off")
    assert (await refused_shell(server, "pi-off")).status == 409


async def test_late_stream_client_gets_stored_output_first_without_repeats(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-late")
    async with greeted(bundle) as node, aiohttp.ClientSession() as http:
        _, cmd = server.api("POST", "/api/v1/commands", {"nodes": ["pi-late"], "argv": ["echo"]})
        rid = (await node.recv())["id"]
        await node.send({"type": "exec_started", "id": rid, "pid": 5})
        await node.send({"type": "exec_output", "id": rid, "stream": "stdout", "data": "early\n"})
        wait_for(lambda: server.api("GET", f"/api/v1/commands/{cmd['id']}")[1]["runs"][0]["output"],
                 timeout=5, what="the early output stored before the client connects")
        async with http.ws_connect(f"{server.url}/api/v1/commands/{cmd['id']}/stream",
                                   headers=headers(server.admin_token), ssl=server.ssl_context) as ws:
            await node.send({"type": "exec_output", "id": rid, "stream": "stdout", "data": "late\n"})
            await node.send({"type": "exec_exit", "id": rid, "code": 0, "reason": "exited"})
            events = []
            while not events or events[-1]["type"] != "done":
                events.append(json.loads((await ws.receive(timeout=5)).data))
    outputs = [e for e in events if e["type"] == "output"]
    assert [e["data"] for e in outputs] == ["early\n", "late\n"]
    assert outputs[0]["chunk"] < outputs[1]["chunk"]


async def test_server_restart_marks_unfinished_runs_lost_and_refusals_carry_a_header(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-restart")
    async with greeted(bundle) as node:
        _, cmd = server.api("POST", "/api/v1/commands", {"nodes": ["pi-restart"], "argv": ["sleep", "9"]})
        await node.recv()
        server.kill()  # mid-command, node still connected
    server.start()
    _, stored = server.api("GET", f"/api/v1/commands/{cmd['id']}")
    assert stored["runs"][0]["state"] == "lost" and "restarted" in stored["runs"][0]["message"]
    refusal = await refused_shell(server, "pi-restart")
    assert refusal.status == 409 and refusal.headers["X-Dvic-Error"].startswith("node_offline:")
    _, action = server.api("POST", "/api/v1/nodes/pi-restart/actions", {"action": "reboot"})
    status, got = server.api("GET", f"/api/v1/actions/{action['id']}")
    assert status == 200 and got["state"] == "failed" and got["node_name"] == "pi-restart"
    assert server.api("GET", "/api/v1/actions/nope")[0] == 404
