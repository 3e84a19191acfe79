"""Opens a simulated node's websocket the way the daemon does: mutual TLS, then hello/welcome."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from .enroll import NodeCreds, node_ssl_context
from .loglines import hello


class NodeConnectError(RuntimeError):
    pass


async def connect_node(session: aiohttp.ClientSession, ca_path: str, node: NodeCreds,
                       timeout: float = 30.0) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """An open, greeted websocket and the server's welcome; NodeConnectError says why not."""
    try:
        ws = await session.ws_connect(
            node.ws_url, ssl=node_ssl_context(ca_path, node), autoping=True, heartbeat=None,
            max_msg_size=4 * 1024 * 1024, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise NodeConnectError(f"{node.name}: connect failed: {exc!r}") from None
    try:
        await ws.send_str(json.dumps(hello(node.name)))
        msg = await ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise NodeConnectError(f"{node.name}: expected welcome, got {msg.type!r} (close {ws.close_code})")
        welcome = json.loads(msg.data)
        if welcome.get("type") != "welcome":
            raise NodeConnectError(f"{node.name}: expected welcome, got {welcome!r}")
    except BaseException:
        await ws.close()
        raise
    return ws, welcome
