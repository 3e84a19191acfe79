"""Tracked actions, daemon releases and TCP tunnels on the server side, with a scripted node."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import urllib.request

import aiohttp

from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for

DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


def verify_pkcs1_sha256(data: bytes, signature_b64: str, key: dict) -> bool:
    """What the daemon does with the standard library only: RSA PKCS#1 v1.5 verification."""
    n, e = int(key["n"], 16), int(key["e"])
    k = (n.bit_length() + 7) // 8
    em = pow(int.from_bytes(base64.b64decode(signature_b64), "big"), e, n).to_bytes(k, "big")
    t = DIGEST_INFO_SHA256 + hashlib.sha256(data).digest()
    return em == b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def action_state(server: CentralServer, node: str) -> dict:
    return server.api("GET", f"/api/v1/actions?node={node}")[1]["actions"][0]


async def test_reboot_is_done_only_when_the_node_comes_back_with_a_new_boot_time(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-boot")
    async with greeted(bundle, boot_time=1000.0) as node:
        status, action = server.api("POST", "/api/v1/nodes/pi-boot/actions", {"action": "reboot"})
        assert status == 201 and action["state"] == "requested"
        request = await node.recv()
        assert request == {"type": "action", "id": action["id"], "action": "reboot", "demo": None}
        await node.send({"type": "action_state", "id": action["id"], "state": "in_progress", "message": "rebooting"})
        wait_for(lambda: action_state(server, "pi-boot")["state"] == "in_progress", timeout=5, what="in progress")
    async with greeted(bundle, boot_time=2000.0) as node:
        wait_for(lambda: action_state(server, "pi-boot")["state"] == "done", timeout=5, what="reboot done")


async def test_action_without_answer_is_lost_at_its_deadline(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-mute")
    async with greeted(bundle) as node:
        status, _ = server.api("POST", "/api/v1/nodes/pi-mute/actions",
                               {"action": "restart_demo", "demo": "robot", "timeout": 1})
        assert status == 201
        assert (await node.recv())["demo"] == "robot"
        wait_for(lambda: action_state(server, "pi-mute")["state"] == "lost", timeout=10, what="lost")
    assert server.api("POST", "/api/v1/nodes/pi-mute/actions", {"action": "explode"})[0] == 400


async def test_update_sends_a_signed_release_the_node_can_verify(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-up")
    status, info = server.api("GET", "/api/v1/release")
    assert status == 200 and info["release_key"] == bundle["release_key"]
    newer = b'"""test daemon"""\nVERSION = "99.0.0"\nprint("hi")\n'
    req = urllib.request.Request(server.url + "/api/v1/release", data=newer, method="POST",
                                 headers={"Authorization": f"Bearer {server.admin_token}"})
    with urllib.request.urlopen(req, context=server.ssl_context) as resp:
        assert json.loads(resp.read())["version"] == "99.0.0"
    async with greeted(bundle) as node:
        status, body = server.api("POST", "/api/v1/update", {"nodes": ["pi-up"]})
        assert status == 201 and body["version"] == "99.0.0"
        update = await node.recv()
        assert update["type"] == "update" and update["version"] == "99.0.0"
        with urllib.request.urlopen(update["url"], context=server.ssl_context) as resp:
            data = resp.read()
        assert data == newer and hashlib.sha256(data).hexdigest() == update["sha256"]
        assert verify_pkcs1_sha256(data, update["signature"], bundle["release_key"])
        assert not verify_pkcs1_sha256(data + b"#tampered", update["signature"], bundle["release_key"])
        await node.send({"type": "update_state", "id": update["id"], "state": "restarting", "message": ""})
    async with greeted(bundle, daemon_version="99.0.0"):  # back, running the new release
        wait_for(lambda: action_state(server, "pi-up")["state"] == "done", timeout=5, what="update done")


def test_release_upload_refuses_downgrades_and_garbage(central_server: CentralServer):
    server = central_server

    def upload(data: bytes, token: str | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(server.url + "/api/v1/release", data=data, method="POST",
                                     headers={"Authorization": f"Bearer {token or server.admin_token}"})
        try:
            with urllib.request.urlopen(req, context=server.ssl_context) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert upload(b'VERSION = "50.0"\n')[0] == 201
    status, body = upload(b'VERSION = "49.9"\n')
    assert status == 400 and "older" in body["error"]["message"]
    status, body = upload(b'VERSION = "51"\ndef broken(:\n')
    assert status == 400 and "not valid Python" in body["error"]["message"]
    status, body = upload(b"print('no version')\n")
    assert status == 400 and "VERSION" in body["error"]["message"]
    _, op = server.api("POST", "/api/v1/operators", {"name": "opal", "role": "operator"})
    assert upload(b'VERSION = "52"\n', token=op["token"])[0] == 403
    before = server.api("GET", "/api/v1/release")[1]
    status, endorsement = server.api("POST", "/api/v1/release/rotate-key")
    assert status == 201
    statement = json.dumps(endorsement["key"], sort_keys=True, separators=(",", ":")).encode()
    assert verify_pkcs1_sha256(statement, endorsement["signature"], before["release_key"])
    assert server.api("GET", "/api/v1/release")[1]["release_key"] == endorsement["key"]


async def test_tunnel_relays_tcp_bytes_through_the_node(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("pi-tun")
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    async with greeted(bundle) as node, aiohttp.ClientSession() as http:
        try:
            await http.ws_connect(f"{server.url}/api/v1/nodes/pi-tun/tunnel?host=10.9.9.9&port=3306",
                                  headers=auth, ssl=server.ssl_context)
            raise AssertionError("a port outside the allowed list was tunnelled")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
        connect = asyncio.ensure_future(http.ws_connect(
            f"{server.url}/api/v1/nodes/pi-tun/tunnel?host=10.9.9.9&port=22", headers=auth, ssl=server.ssl_context))
        request = await node.recv()
        assert request["type"] == "tunnel_open" and (request["host"], request["port"]) == ("10.9.9.9", 22)
        ws = await connect
        await node.send({"type": "tunnel_opened", "id": request["id"]})
        assert json.loads((await ws.receive(timeout=5)).data) == {"type": "opened"}
        await ws.send_bytes(b"SSH-2.0-client\r\n")
        data = await node.recv()
        assert data["type"] == "tunnel_data" and base64.b64decode(data["data"]) == b"SSH-2.0-client\r\n"
        await node.send({"type": "tunnel_data", "id": request["id"], "data": base64.b64encode(b"SSH-2.0-srv").decode()})
        assert (await ws.receive(timeout=5)).data == b"SSH-2.0-srv"
        await node.send({"type": "tunnel_closed", "id": request["id"], "message": "peer closed"})
        final = json.loads((await ws.receive(timeout=5)).data)
        assert final == {"type": "closed", "message": "peer closed"}
        await ws.close()
    _, audit = server.api("GET", "/api/v1/audit")
    assert any(e["action"] == "tunnel" and e["detail"]["port"] == 22 for e in audit["entries"])
