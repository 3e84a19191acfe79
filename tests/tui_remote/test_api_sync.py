"""tui/api/sync.py, the blocking stdlib transport of `dvic run`, against real servers on 127.0.0.1.

A small aiohttp app covers what the central server does not show on demand (chunked bodies, pings,
close codes, idle keep-alive closes); a raw asyncio server writes frames byte by byte where aiohttp
cannot (fragmented messages, 16- and 64-bit lengths). The blocking client runs in a thread while
the servers run on the test's loop; the real central server checks TLS pinning.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tui.api import calls
from tui.api.config import Settings
from tui.api.core import Json, Request, Upgrade, json_object
from tui.api.errors import ApiError, StreamClosed, Unreachable
from tui.api.sync import WS_GUID, SyncClient


class Site:
    """The aiohttp test app: what it saw, and the URL it listens on."""

    def __init__(self) -> None:
        self.peers: list[object] = []  # client address of each request: one per connection when reused
        self.pongs: list[bytes] = []
        self.url = ""


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    seen = Site()

    async def json_doc(request: web.Request) -> web.Response:
        seen.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.json() if request.can_read_body else None
        return web.json_response({"path": request.path, "query": dict(request.query), "body": body,
                                  "auth": request.headers.get("Authorization")})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for part in (b'{"parts": ', b'["a", ', b'"b"]}'):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def refused(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "maintenance", "message": "node 'x' is in maintenance"}},
                                 status=403)

    async def bare_error(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    async def ws_ping_then_close(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are-you-there")
        msg = await ws.receive(timeout=10)
        if msg.type == WSMsgType.PONG:
            seen.pongs.append(msg.data)
        await ws.send_str(json.dumps({"type": "after-pong"}))
        await ws.send_bytes(b"binary is skipped")
        await ws.send_str("second")
        await ws.close(code=4429, message=b"too slow")
        return ws

    async def ws_quiet(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:  # says nothing until the client closes
            pass
        return ws

    app = web.Application()
    app.router.add_route("*", "/api/v1/doc", json_doc)
    app.router.add_get("/api/v1/chunked", chunked)
    app.router.add_get("/api/v1/refused", refused)
    app.router.add_get("/api/v1/bare", bare_error)
    app.router.add_get("/api/v1/ws", ws_ping_then_close)
    app.router.add_get("/api/v1/quiet", ws_quiet)
    # A short keep-alive: the server closes idle connections, as any server does after a while.
    runner = web.AppRunner(app, keepalive_timeout=0.3)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    seen.url = f"http://127.0.0.1:{port}"
    try:
        yield seen
    finally:
        await runner.cleanup()


def _client(url: str, token: str | None = "t0k") -> SyncClient:
    return SyncClient(Settings(server=url, token=token, ca=None))


def _fetch(api: SyncClient, path: str, query: dict[str, str] | None = None, body: Json | None = None) -> Json:
    """The test app's JSON object at `path` (POST when there is a body)."""
    return api.send(Request("POST" if body is not None else "GET", path, json_object, query, body))


async def test_json_requests_share_a_connection_and_carry_the_token(site: Site):
    with _client(site.url) as api:
        first = await asyncio.to_thread(_fetch, api, "/doc", {"group": "a b"}, {"argv": ["true"]})
        second = await asyncio.to_thread(_fetch, api, "/doc")
    assert first == {"path": "/api/v1/doc", "query": {"group": "a b"}, "body": {"argv": ["true"]},
                     "auth": "Bearer t0k"}
    assert second["body"] is None
    assert len(site.peers) == 2 and site.peers[0] == site.peers[1], "the second request opened a new connection"


async def test_chunked_bodies_and_error_answers_are_decoded(site: Site):
    with _client(site.url) as api:
        assert await asyncio.to_thread(_fetch, api, "/chunked") == {"parts": ["a", "b"]}
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(_fetch, api, "/refused")
        assert (refused.value.status, refused.value.code) == (403, "maintenance")
        assert refused.value.message == "node 'x' is in maintenance"
        with pytest.raises(ApiError) as bare:
            await asyncio.to_thread(_fetch, api, "/bare")
        assert (bare.value.status, bare.value.code) == (502, "http_error") and "bad gateway" in bare.value.message


