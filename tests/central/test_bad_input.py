"""Bad input from nodes: each case gets its specific close code or HTTP error, and loses nothing accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fake_node import FakeNode
from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def central_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """One server for the module: every test enrolls a node of its own (`name`)."""
    with CentralServer(tmp_path_factory.mktemp("bad-input") / "central") as server:
        yield server


@pytest.fixture
def name(tmp_path: Path) -> str:
    """The test's node name, unique in the session (its tmp_path's)."""
    return tmp_path.name


async def _stored_seqs(server: CentralServer, name: str) -> list[int]:
    _, body = server.api("GET", f"/api/v1/logs?node={name}&limit=1000")
    return sorted(line["seq"] for line in body["lines"])


@pytest.mark.parametrize(
    ("frame", "close_code", "error_code"),
    [
        ("{not json", 4001, "bad_message"),
        ("[1, 2, 3]", 4001, "bad_message"),
        (json.dumps({"type": "teleport"}), 4003, "unknown_type"),
        (json.dumps({"type": "logs", "lines": [{"seq": 0, "ts": 1, "source": "demo", "level": "INFO", "msg": "x"}]}),
         4001, "bad_message"),
        (json.dumps({"type": "logs", "lines": [{"seq": 5, "ts": 1, "source": "demo", "level": "LOUD", "msg": "x"}]}),
         4001, "bad_message"),
        (json.dumps({"type": "metrics", "ts": "yesterday"}), 4001, "bad_message"),
    ],
    ids=["not-json", "not-object", "unknown-type", "seq-zero", "bad-level", "bad-ts"],
)
async def test_malformed_messages_close_with_a_reason_and_keep_accepted_lines(
    central_server: CentralServer, name: str, frame: str, close_code: int, error_code: str
):
    bundle = central_server.enroll(name)
    async with greeted(bundle) as node:
        await node.send_logs([node.line("accepted 1"), node.line("accepted 2")])
        await node.send_raw(frame)
        error = await node.recv()
        assert error["type"] == "error" and error["code"] == error_code and error["message"]
        assert await node.closed() == close_code
    assert await _stored_seqs(central_server, name) == [1, 2]
    # The server logged why, without secrets.
    wait_for(lambda: name in central_server.log(), timeout=5, what="server log line")
    assert bundle["token"] not in central_server.log()
    assert "PRIVATE KEY" not in central_server.log()


async def test_message_before_hello(central_server: CentralServer, name: str):
    bundle = central_server.enroll(name)
    async with FakeNode(bundle) as node:
        await node.connect()
        await node.send({"type": "logs", "lines": [node.line("too early")]})
        assert (await node.recv())["code"] == "hello_first"
        assert await node.closed() == 4002
    assert await _stored_seqs(central_server, name) == []


async def test_wrong_protocol_version(central_server: CentralServer, name: str):
    bundle = central_server.enroll(name)
    async with FakeNode(bundle) as node:
        await node.connect()
        await node.send({"type": "hello", "protocol": 9, "facts": {}})
        error = await node.recv()
        assert error["code"] == "bad_version" and "9" in error["message"]
        assert await node.closed() == 4004


async def test_oversized_frame_closes_1009_and_keeps_earlier_lines(central_server: CentralServer, name: str):
    bundle = central_server.enroll(name)
    async with greeted(bundle) as node:
        await node.send_logs([node.line("before the flood")])
        await node.send_raw(json.dumps({"type": "logs", "lines": [node.line("x" * (1024 * 1024 + 10))]}))
        assert await node.closed() == 1009
    assert await _stored_seqs(central_server, name) == [1]
    wait_for(lambda: central_server.node(name)["state"] == "offline", timeout=5, what="offline")


async def test_too_many_lines_in_one_batch(central_server: CentralServer, name: str):
    bundle = central_server.enroll(name)
    async with greeted(bundle) as node:
        await node.send({"type": "logs", "lines": [node.line("l") for _ in range(501)]})
        error = await node.recv()
        assert "500" in error["message"]
        assert await node.closed() == 4001


async def test_long_line_is_truncated_to_64_kib_not_refused(central_server: CentralServer, name: str):
    bundle = central_server.enroll(name)
    async with greeted(bundle) as node:
        await node.send_logs([node.line("é" * 40_000)])  # 80,000 bytes of UTF-8
    _, body = central_server.api("GET", f"/api/v1/logs?node={name}")
    stored = body["lines"][0]["msg"]
    assert len(stored.encode()) <= 64 * 1024 and set(stored) == {"é"}


async def test_lone_surrogates_are_stored_as_valid_text(central_server: CentralServer, name: str):
    bundle = central_server.enroll(name)
    async with greeted(bundle) as node:
        await node.send_raw('{"type":"logs","lines":[{"seq":1,"ts":1.0,"source":"demo","level":"INFO","msg":"a\\ud800b"}]}')
        assert (await node.recv())["type"] == "ack"
    _, body = central_server.api("GET", f"/api/v1/logs?node={name}")
    assert body["lines"][0]["msg"].startswith("a") and body["lines"][0]["msg"].endswith("b")


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, b"{}", 401, "unauthenticated"),
        ({"Authorization": "Bearer dvn_not-a-token"}, b"{}", 401, "bad_token"),
        (None, b"{oops", 400, "bad_json"),
        (None, b'{"rssi": "strong"}', 400, "bad_field"),
        (None, b'{"firmware": "' + b"x" * 70000 + b'"}', 413, "too_large"),
    ],
    ids=["no-token", "bad-token", "bad-json", "bad-field", "too-large"],
)
async def test_keepalive_bad_input(central_server: CentralServer, name: str, headers, body, status, code):
    bundle = central_server.enroll(name, kind="esp32")
    if headers is None:
        headers = {"Authorization": f"Bearer {bundle['token']}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(bundle["keepalive_url"], data=body, headers=headers,
                             ssl=central_server.ssl_context) as resp:
            assert resp.status == status
            assert (await resp.json())["error"]["code"] == code
    # Nothing of that counted as a sign of life.
    assert central_server.node(name)["state"] == "new"


async def test_keepalive_of_a_revoked_node_is_refused(central_server: CentralServer, name: str):
    bundle = central_server.enroll(name, kind="esp32")
    assert central_server.api("DELETE", f"/api/v1/nodes/{name}")[0] == 200
    async with aiohttp.ClientSession() as http:
        async with http.post(bundle["keepalive_url"], json={}, ssl=central_server.ssl_context,
                             headers={"Authorization": f"Bearer {bundle['token']}"}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "revoked"
