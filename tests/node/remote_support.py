"""A scripted stand-in for the central server's node websocket, to drive the real daemon's remote control.

The daemon connects to it over plain ws:// on 127.0.0.1 (development mode, bearer token), says
hello and is welcomed; the test then sends section-6 requests (docs/protocol.md) with ids of its
choosing (replays, floods, malformed ones) and reads the daemon's replies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from node_support import StandIn, start_app

from tests.support.daemon import NODE_SCRIPT, DaemonProcess
from tests.support.server import write_bundle

NODE_ID = "6b0f7c52-0000-4000-8000-0000000000aa"
QUIET = {"metrics", "demo", "event", "logs"}  # not remote-control replies


class ScriptedServer(StandIn):
    """`async with ScriptedServer() as srv:` serves /ws; `srv.send(...)`, `await srv.reply(...)`."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self.hellos: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.logs: list[tuple[float, dict[str, Any]]] = []  # (arrival time, `logs` message)
        self.files: dict[str, bytes] = {}  # served at /files/{name} (e.g. a daemon release)
        self.release_key: dict[str, Any] = {}
        self.ack_delay = 0.0  # seconds before each `logs` message is acknowledged (a busy server)

    async def __aenter__(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_get("/ws", self._handler)
        app.router.add_get("/files/{name}", self._file)
        self.runner, base = await start_app(app)
        self.url = base.replace("http://", "ws://") + "/ws"
        return self

    def bundle(self) -> dict[str, Any]:
        return {"format": "dvic-node-bundle/1", "node_id": NODE_ID, "name": "scripted", "kind": "desktop",
                "group": "", "ws_url": self.url, "keepalive_url": "", "ca_pem": "unused", "cert_pem": "unused",
                "key_pem": "unused", "token": "dvn_test", "interval": 5, "release_key": self.release_key}

    def file_url(self, name: str) -> str:
        return self.url.replace("ws://", "http://").rsplit("/ws", 1)[0] + "/files/" + name

    async def _file(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        return web.Response(body=data) if data is not None else web.Response(status=404)

    async def _handler(self, request: web.Request) -> web.WebSocketResponse:
        ws, hello = await self.welcome(request, NODE_ID)
        self.hellos.append(hello)
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            body = json.loads(msg.data)
            if body.get("type") == "logs":
                self.logs.append((time.time(), body))
                ack = {"type": "ack", "seq": body["lines"][-1]["seq"]}
                if self.ack_delay:
                    asyncio.get_running_loop().call_later(
                        self.ack_delay, lambda a=ack: asyncio.ensure_future(self._late_ack(ws, a)))
                else:
                    await ws.send_json(ack)
            elif body.get("type") not in QUIET:
                self.replies.append(body)
        if self.ws is ws:
            self.ws = None
        return ws

    @staticmethod
    async def _late_ack(ws: web.WebSocketResponse, ack: dict[str, Any]) -> None:
        if not ws.closed:
            await ws.send_json(ack)

    async def drop(self) -> None:
        """Close the daemon's connection, as a network loss would end it."""
        assert self.ws is not None
        ws, self.ws = self.ws, None
        await ws.close()

    def of(self, rid: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.replies if m.get("id") == rid and (kind is None or m["type"] == kind)]

    async def reply(self, rid: str, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        found = await self.wait(lambda: self.of(rid, kind), timeout, f"{kind} for {rid}")
        return found[0]

    def output(self, rid: str, stream: str | None = None) -> str:
        return "".join(m["data"] for m in self.of(rid, "exec_output") if stream in (None, m["stream"]))

    def shell_text(self, rid: str) -> str:
        return b"".join(base64.b64decode(m["data"]) for m in self.of(rid, "shell_output")).decode(errors="replace")

    async def shell_input(self, rid: str, text: str) -> None:
        await self.send({"type": "shell_input", "id": rid, "data": base64.b64encode(text.encode()).decode()})


def scripted_daemon(srv: ScriptedServer, tmp_path: Path, extra: tuple[str, ...] = (),
                    copy_script: bool = False, python: str | Path = sys.executable) -> DaemonProcess:
    """The real daemon, configured for `srv` (optionally running from a copy of its file)."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    script = NODE_SCRIPT
    if copy_script:
        script = tmp_path / "opt" / "dvic_node.py"
        script.parent.mkdir(exist_ok=True)
        shutil.copy(NODE_SCRIPT, script)
    return DaemonProcess(write_bundle(srv.bundle(), tmp_path / "bundle.json"), tmp_path / "state", logs,
                         python=python, extra=extra, script=script)


ScriptedNode = tuple[ScriptedServer, DaemonProcess]


@contextlib.asynccontextmanager
async def scripted_node(tmp_path: Path, **options: Any) -> AsyncIterator[ScriptedNode]:
    """A ScriptedServer and the real daemon connected to it (options as scripted_daemon's)."""
    async with ScriptedServer() as srv:
        daemon = scripted_daemon(srv, tmp_path, **options).start()
        try:
            await srv.connected()
            yield srv, daemon
        finally:
            await asyncio.to_thread(daemon.stop)  # the server in this loop answers its close
