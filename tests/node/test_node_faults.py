"""A misbehaving server (garbage frames, closing mid-frame, non-JSON, refusals): the daemon survives."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import dvic_node
import pytest
from daemon_support import interpreters
from node_support import accept_upgrade, read_client_frame, server_frame

from tests.support.daemon import DaemonProcess
from tests.support.pki import Pki
from tests.support.server import write_bundle
from tests.support.wait import async_wait_for

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_peer_and_daemon(pki: Pki, tmp_path: Path, on_client: ClientHandler,
                              python: str = sys.executable) -> tuple[asyncio.Server, DaemonProcess]:
    """A TLS peer on 127.0.0.1 that answers with `on_client`, and a daemon (not started) sent to it."""
    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=pki.server_context())
    port = server.sockets[0].getsockname()[1]
    bundle = pki.bundle(f"https://127.0.0.1:{port}")
    del bundle["keepalive_url"]  # this peer only speaks websocket
    logs = tmp_path / "logs"
    logs.mkdir()
    return server, DaemonProcess(write_bundle(bundle, tmp_path / "b.json"), tmp_path / "state", logs, python=python)


@pytest.mark.parametrize("python", interpreters())
async def test_daemon_survives_a_server_that_sends_garbage_then_recovers(pki: Pki, tmp_path: Path,
                                                                         python: str) -> None:
    connections: list[str] = []
    after_welcome: list[dict] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(connections)
        try:
            head = await accept_upgrade(reader, writer)
            connections.append(head.split(b" ")[1].decode())
            op, payload = await read_client_frame(reader)
            assert op == dvic_node.OP_TEXT and json.loads(payload)["type"] == "hello"
            if n == 0:  # a frame with a reserved opcode
                writer.write(server_frame(0x3, b"\x00garbage"))
            elif n == 1:  # half a frame, then the TCP connection ends
                writer.write(server_frame(dvic_node.OP_TEXT, b'{"type": "welcome", "last_seq": 0}')[:9])
            elif n == 2:  # a text frame that is not JSON
                writer.write(server_frame(dvic_node.OP_TEXT, b"<html>oops</html>"))
            else:  # finally a proper server
                writer.write(server_frame(dvic_node.OP_TEXT, json.dumps(
                    {"type": "welcome", "protocol": 1, "node_id": "x", "name": "n",
                     "settings": {"interval": 0.2}, "last_seq": 0}).encode()))
                writer.write(server_frame(dvic_node.OP_TEXT, json.dumps(  # a request from a newer server
                    {"type": "teleport", "id": "req-1", "where": "moon"}).encode()))
                writer.write(server_frame(dvic_node.OP_TEXT, b'{"type": "ack", "seq": 999999999}'))  # bogus
                for _ in range(200):  # bounded: read what the daemon sends until metrics and the answer
                    op, payload = await read_client_frame(reader)
                    if op == dvic_node.OP_TEXT:
                        after_welcome.append(json.loads(payload))
                        kinds = {m["type"] for m in after_welcome}
                        if {"metrics", "unsupported"} <= kinds:
                            break
            await writer.drain()
            if n < 3:
                await asyncio.sleep(0.2)  # let the daemon's close frame arrive before TCP goes away
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server, daemon = await raw_peer_and_daemon(pki, tmp_path, on_client, python)
    async with server:
        daemon.start()
        try:
            await async_wait_for(lambda: {"metrics", "unsupported"} <= {m["type"] for m in after_welcome}, 30,
                                 "metrics after three broken sessions")
            assert {"type": "unsupported", "id": "req-1", "what": "teleport"} in after_welcome
            await async_wait_for(lambda: "beyond the last line sent" in daemon.log(), 10, "the bogus ack refused")
            log = daemon.log()
            assert "unknown opcode 3" in log
            assert "mid-frame" in log
            assert "invalid JSON" in log
            assert connections[:4] == ["/api/v1/node/ws"] * 4
            assert daemon.running()
        finally:
            code = await asyncio.get_running_loop().run_in_executor(None, daemon.stop)
    assert code == 0


async def test_refused_upgrade_is_logged_with_the_servers_reason(pki: Pki, tmp_path: Path) -> None:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = b'{"error": {"code": "revoked", "message": "node \'n\' has been revoked"}}'
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server, daemon = await raw_peer_and_daemon(pki, tmp_path, on_client)
    async with server:
        daemon.start()
        try:
            await async_wait_for(lambda: daemon.log().count("reconnecting in") >= 2, 30, "two refusals")
            assert "HTTP 403 Forbidden" in daemon.log() and "has been revoked" in daemon.log()
            assert daemon.running()
        finally:
            await asyncio.get_running_loop().run_in_executor(None, daemon.stop)


def test_bad_bundle_exits_with_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    for content, expected in [("{", "not valid JSON"), ("[]", "not a JSON object"),
                              ('{"node_id": "x"}', "'ws_url' is missing")]:
        path = tmp_path / "bundle.json"
        path.write_text(content)
        out = subprocess.run([sys.executable, str(Path(dvic_node.__file__)), "--config", str(path),
                              "--state-dir", str(tmp_path / "s")], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and expected in out.stderr, out.stderr
    out = subprocess.run([sys.executable, str(Path(dvic_node.__file__)), "--config", str(tmp_path / "nope.json")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "cannot read bundle" in out.stderr


async def test_keepalive_reuses_its_connection_and_reports_refusals(pki: Pki, tmp_path: Path) -> None:
    from aiohttp import web
    from node_support import start_app

    seen: list[tuple[object, str, dict]] = []

    async def keepalive(request: web.Request) -> web.Response:
        seen.append((request.transport, request.headers.get("Authorization", ""), await request.json()))
        if request.headers.get("Authorization") != "Bearer node-token-1":
            return web.json_response({"error": {"code": "bad_token", "message": "unknown node token"}}, status=401)
        return web.json_response({"server_time": 1.0, "interval": 5, "node_id": "x"})

    app = web.Application()
    app.router.add_post("/api/v1/keepalive", keepalive)
    runner, url = await start_app(app, pki.server_context())
    try:
        ctx = dvic_node.make_ssl_context(pki.bundle(url), str(tmp_path / "tls"))
        ka = dvic_node.KeepAlive(url + "/api/v1/keepalive", "node-token-1", ctx)
        assert (await ka.post({"uptime": 1.0}))["node_id"] == "x"
        assert (await ka.post({"uptime": 2.0}))["interval"] == 5
        assert seen[0][0] is seen[1][0]  # one TLS connection, reused
        assert seen[1][2] == {"uptime": 2.0}
        ka.close()
        bad = dvic_node.KeepAlive(url + "/api/v1/keepalive", "wrong", ctx)
        with pytest.raises(dvic_node.KeepAliveError, match="HTTP 401 .*unknown node token"):
            await bad.post({})
        bad.close()
    finally:
        await runner.cleanup()
    with pytest.raises(dvic_node.KeepAliveError, match="refused"):
        await dvic_node.KeepAlive(url + "/api/v1/keepalive", "node-token-1", ctx).post({}, timeout=5)
