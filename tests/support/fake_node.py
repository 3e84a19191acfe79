"""A scripted node for server tests: speaks protocol v1 over a real mutual-TLS websocket (aiohttp).

Not the daemon: it lets a test send exactly the frames it wants, good or bad.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from dvic_core.messages import SERVER, sent_by

SERVER_MESSAGES = sent_by(SERVER)


def client_ssl(bundle: dict[str, Any], *, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=bundle["ca_pem"])
    if with_cert:
        # load_cert_chain needs files; they live only as long as this call.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_text(bundle["cert_pem"])
            key.write_text(bundle["key_pem"])
            ctx.load_cert_chain(cert, key)
    return ctx


class FakeNode:
    def __init__(self, bundle: dict[str, Any]) -> None:
        self.bundle = bundle
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seq = 0
        self.welcome: dict[str, Any] = {}  # the server's answer to the last hello
        # With `keep_reading`, a task reads every frame as a daemon does (so the server's pings are
        # answered while the test does something else) into `_inbox`; recv() and closed() read there.
        self._inbox: asyncio.Queue[aiohttp.WSMessage] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last: aiohttp.WSMessage | None = None

    async def __aenter__(self) -> FakeNode:
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, with_cert: bool = True, headers: dict[str, str] | None = None) -> None:
        assert self.session is not None
        self.ws = await self.session.ws_connect(
            self.bundle["ws_url"], ssl=client_ssl(self.bundle, with_cert=with_cert), headers=headers,
            autoping=True, heartbeat=None, max_msg_size=4 * 1024 * 1024,
        )

    def keep_reading(self) -> None:
        """Read (and so answer pings) all the time from now on, as a real daemon does: a node that
        reads only when the test expects a frame is closed by the server's heartbeat when the test
        spends longer than that elsewhere (a console test taking screenshots on a busy machine)."""
        assert self.ws is not None and self._reader is None
        self._inbox = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_all(self.ws, self._inbox))

    @staticmethod
    async def _read_all(ws: aiohttp.ClientWebSocketResponse, inbox: asyncio.Queue[aiohttp.WSMessage]) -> None:
        while True:
            msg = await ws.receive()
            inbox.put_nowait(msg)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.ERROR):
                return

    async def _next(self, timeout: float) -> aiohttp.WSMessage:
        assert self.ws is not None
        if self._inbox is None:
            return await self.ws.receive(timeout=timeout)
        if self._inbox.empty() and self._last is not None:
            return self._last  # the connection is over: as ws.receive() answers then
        msg = await asyncio.wait_for(self._inbox.get(), timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            self._last = msg
        return msg

    async def hello(self, *, daemon_version: str = "test-0", **facts: Any) -> dict[str, Any]:
        await self.send({"type": "hello", "protocol": 1, "daemon_version": daemon_version,
                         "facts": {"hostname": self.bundle["name"], **facts}})
        welcome = await self.recv()
        assert welcome["type"] == "welcome", welcome
        self.welcome = welcome
        return welcome

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.ws is not None
        msg = await self._next(timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"expected a text frame, got {msg.type!r} (close code {self.ws.close_code})")
        message: dict[str, Any] = json.loads(msg.data)
        # What the server sends a node fits its declaration (dvic_core/messages.py), or the test fails.
        declared = SERVER_MESSAGES.get(str(message.get("type")))
        assert declared is not None, f"the server sent an undeclared message type: {message}"
        declared.parse(message)
        return message

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; returns the close code."""
        assert self.ws is not None
        while True:
            msg = await self._next(timeout)
            if msg.type == aiohttp.WSMsgType.CLOSE:
                # The code the server sent (close_code may say 1006 if our reply raced its hang-up).
                return int(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return self.ws.close_code

    def line(self, msg: str, *, level: str = "INFO", source: str = "demo", unit: str = "demo-a",
             demo: str = "0123456789abcdef", seq: int | None = None) -> dict[str, Any]:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return {"seq": seq, "ts": time.time(), "source": source, "unit": unit, "demo": demo, "level": level,
                "msg": msg}

    async def send_logs(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        await self.send({"type": "logs", "lines": lines})
        ack = await self.recv()
        assert ack["type"] == "ack", ack
        return ack

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()  # (ends a reading task's receive() too: aiohttp hands it a CLOSING)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
            self._reader = None
        if self.session is not None:
            await self.session.close()
            self.session = None
