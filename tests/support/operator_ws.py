"""An operator's side of commands, shells and tunnels for end-to-end tests: an authenticated HTTP
session, reading a relayed websocket (its text frames, bytes until a marker), waiting for a command
to finish, and a TCP echo server for tunnels to reach."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from typing import Any

import aiohttp

from .server import CentralServer
from .wait import wait_for


class EchoHandler(socketserver.BaseRequestHandler):
    """Sends back what it gets; hangs up on `quit`."""

    def handle(self) -> None:
        while data := self.request.recv(65536):
            if data.startswith(b"quit"):
                return
            self.request.sendall(data)


def echo_server() -> socketserver.ThreadingTCPServer:
    """A TCP echo server on 127.0.0.1 (port 0) in a thread; `shutdown()` and `server_close()` it."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def finished(server: CentralServer, command_id: str, timeout: float = 30) -> dict[str, Any]:
    """The command once `done`, with its runs and their stored output."""

    def done() -> dict[str, Any]:
        status, body = server.api("GET", f"/api/v1/commands/{command_id}")
        assert status == 200, body
        return dict(body) if body["done"] else {}

    return wait_for(done, timeout, "the command to finish", interval=0.1)


def session(server: CentralServer) -> aiohttp.ClientSession:
    """The admin's HTTP session with `server` (for its websockets)."""
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.admin_token}"},
                                 connector=aiohttp.TCPConnector(ssl=server.ssl_context))


async def ws_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 15) -> dict[str, Any]:
    """The next text frame (JSON), skipping binary ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=deadline - time.monotonic())
        if msg.type == aiohttp.WSMsgType.TEXT:
            return dict(json.loads(msg.data))
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
    raise AssertionError("no text frame")


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes, timeout: float = 15) -> bytes:
    """Binary frames until their bytes hold `needle`: all of them."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        assert msg.type == aiohttp.WSMsgType.BINARY, (msg, seen[-300:])
        seen += msg.data
    return seen


async def echoed(ws: aiohttp.ClientWebSocketResponse, payload: bytes, timeout: float = 15) -> bytes:
    """Send `payload` through a tunnel to an echo server: as many bytes as came back."""
    await ws.send_bytes(payload)
    got = b""
    while len(got) < len(payload):
        msg = await ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        got += msg.data
    return got