async def test_a_connection_the_server_closed_while_idle_is_replaced(site: Site):
    with _client(site.url) as api:
        await asyncio.to_thread(_fetch, api, "/doc")
        idle = api.idle[0]
        idle.sock.setblocking(False)  # peeked from the loop's thread: must not block the server

        async def closed_by_server() -> bool:  # readable with nothing to read: the server's FIN
            try:
                return idle.sock.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                return False

        await async_wait_for(closed_by_server, timeout=10, what="the server to close the idle connection")
        again = await asyncio.to_thread(_fetch, api, "/doc")
    assert again["path"] == "/api/v1/doc"
    assert len(site.peers) == 2 and site.peers[0] != site.peers[1]


async def test_websocket_answers_pings_skips_binary_and_reports_the_close_code(site: Site):
    with _client(site.url) as api:
        ws = await asyncio.to_thread(api.websocket, Upgrade("/ws"))
        assert await asyncio.to_thread(ws.receive, 10) == '{"type": "after-pong"}'
        assert await asyncio.to_thread(ws.receive, 10) == "second"
        with pytest.raises(StreamClosed) as closed:
            await asyncio.to_thread(ws.receive, 10)
    assert closed.value.code == 4429
    assert site.pongs == [b"are-you-there"]


async def test_refused_upgrade_says_why(site: Site):
    with _client(site.url) as api:
        with pytest.raises(ApiError) as refused:
            await asyncio.to_thread(api.websocket, Upgrade("/refused", what="the shell"))
        assert refused.value.code == "maintenance" and "in maintenance" in refused.value.message
        with pytest.raises(ApiError) as bare:
            await asyncio.to_thread(api.websocket, Upgrade("/bare", what="the shell"))
        assert bare.value.status == 502 and bare.value.message == "the server refused the shell (HTTP 502)"


async def test_receive_returns_when_the_wake_fd_is_written(site: Site):
    """How Ctrl-C reaches `dvic run`'s wait: the signal's wake-up byte makes `receive` return None."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        with _client(site.url) as api:
            ws = await asyncio.to_thread(api.websocket, Upgrade("/quiet"))
            os.write(write_fd, b"\x02")
            # No timeout: without the wake-up it would wait for the 45 s silence limit, then raise.
            assert await asyncio.wait_for(asyncio.to_thread(ws.receive, None, read_fd), 30) is None
            with pytest.raises(BlockingIOError):
                os.read(read_fd, 1)  # the wake-up byte was drained
            ws.close()
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_fragmented_and_long_frames_from_a_raw_server():
    """Continuation frames, 16- and 64-bit lengths, and a garbage frame header (protocol error)."""
    long16 = b"x" * 300
    long64 = b"y" * 70000

    def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + n.to_bytes(2, "big")
        else:
            head += bytes([127]) + n.to_bytes(8, "big")
        return head + payload

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID.encode()).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        writer.write(frame(0x1, b"hel", fin=False) + frame(0x0, b"lo ", fin=False) + frame(0x0, b"world"))
        writer.write(frame(0x1, long16) + frame(0x1, long64))
        writer.write(b"\xf1\x00")  # reserved bits set: no extension was agreed
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with _client(f"http://127.0.0.1:{port}") as api:
            ws = await asyncio.to_thread(api.websocket, Upgrade("/raw"))
            assert await asyncio.to_thread(ws.receive, 10) == "hello world"
            assert await asyncio.to_thread(ws.receive, 10) == long16.decode()
            assert await asyncio.to_thread(ws.receive, 10) == long64.decode()
            with pytest.raises(StreamClosed) as bad:
                await asyncio.to_thread(ws.receive, 10)
            assert bad.value.code == 1002 and "protocol error" in str(bad.value)
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_trusts_only_the_pinned_ca(central_server: CentralServer, tmp_path: Path):
    good = Settings(server=central_server.url, token=central_server.admin_token, ca=str(central_server.ca_path))
    with SyncClient(good) as api:
        me = await asyncio.to_thread(api.send, calls.me())
    assert me["name"] == "admin"
    # Another CA (a second server's) must not be trusted, nor the system's roots.
    other = CentralServer(tmp_path / "other").start()
    try:
        wrong = Settings(server=central_server.url, token=central_server.admin_token, ca=str(other.ca_path))
        with SyncClient(wrong) as api, pytest.raises(Unreachable) as refused:
            await asyncio.to_thread(api.send, calls.me())
        assert refused.value.code == "tls" and "failed against the pinned CA" in refused.value.message
    finally:
        other.stop()


async def test_nothing_listening_is_unreachable():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with _client(f"http://127.0.0.1:{port}") as api, pytest.raises(Unreachable) as exc:
        await asyncio.to_thread(api.send, calls.me())
    assert exc.value.message.startswith(f"cannot reach http://127.0.0.1:{port}")
