"""central/listener.py release_http_parser: after a websocket upgrade the connection's HTTP parser
is dropped (aiohttp keeps it, unused, for the connection's life: ~1.7 KB per node); a connection
that was not upgraded keeps it and goes on serving requests. Real aiohttp server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from central.listener import release_http_parser


def _app(seen: dict[str, Any]) -> web.Application:
    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen["released"] = release_http_parser(request)
        seen["parser_after"] = getattr(request.protocol, "_parser", "missing")
        async for msg in ws:  # echo: the websocket still works without the HTTP parser
            await ws.send_str(msg.data.upper())
        return ws

    async def plain(request: web.Request) -> web.Response:
        seen["plain_released"] = release_http_parser(request)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws", websocket)
    app.router.add_get("/plain", plain)
    return app


async def test_the_parser_is_dropped_after_an_upgrade_and_the_websocket_still_works() -> None:
    seen: dict[str, Any] = {}
    async with TestServer(_app(seen), host="127.0.0.1", port=0) as server, aiohttp.ClientSession() as client:
        async with client.ws_connect(server.make_url("/ws")) as ws:
            for text in ("hello", "x" * 200_000):  # one frame spanning many reads
                await ws.send_str(text)
                assert (await ws.receive_str()) == text.upper()
            await ws.close()
        assert ws.close_code == 1000
    assert seen["released"] is True
    assert seen["parser_after"] is None


async def test_a_connection_that_was_not_upgraded_keeps_its_parser() -> None:
    seen: dict[str, Any] = {}
    async with TestServer(_app(seen), host="127.0.0.1", port=0) as server, aiohttp.ClientSession() as client:
        for _ in range(2):  # the same kept-alive connection serves the second request
            async with client.get(server.make_url("/plain")) as response:
                assert await response.text() == "ok"
    assert seen["plain_released"] is False
