"""The daemon's own RFC 6455 client against aiohttp's server (mutual TLS) and against a raw TCP peer."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import dvic_node
import pytest
from aiohttp import web
from node_support import accept_upgrade, read_client_frame, server_frame, start_app

from tests.support.pki import Pki


def client_context(pki: Pki, tmp_path: Path, **overrides: str) -> ssl.SSLContext:
    return dvic_node.make_ssl_context(pki.bundle("https://127.0.0.1:1", **overrides), str(tmp_path / "tls"))


async def serve_ws(pki: Pki, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                   require_client_cert: bool = True) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner, url = await start_app(app, pki.server_context(require_client_cert))
    return runner, url.replace("https://", "wss://") + "/ws"


def test_masking_matches_rfc_example() -> None:
    # RFC 6455 section 5.7: "Hello" masked with 37 fa 21 3d
    frame = dvic_node.encode_frame(dvic_node.OP_TEXT, b"Hello", mask=bytes.fromhex("37fa213d"))
    assert frame == bytes.fromhex("8185 37fa213d 7f9f4d5158".replace(" ", ""))
    assert dvic_node.mask_payload(dvic_node.mask_payload(b"x" * 1001, b"abcd"), b"abcd") == b"x" * 1001


def test_frame_lengths_use_the_right_encoding() -> None:
    assert dvic_node.encode_frame(1, b"a" * 125, mask=b"\0\0\0\0")[1] == 0x80 | 125
    assert dvic_node.encode_frame(1, b"a" * 126, mask=b"\0\0\0\0")[1:4] == b"\xfe\x00\x7e"
    assert dvic_node.encode_frame(1, b"a" * 65536, mask=b"\0\0\0\0")[1:10] == b"\xff" + struct.pack("!Q", 65536)


async def test_echo_fragmented_send_ping_and_client_close(pki: Pki, tmp_path: Path) -> None:
    seen: list[tuple[aiohttp.WSMsgType, object]] = []
    peer_cert: list[object] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        peer_cert.append(request.transport.get_extra_info("peercert"))
        ws = web.WebSocketResponse(max_msg_size=2 * 1024 * 1024)
        await ws.prepare(request)
        async for msg in ws:
            seen.append((msg.type, msg.data))
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        seen.append((aiohttp.WSMsgType.CLOSE, ws.close_code))
        return ws

    runner, url = await serve_ws(pki, handler)
    try:
        ws = await dvic_node.ws_connect(url, client_context(pki, tmp_path))
        await ws.send_text("héllo ✓")
        assert await ws.recv() == "echo:héllo ✓"
        big = "x" * (600 * 1024)  # above fragment_size: goes out as 3 fragments
        await ws.send_text(big)
        assert await ws.recv() == "echo:" + big
        reader = asyncio.ensure_future(ws.recv())  # pongs are read by the receiving side
        round_trip = await ws.ping(timeout=5)  # its pong came back (a missing one raises after 5 s)
        assert 0 < round_trip < 5
        await ws.close(1000, "bye")  # with a reader running: it sees the peer's close frame
        assert ws.close_code == 1000
        with pytest.raises(dvic_node.WebSocketClosed):
            await reader
    finally:
        await runner.cleanup()
    assert seen[0] == (aiohttp.WSMsgType.TEXT, "héllo ✓")
    assert seen[1] == (aiohttp.WSMsgType.TEXT, big)
    assert seen[-1] == (aiohttp.WSMsgType.CLOSE, 1000)
    subject = dict(x[0] for x in peer_cert[0]["subject"])  # type: ignore[index]
    assert subject["commonName"] == "6b0f7c52-0000-4000-8000-000000000001"  # mutual TLS: node cert presented


async def test_server_ping_gets_pong_and_server_close_code_reaches_client(pki: Pki, tmp_path: Path) -> None:
    got_pong = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"hb")
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.PONG and msg.data == b"hb":
            got_pong.set()
        await ws.close(code=4409, message=b"replaced")
        return ws

    runner, url = await serve_ws(pki, handler)
    try:
        ws = await dvic_node.ws_connect(url, client_context(pki, tmp_path))
        with pytest.raises(dvic_node.WebSocketClosed) as info:
            await ws.recv()
        assert info.value.code == 4409 and info.value.reason == "replaced"
        assert got_pong.is_set()
    finally:
        await runner.cleanup()


async def test_oversized_message_from_server_closes_with_1009(pki: Pki, tmp_path: Path) -> None:
    server_saw: list[int | None] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("y" * (2 * 1024 * 1024))
        async for _msg in ws:
            pass
        server_saw.append(ws.close_code)
        return ws

    runner, url = await serve_ws(pki, handler)
    try:
        ws = await dvic_node.ws_connect(url, client_context(pki, tmp_path), max_size=1024 * 1024)
        with pytest.raises(dvic_node.WebSocketClosed) as info:
            await ws.recv()
        assert info.value.code == 1009
        assert "exceeds the limit" in info.value.reason
    finally:
        await runner.cleanup()
    assert server_saw == [1009]


async def test_oversized_message_to_server_is_refused_by_peer(pki: Pki, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1024 * 1024)
        await ws.prepare(request)
        async for _msg in ws:
            pass
        return ws

    runner, url = await serve_ws(pki, handler)
    try:
        ws = await dvic_node.ws_connect(url, client_context(pki, tmp_path))
        await ws.send_text("z" * (1024 * 1024 + 10))
        with pytest.raises(dvic_node.WebSocketClosed) as info:
            await ws.recv()
        assert info.value.code == 1009
    finally:
        await runner.cleanup()


async def test_refused_upgrade_reports_status_and_body(pki: Pki, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "revoked", "message": "node revoked"}}, status=403)

    runner, url = await serve_ws(pki, handler)
    try:
        with pytest.raises(dvic_node.HandshakeError) as info:
            await dvic_node.ws_connect(url, client_context(pki, tmp_path))
        assert info.value.status == 403
        assert "node revoked" in str(info.value)
    finally:
        await runner.cleanup()


NEVER_REACHED = (ssl.SSLError, ConnectionError, dvic_node.WebSocketError, asyncio.IncompleteReadError)


@pytest.mark.parametrize(("stranger", "refusal", "explained"), [
    ("a server certificate of another CA", ssl.SSLCertVerificationError, "not trusted by the bundle's CA"),
    ("a client certificate of another CA", NEVER_REACHED, ""),
])
async def test_certificates_of_another_ca_are_refused(pki: Pki, tmp_path: Path, stranger: str,
                                                      refusal: type[Exception] | tuple[type[Exception], ...],
                                                      explained: str) -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        raise AssertionError("must not get here")

    rogue = ({"ca_pem": pki.rogue_ca_pem} if "server" in stranger
             else {"cert_pem": pki.rogue_node_cert_pem, "key_pem": pki.rogue_node_key_pem})
    runner, url = await serve_ws(pki, handler)
    try:
        with pytest.raises(refusal) as info:
            await dvic_node.ws_connect(url, client_context(pki, tmp_path, **rogue))
        if explained:
            assert explained in dvic_node.describe_connect_error(info.value)
    finally:
        await runner.cleanup()


async def test_expired_server_certificate_is_refused_with_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    app = web.Application()
    runner, url = await start_app(app, pki.server_context(expired=True))
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await dvic_node.ws_connect(url.replace("https://", "wss://") + "/ws", client_context(pki, tmp_path))
        assert "certificate has expired" in dvic_node.describe_connect_error(info.value)
    finally:
        await runner.cleanup()


def test_tls_files_are_private(pki: Pki, tmp_path: Path) -> None:
    client_context(pki, tmp_path)
    for name in ("node.crt", "node.key"):
        assert (tmp_path / "tls" / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700


# -- a raw TCP peer, to send what aiohttp never would ------------------------------------------

async def raw_peer(script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                   ) -> tuple[asyncio.base_events.Server, str]:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_upgrade(reader, writer)
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/ws"


async def test_fragmented_message_with_interleaved_ping() -> None:
    pong: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(server_frame(dvic_node.OP_TEXT, b"part1-", fin=False))
        writer.write(server_frame(dvic_node.OP_PING, b"mid"))
        writer.write(server_frame(dvic_node.OP_CONT, "pärt2-".encode()[:3], fin=False))
        writer.write(server_frame(dvic_node.OP_CONT, "pärt2-".encode()[3:], fin=True))
        await writer.drain()
        pong.set_result(await read_client_frame(reader))
        op, payload = await read_client_frame(reader)  # the client's close: answer it
        writer.write(server_frame(dvic_node.OP_CLOSE, payload))
        await writer.drain()

    server, url = await raw_peer(script)
    async with server:
        ws = await dvic_node.ws_connect(url)
        assert await ws.recv() == "part1-pärt2-"  # UTF-8 split across fragments is fine
        assert await asyncio.wait_for(pong, 5) == (dvic_node.OP_PONG, b"mid")
        await ws.close()  # no reader running: close() reads the peer's close itself
        assert ws.close_code == 1000


@pytest.mark.parametrize("frames, code", [
    (server_frame(dvic_node.OP_TEXT, b"\xff\xfe"), 1007),  # invalid UTF-8
    (server_frame(dvic_node.OP_TEXT, b"x", rsv=0x40), 1002),  # RSV1 without an extension
    (bytes([0x81, 0x81]) + b"abcd" + b"x", 1002),  # masked server frame
    (server_frame(dvic_node.OP_CONT, b"x"), 1002),  # continuation without a start
    (server_frame(0x3, b"x"), 1002),  # reserved opcode
    (server_frame(dvic_node.OP_PING, b"p" * 126), 1002),  # control frame too long
    (server_frame(dvic_node.OP_CLOSE, b"\x03\xed"), 1002),  # close code 1005 is not sendable
])
async def test_protocol_violations_close_with_the_right_code(frames: bytes, code: int) -> None:
    got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frames)
        await writer.drain()
        op, payload = await read_client_frame(reader)
        got.set_result(struct.unpack("!H", payload[:2])[0] if op == dvic_node.OP_CLOSE else -op)

    server, url = await raw_peer(script)
    async with server:
        ws = await dvic_node.ws_connect(url)
        with pytest.raises(dvic_node.WebSocketClosed) as info:
            await ws.recv()
        assert info.value.code == code
        assert await asyncio.wait_for(got, 5) == code  # and the peer was told why


async def test_peer_closing_mid_frame_is_reported() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(server_frame(dvic_node.OP_TEXT, b"0123456789")[:6])
        await writer.drain()

    server, url = await raw_peer(script)
    async with server:
        ws = await dvic_node.ws_connect(url)
        with pytest.raises(dvic_node.WebSocketClosed) as info:
            await ws.recv()
        assert info.value.code == 1006 and "mid-frame" in info.value.reason


@pytest.mark.parametrize(("answer", "refusal"), [
    (b"\x00\x01garbage\r\n\r\n", "not an HTTP response"),
    (b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n",
     "Sec-WebSocket-Accept"),
], ids=["garbage-instead-of-http", "bad-accept-key"])
async def test_a_bad_answer_to_the_upgrade_is_refused(answer: bytes, refusal: str) -> None:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(dvic_node.WebSocketError, match=refusal):
            await dvic_node.ws_connect(f"ws://127.0.0.1:{port}/ws")
