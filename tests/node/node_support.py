"""Shared helpers of the node daemon tests: a demo watcher with a recorder, a small server for an
aiohttp app, what the stand-ins of the server's node websocket share, a raw websocket peer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dvic_node
import pytest
from aiohttp import web

from tests.support.wait import async_wait_for


class Recorder:
    """What a DemoWatcher reports: its messages (demo states, events) and its errors."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.errors: list[str] = []

    def emit(self, msg: dict) -> None:
        self.messages.append(msg)

    def error(self, message: str, data: dict) -> None:
        self.errors.append(message)

    def states(self) -> dict[str, str]:
        return {m["token"]: m["state"] for m in self.messages if m["type"] == "demo"}


def demo_watcher(tmp_path: Path, *, restore: bool = False, per_owner: int = 0,
                 total: int = 0) -> tuple[dvic_node.DemoWatcher, dvic_node.Spool, Recorder]:
    """A DemoWatcher of tmp_path/logs spooling to tmp_path/spool; `restore`: with the demo states a
    previous one left there; `per_owner`, `total`: other file bounds than the daemon's."""
    spool = dvic_node.Spool(str(tmp_path / "spool"))
    spool.open()
    rec = Recorder()
    w = dvic_node.DemoWatcher(spool, rec.emit, rec.error)
    if restore:
        w.restore_states()
    w.set_logdirs([dvic_node.LogDir(str(tmp_path / "logs"))])
    w.max_per_owner = per_owner or w.max_per_owner
    w.max_files = total or w.max_files
    return w, spool, rec


def step(w: dvic_node.DemoWatcher, times: int = 1) -> None:
    """`times` rounds of what the daemon's loop does: find files, read them, check their writers."""
    for _ in range(times):
        w.scan()
        w.poll()
        w.check_liveness()


async def start_app(app: web.Application, ssl_context: ssl.SSLContext | None = None,
                    port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve `app` on 127.0.0.1 (port 0: a free one); returns the runner and the base URL."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]  # the only way to learn port 0's pick
    real_port = sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{real_port}"


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, mode: str) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs, `mode` e.g. "0700") mounted on `mount_point`, to fill up;
    the test is skipped where mounting is not allowed."""
    mount_point.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode={mode}", "tmpfs", str(mount_point)],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


class StandIn:
    """What the tests' stand-ins of the server's node websocket share: the daemon's hello answered with
    a welcome, its one live connection (`ws`), sending to it, waiting for what it said, closing.
    `async with` a subclass starts its app (`start`) on 127.0.0.1 and stops it."""

    name = "stand-in"  # the node's name in the welcome

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.ws: web.WebSocketResponse | None = None
        self.sock: Any = None  # the live connection's TCP socket (see send_together)
        self.connections = 0

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        assert self.runner is not None
        await self.runner.cleanup()

    async def welcome(self, request: web.Request, node_id: str) -> tuple[web.WebSocketResponse, dict[str, Any]]:
        """Accept the daemon's websocket, read its hello and welcome it: (the websocket, the hello)."""
        ws = web.WebSocketResponse(max_msg_size=2 * 1024 * 1024)
        await ws.prepare(request)
        hello = json.loads(self.checked((await ws.receive()).data))
        assert hello["type"] == "hello", hello
        await ws.send_json({"type": "welcome", "protocol": 1, "node_id": node_id, "name": self.name,
                            "settings": {"interval": 5}, "last_seq": 0, "server_time": time.time()})
        self.ws = ws
        self.sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        self.connections += 1
        return ws, hello

    def checked(self, text: str) -> str:
        """A frame the daemon sent, as it came; a stand-in that checks them says so here."""
        return text

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None, "no daemon connected"
        await self.ws.send_json(msg)

    async def send_together(self, msgs: list[dict[str, Any]]) -> None:
        """Send `msgs` in one TCP segment (the socket corked while they are written): the daemon reads
        them in one go and handles them one after another, with nothing of its own in between."""
        assert self.ws is not None and self.sock is not None, "no daemon connected"
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            for msg in msgs:
                await self.ws.send_json(msg)
        finally:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    async def wait(self, cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        return await async_wait_for(cond, timeout, what, interval=0.01)

    async def connected(self, count: int = 1, timeout: float = 30.0) -> None:
        await self.wait(lambda: self.connections >= count and self.ws is not None, timeout, "the daemon to connect")


# -- a raw websocket peer, to send what a well-behaved server never would -----------------------

async def accept_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Answer a websocket upgrade request with 101; returns the request head."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = [ln.split(":", 1)[1].strip() for ln in head.decode().split("\r\n")
           if ln.lower().startswith("sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1((key + dvic_node.WS_GUID).encode()).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    await writer.drain()
    return head


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    if n < 126:
        return head + bytes([n]) + payload
    if n < 65536:
        return head + bytes([126]) + struct.pack("!H", n) + payload
    return head + bytes([127]) + struct.pack("!Q", n) + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4)
    return b0 & 0x0F, dvic_node.mask_payload(await reader.readexactly(n), mask)
