"""Node websockets served below aiohttp (central/nodelink.py, the listener's doorway): the frame
layer against a real server subprocess, over real mutual-TLS sockets, with a raw client that sends
exactly the bytes each case needs (masked or not, fragmented, oversized, bad UTF-8, never read)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import ssl
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.messages import MAX_FRAME_BYTES
from central.proxyproto import build_header
from tests.support.fake_node import client_ssl
from tests.support.rawclient import tls_connect
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for, wait_for

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, length: int | None = None) -> bytes:
    """One client frame; `length` claims another payload length than the payload's."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head += struct.pack("!BH", bit | 126, n)
    else:
        head += struct.pack("!BQ", bit | 127, n)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def hello(name: str) -> bytes:
    return json.dumps({"type": "hello", "protocol": 1, "daemon_version": "test-0", "facts": {"hostname": name}}).encode()


def upgrade_head(key: str) -> bytes:
    return (f"GET /api/v1/node/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class RawNode:
    """A node's connection at the byte level: its handshake, then frames written and read as they are."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: CentralServer, bundle: dict[str, Any]) -> RawNode:
        port = int(server.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ssl(bundle), limit=1 << 22), 10)
        return cls(reader, writer)

    async def handshake(self, then: bytes = b"") -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(upgrade_head(key) + then)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 "), head
        accept = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n" in head
        assert b"Sec-WebSocket-Extensions" not in head

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self, timeout: float = 10) -> tuple[bool, int, bytes]:  # noqa: ASYNC109
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, await self.reader.readexactly(n)

    async def next_text(self) -> dict[str, Any]:
        while True:
            _, opcode, payload = await self.read_frame()
            if opcode == TEXT:
                return json.loads(payload)
            assert opcode in (PING, PONG), (opcode, payload)

    async def greet(self, name: str) -> dict[str, Any]:
        self.send(frame(TEXT, hello(name)))
        welcome = await self.next_text()
        assert welcome["type"] == "welcome", welcome
        return welcome

    async def close_frame(self) -> tuple[int, str]:
        """The server's close frame (code, reason), skipping what comes before it."""
        while True:
            _, opcode, payload = await self.read_frame()
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    async def hung_up(self, timeout: float = 10) -> bool:  # noqa: ASYNC109
        """True once the server closed the connection (all it sent after this point is dropped)."""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        return True

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw_node(server: CentralServer, bundle: dict[str, Any]) -> AsyncIterator[RawNode]:
    node = await RawNode.open(server, bundle)
    try:
        await node.handshake()
        yield node
    finally:
        node.close()


def _reasons(server: CentralServer, name: str) -> list[str]:
    _, body = server.api("GET", f"/api/v1/events?node={name}&kind=state")
    return [event["data"].get("reason", "") for event in body["events"]]


async def test_fragmented_messages_with_a_ping_between_fragments(shared_server: CentralServer):
    bundle = shared_server.enroll("frag")
    node = await RawNode.open(shared_server, bundle)
    try:
        # The head and the first frames in one write, as a client that does not wait for the 101 sends them.
        text = hello("frag")
        pieces = [text[:10], text[10:30], text[30:]]
        await node.handshake(then=frame(TEXT, pieces[0], fin=False))
        node.send(frame(PING, b"between") + frame(0x0, pieces[1], fin=False))
        assert await node.read_frame() == (True, PONG, b"between")
        node.send(frame(0x0, pieces[2]))
        assert (await node.next_text())["type"] == "welcome"
        # A message split into many one-byte writes arrives whole too.
        batch = json.dumps({"type": "logs", "lines": [{"seq": 1, "ts": time.time(), "source": "demo", "unit": "demo-a",
                                                       "demo": "0123456789abcdef", "level": "INFO",
                                                       "msg": "é" * 50}]}).encode()
        for byte in frame(TEXT, batch):
            node.send(bytes([byte]))
        assert await node.next_text() == {"type": "ack", "seq": 1}
    finally:
        node.close()


async def test_a_ping_is_answered_and_the_close_handshake_goes_both_ways(shared_server: CentralServer):
    bundle = shared_server.enroll("closer")
    async with raw_node(shared_server, bundle) as node:
        await node.greet("closer")
        node.send(frame(PING, b"x" * 125))
        assert await node.read_frame() == (True, PONG, b"x" * 125)
        wait_for(lambda: shared_server.node("closer")["state"] == "online", what="online")
        # The node closes: the server answers with the same code and hangs up.
        node.send(frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
        assert await node.close_frame() == (1000, "")
        assert await node.hung_up()
    wait_for(lambda: shared_server.node("closer")["state"] == "offline", what="offline")
    # The server closes (a newer connection replaces this one): its close frame, our answer, it hangs up.
    async with raw_node(shared_server, bundle) as old:
        await old.greet("closer")
        async with raw_node(shared_server, bundle) as new:
            await new.greet("closer")
            code, reason = await old.close_frame()
            assert (code, reason) == (4409, "replaced by a newer connection")
            old.send(frame(CLOSE, struct.pack("!H", code)))
            assert await old.hung_up()
            wait_for(lambda: _access_line(shared_server, "127.0.0.1 node:closer GET /api/v1/node/ws 101 "),
                     what="the access line")
            new.send(frame(PING, b"still"))
            assert await new.read_frame() == (True, PONG, b"still")


def _access_line(server: CentralServer, text: str) -> str:
    return next((line for line in server.log().splitlines() if text in line), "")


@pytest.mark.parametrize(("case", "data", "code"), [
    ("unmasked", frame(TEXT, hello("x"), masked=False), 1002),
    ("reserved bits", bytes([0x80 | 0x40 | TEXT]) + frame(TEXT, b"{}")[1:], 1002),
    ("unknown opcode", frame(0x3, b"x"), 1002),
    ("continuation first", frame(0x0, b"x"), 1002),
    ("long ping", frame(PING, b"x" * 126), 1002),
    ("fragmented ping", frame(PING, b"x", fin=False), 1002),
    ("bad close code", frame(CLOSE, struct.pack("!H", 1005)), 1002),
    ("bad utf-8", frame(TEXT, b'{"type": "hello\xff\xfe"}'), 1007),
    ("bad utf-8 split", frame(TEXT, b"\xc3", fin=False) + frame(0x0, b"(", fin=True), 1007),
    ("oversized", frame(TEXT, b"", length=MAX_FRAME_BYTES + 1), 1009),
    ("oversized in pieces", frame(TEXT, b"x" * 60_000, fin=False) + frame(0x0, b"x" * 60_000, fin=False) * 17, 1009),
], ids=lambda value: value if isinstance(value, str) else "")  # named by case: masks are random, ids must not be
async def test_a_protocol_error_closes_with_its_code(shared_server: CentralServer, case: str, data: bytes, code: int):
    name = "bad-" + case.replace(" ", "-")
    bundle = shared_server.enroll(name)
    async with raw_node(shared_server, bundle) as node:
        await node.greet(name)
        node.send(data)
        got, _ = await node.close_frame()
        assert got == code
        assert await node.hung_up()
    wait_for(lambda: shared_server.node(name)["state"] == "offline", what="offline")
    if code == 1009:  # the session's reason for 1009 (through aiohttp it got aiohttp's exception text)
        wait_for(lambda: f"frame larger than {MAX_FRAME_BYTES} bytes" in _reasons(shared_server, name),
                 what="the offline event's reason")


async def test_a_binary_message_is_refused_as_before(shared_server: CentralServer):
    bundle = shared_server.enroll("binary")
    async with raw_node(shared_server, bundle) as node:
        await node.greet("binary")
        node.send(frame(BINARY, b"\x00\x01"))
        error = await node.next_text()
        assert error["type"] == "error" and error["code"] == "bad_message"
        assert (await node.close_frame())[0] == 4001


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


async def test_a_node_that_stops_reading_is_no_longer_read_and_costs_bounded_memory(shared_server: CentralServer):
    """Pings from a node that never reads make the server write pongs it cannot send: once its send
    buffer is full the server stops reading the node (TCP holds the node back), instead of
    buffering pongs without end. When the node reads again, everything goes on."""
    bundle = shared_server.enroll("no-reader")
    assert shared_server.proc is not None
    flood = 128 * 1024 * 1024
    async with raw_node(shared_server, bundle) as node:
        await node.greet("no-reader")
        before = _rss(shared_server.proc.pid)
        chunk = frame(PING, b"p" * 125) * 512  # 68 KB of pings
        sent = 0
        while sent < flood:
            node.send(chunk)
            try:
                await asyncio.wait_for(node.writer.drain(), 5)
            except TimeoutError:
                break  # the server stopped reading us
            sent += len(chunk)
        grown = _rss(shared_server.proc.pid) - before
        assert sent < flood, "the server kept reading a node that never read its answers"
        assert grown < 32 * 1024 * 1024, f"{grown:,} bytes of server memory for {sent:,} bytes of pings"
        # Reading again: every pong arrives, then the node is served as before.
        pongs = 0
        target = sent // len(frame(PING, b"p" * 125))
        while pongs < target:
            _, opcode, _ = await node.read_frame()
            pongs += opcode == PONG
        await asyncio.wait_for(node.writer.drain(), 30)
        node.send(frame(PING, b"after"))
        while (frame_read := await node.read_frame())[2] != b"after":
            # (the heartbeat sweep pings a node it did not read for a while: this one, while paused)
            assert frame_read[1] in (PONG, PING)
    wait_for(lambda: shared_server.node("no-reader")["state"] == "offline", what="offline")


async def test_a_revoked_node_is_refused_as_before(shared_server: CentralServer):
    """Refusals are aiohttp's route's, unchanged: status, JSON body, header, log and access lines."""
    bundle = shared_server.enroll("gone")
    assert shared_server.api("DELETE", "/api/v1/nodes/gone")[0] == 200
    node = await RawNode.open(shared_server, bundle)
    try:
        node.send(upgrade_head(base64.b64encode(os.urandom(16)).decode()))
        head = await asyncio.wait_for(node.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 403 ")
        assert b"\r\nX-Dvic-Error: revoked: node 'gone' has been revoked\r\n" in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = json.loads(await node.reader.readexactly(length))
        assert body == {"error": {"code": "revoked", "message": "node 'gone' has been revoked"}}
    finally:
        node.close()
    wait_for(lambda: "node websocket refused from 127.0.0.1" in shared_server.log(), what="the refusal's log line")
    wait_for(lambda: _access_line(shared_server, "node:gone GET /api/v1/node/ws 403"), what="the access line")


@pytest.fixture
def quick_heads(tmp_path: Path) -> Iterator[CentralServer]:
    with CentralServer(tmp_path / "central", extra_args=("--header-timeout", "1.5")) as server:
        yield server


@pytest.mark.parametrize("line_bytes", [20, 1_500])  # short lines; lines past the doorway's 16 KiB hold
async def test_a_node_head_that_never_ends_is_dropped_at_the_head_timeout(quick_heads: CentralServer, line_bytes: int):
    bundle = quick_heads.enroll(f"slow-{line_bytes}")
    node = await RawNode.open(quick_heads, bundle)
    started = time.monotonic()
    try:
        node.send(b"GET /api/v1/node/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                for i in range(100):
                    node.send(b"X-Slow-%d: %s\r\n" % (i, b"y" * line_bytes))
                    await asyncio.sleep(0.1)

        writing = asyncio.create_task(trickle())
        assert await node.hung_up(timeout=15)
        writing.cancel()
    finally:
        node.close()
    assert time.monotonic() - started < 8  # 1.5 s and the loop's slack, not the 10 s of trickling


async def test_a_stopping_server_closes_node_links_with_1001(tmp_path: Path):
    server = CentralServer(tmp_path / "central").start()
    try:
        bundle = server.enroll("stopper")
        async with raw_node(server, bundle) as node:
            await node.greet("stopper")
            assert server.proc is not None
            server.proc.terminate()
            assert await node.close_frame() == (1001, "server shutting down")
            node.send(frame(CLOSE, struct.pack("!H", 1001)))
            assert await node.hung_up()
            await async_wait_for(lambda: server.proc is not None and server.proc.poll() is not None, timeout=15,
                                 what="the server gone")
    finally:
        server.stop()


async def test_what_the_server_sends_a_node_that_stops_reading_waits_for_it(shared_server: CentralServer):
    """An operator pours bytes into a tunnel whose node stopped reading: the server's sends to the
    node wait for its buffer to drain, so the server stops reading the operator instead of holding
    everything in memory."""
    bundle = shared_server.enroll("tunnel-mute")
    assert shared_server.proc is not None
    flood = 256 * 1024 * 1024
    status, body = shared_server.api("POST", "/api/v1/operators", {"name": "tunneler", "role": "operator"})
    assert status == 201, body
    headers = {"Authorization": f"Bearer {body['token']}"}
    async with raw_node(shared_server, bundle) as node, aiohttp.ClientSession() as http:
        await node.greet("tunnel-mute")
        url = shared_server.url.replace("https://", "wss://") + "/api/v1/nodes/tunnel-mute/tunnel?host=127.0.0.1&port=22"
        async with http.ws_connect(url, headers=headers, ssl=shared_server.ssl_context) as ws:
            request = await node.next_text()
            assert request["type"] == "tunnel_open", request
            node.send(frame(TEXT, json.dumps({"type": "tunnel_opened", "id": request["id"]}).encode()))
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "opened"
            before = _rss(shared_server.proc.pid)
            chunk, sent = b"t" * 65536, 0  # the node reads none of it from here on
            while sent < flood:
                try:
                    await asyncio.wait_for(ws.send_bytes(chunk), 5)
                except TimeoutError:
                    break  # the server stopped reading us
                sent += len(chunk)
            grown = _rss(shared_server.proc.pid) - before
            assert sent < flood, "the server kept reading what it could not send on"
            assert grown < 48 * 1024 * 1024, f"{grown:,} bytes of server memory for {sent:,} bytes sent"


async def test_an_upgrade_the_door_does_not_take_is_served_by_aiohttp_as_before(shared_server: CentralServer):
    """A node's upgrade with a subprotocol asked for: left to aiohttp's route (the same node, the
    same session), which the node cannot tell from a link but by aiohttp's own headers."""
    bundle = shared_server.enroll("via-aiohttp")
    node = await RawNode.open(shared_server, bundle)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        node.send(upgrade_head(key).replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: x-test\r\n\r\n"))
        head = await asyncio.wait_for(node.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 ") and b"aiohttp" in head  # aiohttp's Server header
        await node.greet("via-aiohttp")
        node.send(frame(PING, b"aio"))
        assert await node.read_frame() == (True, PONG, b"aio")
    finally:
        node.close()


async def test_plain_http_development_mode_serves_node_websockets_through_aiohttp(tmp_path: Path):
    server = CentralServer(tmp_path / "central", extra_args=("--insecure-http",)).start()
    try:
        bundle = server.enroll("pi-dev")
        async with aiohttp.ClientSession() as http, http.ws_connect(
                bundle["ws_url"], headers={"Authorization": f"Bearer {bundle['token']}"}) as ws:
            await ws.send_str(hello("pi-dev").decode())
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"
        wait_for(lambda: _access_line(server, "node:pi-dev GET /api/v1/node/ws 101"), what="the access line")
    finally:
        server.stop()


async def test_a_node_behind_a_balancer_is_logged_at_its_own_address(tmp_path: Path):
    """With --proxy-protocol-from the PROXY header's client address is the node link's: the access
    line names it, and the node is not counted against the balancer's per-address limit."""
    balancer = "127.0.0.3"
    server = CentralServer(tmp_path / "central", extra_args=(
        "--proxy-protocol-from", balancer, "--max-connections-per-address", "1")).start()
    try:
        bundle = server.enroll("behind")
        port = int(server.url.rsplit(":", 1)[1])
        header = build_header(("10.9.8.7", 40000), ("127.0.0.1", port))
        nodes = []
        for _ in range(2):  # two connections of the node through one balancer: not refused
            reader, writer = await tls_connect(port, client_ssl(bundle), balancer, header)
            node = RawNode(reader, writer)
            await node.handshake()
            nodes.append(node)
        await nodes[1].greet("behind")
        for node in nodes:
            node.close()
        wait_for(lambda: _access_line(server, "10.9.8.7 node:behind GET /api/v1/node/ws 101 "), what="the access line")
    finally:
        server.stop()
