"""Shells and tunnels are one kind of relayed channel (central/relay.py): a daemon that does not know
one answers `unsupported`, and the server ends it as that kind's end (the exit or closed frame, the
stored history) and frees its slot."""

from __future__ import annotations

import json

import aiohttp

from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for


async def _last_frames(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, object]]:
    """The text frames the server sends until it closes."""
    frames = []
    while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
        frames.append(json.loads(msg.data))
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    return frames


async def _open(http: aiohttp.ClientSession, server: CentralServer, what: str) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"{server.url}/api/v1/nodes/pi-old/{what}", ssl=server.ssl_context,
                                 headers={"Authorization": f"Bearer {server.admin_token}"})


async def test_a_daemon_without_shells_or_tunnels_ends_each_as_its_kind(central_server: CentralServer) -> None:
    async with greeted(central_server.enroll("pi-old")) as node, aiohttp.ClientSession() as http:
        for attempt in range(5):  # more than the 4 shells a node may have open: each slot is freed
            shell = await _open(http, central_server, "shell")
            request = await node.recv()
            assert request["type"] == "shell_open", attempt
            await node.send({"type": "unsupported", "id": request["id"], "what": "shell_open"})
            assert await _last_frames(shell) == [
                {"type": "exit", "code": None, "message": "the node's daemon does not support shells"}]
            assert await node.recv() == {"type": "shell_close", "id": request["id"]}
            await shell.close()
        tunnel = await _open(http, central_server, "tunnel?host=127.0.0.1&port=22")
        request = await node.recv()
        assert request["type"] == "tunnel_open"
        await node.send({"type": "unsupported", "id": request["id"], "what": "tunnel_open"})
        assert await _last_frames(tunnel) == [
            {"type": "closed", "message": "the node's daemon does not support tunnels"}]
        await tunnel.close()

    def ended_sessions() -> list[str] | None:
        messages = [s["message"] for s in central_server.api("GET", "/api/v1/sessions?node=pi-old")[1]["sessions"]]
        return messages if all(messages) else None

    assert wait_for(ended_sessions, timeout=5, what="the sessions' ends stored") == [
        "the node's daemon does not support shells"] * 5
