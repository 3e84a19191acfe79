"""TCP tunnels through a node: a client websocket relayed to a TCP connection the node opens.

The installer reaches a new machine's SSH port this way (`dvic add-node --via NODE`). Client
protocol (`GET /api/v1/nodes/{node}/tunnel?host=H&port=P`): binary frames are the TCP bytes both
ways; the server sends `{"type": "opened"}` once the node is connected, and
`{"type": "closed", "message": "…"}` before it closes.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .registry import NodeState
from .relay import finish_pump, offer, pump_to_client, stall_guard
from .strictjson import dumps

MAX_TUNNELS_PER_NODE = 8
CLIENT_QUEUE = 512
CHUNK = 32 * 1024
OPEN_TIMEOUT_S = 20.0


@dataclass(eq=False)
class Tunnel:
    id: str
    node: NodeState
    host: str
    port: int
    # Bounded by CLIENT_QUEUE through `offer` (the end marker always fits).
    to_client: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    message: str = ""


class TunnelHub:
    def __init__(self) -> None:
        self.tunnels: dict[str, Tunnel] = {}

    def open_on(self, node_id: str) -> int:
        return sum(1 for t in self.tunnels.values() if t.node.id == node_id)

    def create(self, node: NodeState, host: str, port: int) -> Tunnel:
        tunnel = Tunnel(str(uuid.uuid4()), node, host, port)
        self.tunnels[tunnel.id] = tunnel
        return tunnel

    async def end(self, tunnel: Tunnel, message: str, *, tell_node: bool = True) -> None:
        if tunnel.ended.is_set():
            return
        tunnel.message = message
        tunnel.ended.set()
        tunnel.opened.set()
        self.tunnels.pop(tunnel.id, None)
        offer(tunnel.to_client, None, CLIENT_QUEUE)
        if tell_node and tunnel.node.send is not None:
            await tunnel.node.send({"type": "tunnel_close", "id": tunnel.id})

    async def on_message(self, node: NodeState, msg: dict[str, Any]) -> None:
        tunnel = self.tunnels.get(msg["id"])
        if tunnel is None or tunnel.node.id != node.id:
            return
        kind = msg["type"]
        if kind == "tunnel_opened":
            tunnel.opened.set()
        elif kind == "tunnel_data":
            if not offer(tunnel.to_client, msg["data"], CLIENT_QUEUE):
                await self.end(tunnel, "client too slow: tunnel closed")
        elif kind == "tunnel_closed":
            await self.end(tunnel, msg["message"] or "closed by the node", tell_node=False)
        elif kind == "unsupported":
            await self.end(tunnel, "the node's daemon does not support tunnels", tell_node=False)

    async def node_disconnected(self, node: NodeState) -> None:
        for tunnel in [t for t in self.tunnels.values() if t.node.id == node.id]:
            await self.end(tunnel, f"node {node.name} went offline", tell_node=False)

    async def relay(self, tunnel: Tunnel, ws: web.WebSocketResponse, hang_up: Callable[[], None]) -> None:
        """Pump bytes between the client websocket and the node's TCP connection until either side
        ends. `hang_up` drops the client's connection (used when it stops reading)."""
        node = tunnel.node
        if node.send is None or not await node.send(
                {"type": "tunnel_open", "id": tunnel.id, "host": tunnel.host, "port": tunnel.port}):
            await self.end(tunnel, "node connection closed", tell_node=False)
        try:
            await asyncio.wait_for(tunnel.opened.wait(), OPEN_TIMEOUT_S)
        except TimeoutError:
            await self.end(tunnel, f"the node did not connect to {tunnel.host}:{tunnel.port} in time")
        if tunnel.ended.is_set():
            await ws.send_str(dumps({"type": "closed", "message": tunnel.message}))
            await ws.close()
            return
        ending = "client closed the tunnel"
        try:
            async with stall_guard(hang_up, "tunnel"):
                await ws.send_str(dumps({"type": "opened"}))  # before any of the tunnel's bytes
        except ConnectionError:
            await self.end(tunnel, "client connection lost")
            return
        pump = asyncio.create_task(pump_to_client(
            tunnel.to_client, ws, lambda: {"type": "closed", "message": tunnel.message}, hang_up, "tunnel"))
        try:
            async for msg in ws:
                if tunnel.ended.is_set():
                    break
                if msg.type == WSMsgType.BINARY:
                    for i in range(0, len(msg.data), CHUNK):
                        data = base64.b64encode(msg.data[i:i + CHUNK]).decode()
                        if node.send is None or not await node.send(
                                {"type": "tunnel_data", "id": tunnel.id, "data": data}):
                            break
        except ConnectionError:
            ending = "client connection lost"
        finally:
            # Whatever ended the relay, the node closes its side and the tunnel's slot is freed.
            if not tunnel.ended.is_set():
                await asyncio.shield(self.end(tunnel, ending))
            await finish_pump(pump)
