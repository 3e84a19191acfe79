"""Shell, tunnel and command-output clients that stop reading are hung up, as live-stream clients
are (security review M1): a send waiting on such a client used to wait for ever, holding the
connection and everything queued for it (48 MiB a shell) as long as the client kept pinging. A
client that reads slowly is told why its session ended instead of waiting for an end that never came."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import aiohttp

from central.bus import SEND_STALL_S
from central.commands import OUTPUT_CAP
from tests.central.test_stream_limits import _small_receive_buffer
from tests.support.fake_node import FakeNode
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for, wait_for

CHUNK = 48 * 1024  # the most a node may send in one output frame (central/messages.py)
FLOOD = 8 * 1024 * 1024  # more than the kernel and the transport buffer for a client that does not read
COMMAND_NODES = 6  # a command's output is capped at 1 MiB a node: six nodes outgrow those buffers too


class ScriptedNode:
    """Answers the server like a daemon (shell, tunnel, command) and floods each with output."""

    def __init__(self, node: FakeNode, flood: int, chunk: int = CHUNK) -> None:
        self.node = node
        self.flood = flood
        self.chunk = chunk
        self.closed: list[str] = []  # shell_close / tunnel_close received
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        assert self.node.ws is not None
        async for msg in self.node.ws:
            body = json.loads(msg.data)
            kind, rid = body["type"], body.get("id")
            if kind == "shell_open":
                await self.node.send({"type": "shell_opened", "id": rid, "pid": 1})
                self._start(self._flood("shell_output", rid))
            elif kind == "tunnel_open":
                await self.node.send({"type": "tunnel_opened", "id": rid})
                self._start(self._flood("tunnel_data", rid))
            elif kind == "exec":
                await self.node.send({"type": "exec_started", "id": rid, "pid": 1})
                self._start(self._exec_output(rid))
            elif kind in ("shell_close", "tunnel_close"):
                self.closed.append(kind)

    def _start(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _flood(self, kind: str, rid: str) -> None:
        # Printable bytes: the recording holds them as they are (random bytes would be U+FFFD escapes).
        data = base64.b64encode(b"x" * self.chunk).decode()
        for _ in range(self.flood // self.chunk):
            if self.closed:
                return
            await self.node.send({"type": kind, "id": rid, "data": data})
            await asyncio.sleep(0)

    async def _exec_output(self, rid: str) -> None:
        for _ in range(OUTPUT_CAP // CHUNK + 1):
            await self.node.send({"type": "exec_output", "id": rid, "stream": "stdout", "data": "o" * CHUNK})
        await self.node.send({"type": "exec_exit", "id": rid, "reason": "exited", "code": 0})


class NonReader:
    """An operator client with a 4 KiB receive buffer that never reads, and pings every 0.2 s
    (which keeps the websocket heartbeat content)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.hung_up = asyncio.Event()
        self.pinger = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        try:
            while True:
                await self.ws.ping()
                await asyncio.sleep(0.2)
        except (ConnectionError, RuntimeError):
            self.hung_up.set()


async def _operator(server: CentralServer) -> dict[str, str]:
    status, body = server.api("POST", "/api/v1/operators", {"name": "oper", "role": "operator"})
    assert status == 201, body
    return {"Authorization": f"Bearer {body['token']}"}


async def test_shell_tunnel_and_command_clients_that_never_read_are_hung_up(tmp_path):
    server = CentralServer(tmp_path / "central").start()
    nodes: list[FakeNode] = []
    try:
        headers = await _operator(server)
        wss = server.url.replace("https://", "wss://")
        slow_connector = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        async with aiohttp.ClientSession() as http, aiohttp.ClientSession(connector=slow_connector) as slow_http:
            scripted = []
            for i in range(COMMAND_NODES):
                node = FakeNode(server.enroll(f"pi-{i}"))
                nodes.append(await node.__aenter__())
                await node.connect()
                await node.hello()
                scripted.append(ScriptedNode(node, FLOOD))
            serving = [asyncio.create_task(s.serve()) for s in scripted]

            async def connect(path: str) -> NonReader:
                ws = await slow_http.ws_connect(wss + path, headers=headers, ssl=server.ssl_context, autoping=False)
                return NonReader(ws)

            shell = await connect("/api/v1/nodes/pi-0/shell")
            tunnel = await connect("/api/v1/nodes/pi-1/tunnel?host=127.0.0.1&port=22")
            async with http.post(server.url + "/api/v1/commands", ssl=server.ssl_context, headers=headers,
                                 json={"nodes": [f"pi-{i}" for i in range(COMMAND_NODES)], "shell": "yes"}) as resp:
                assert resp.status == 201, await resp.text()
                command_id = (await resp.json())["id"]
            command = await connect(f"/api/v1/commands/{command_id}/stream")

            clients = {"shell": shell, "tunnel": tunnel, "command stream": command}
            waits = {name: asyncio.create_task(c.hung_up.wait()) for name, c in clients.items()}
            await asyncio.wait(waits.values(), timeout=SEND_STALL_S + 20)
            kept = [name for name, wait in waits.items() if not wait.done()]
            assert not kept, f"the server still holds these clients that never read: {kept}"

            # The node was told: the shell and the tunnel are closed on its side too.
            async def both_closed() -> bool:
                return {"shell_close", "tunnel_close"} <= {k for s in scripted for k in s.closed}

            await async_wait_for(both_closed, what="shell_close and tunnel_close at the nodes")
            status, body = server.api("GET", "/api/v1/sessions?node=pi-0")
            assert status == 200 and [s["message"] for s in body["sessions"]] == ["client stopped reading: hung up"]
            for task in [*serving, *waits.values(), *(c.pinger for c in clients.values())]:
                task.cancel()
        wait_for(lambda: server.log().count("not reading") >= 3, what="three hang-ups in the server log")
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.close()
        server.stop()


async def test_a_shell_client_that_reads_late_is_told_its_session_ended_and_is_closed(tmp_path):
    server = CentralServer(tmp_path / "central").start()
    try:
        headers = await _operator(server)
        slow_connector = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        async with FakeNode(server.enroll("pi-chatty")) as node, \
                aiohttp.ClientSession(connector=slow_connector) as slow_http:
            await node.connect()
            await node.hello()
            # Small chunks: once the socket's buffers are full, 1,024 of them queued end the shell.
            scripted = ScriptedNode(node, 32 * 1024 * 1024, chunk=8 * 1024)
            serving = asyncio.create_task(scripted.serve())
            ws = await slow_http.ws_connect(server.url.replace("https://", "wss://") + "/api/v1/nodes/pi-chatty/shell",
                                            headers=headers, ssl=server.ssl_context)
            # Not reading while the node floods: the server ends the session as too slow...
            async def shell_closed() -> bool:
                return "shell_close" in scripted.closed

            await async_wait_for(shell_closed, timeout=SEND_STALL_S - 5, what="the server to close the shell at the node")
            # ...and a client that reads again gets what was queued, then the reason, then the close.
            last: dict[str, Any] = {}
            binary = 0
            while True:
                msg = await ws.receive(timeout=15)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    binary += len(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    last = json.loads(msg.data)
                else:
                    break
            assert last.get("type") == "exit" and "too slow" in last.get("message", ""), last
            assert binary > 0 and ws.closed
            serving.cancel()
    finally:
        server.stop()
