"""TCP tunnels through a node: a client websocket relayed to a TCP connection the node opens.

The installer reaches a new machine's SSH port this way (`dvic add-node --via NODE`). Client
protocol (`GET /api/v1/nodes/{node}/tunnel?host=H&port=P`): binary frames are the TCP bytes both
ways; the server sends `{"type": "opened"}` once the node is connected, and
`{"type": "closed", "message": "…"}` before it closes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .registry import NodeState
from .relay import Channel, ChannelHub, stall_guard
from .strictjson import dumps

MAX_TUNNELS_PER_NODE = 8
CLIENT_QUEUE = 512
OPEN_TIMEOUT_S = 20.0


@dataclass(eq=False)
class Tunnel(Channel, kind="tunnel", input_type="tunnel_data", client_queue=CLIENT_QUEUE):
    host: str
    port: int

    def final_frame(self) -> dict[str, Any]:
        return {"type": "closed", "message": self.message}


class TunnelHub(ChannelHub[Tunnel]):
    @property
    def tunnels(self) -> dict[str, Tunnel]:
        """The open tunnels by id."""
        return self.channels

    def create(self, node: NodeState, host: str, port: int) -> Tunnel:
        tunnel = Tunnel(str(uuid.uuid4()), node, host, port)
        self.channels[tunnel.id] = tunnel
        return tunnel

    async def on_channel_message(self, tunnel: Tunnel, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "tunnel_data":
            if not tunnel.to_client_nowait(msg["data"]):
                await self.end(tunnel, "client too slow: tunnel closed")
        elif kind == "tunnel_closed":
            await self.end(tunnel, msg["message"] or "closed by the node", tell_node=False)
        elif kind == "unsupported":
            await self.end(tunnel, "the node's daemon does not support tunnels", tell_node=False)

    async def relay(self, tunnel: Tunnel, ws: web.WebSocketResponse, hang_up: Callable[[], None]) -> None:
        """Pump bytes between the client websocket and the node's TCP connection until either side
        ends. `hang_up` drops the client's connection (used when it stops reading)."""
        why = await self.route.open(tunnel.node, tunnel.id, "tunnels",
                                    {"type": "tunnel_open", "id": tunnel.id, "host": tunnel.host, "port": tunnel.port})
        if why is not None:
            await self.end(tunnel, why, tell_node=False)
        try:
            await asyncio.wait_for(tunnel.opened.wait(), OPEN_TIMEOUT_S)
        except TimeoutError:
            await self.end(tunnel, f"the node did not connect to {tunnel.host}:{tunnel.port} in time")
        if tunnel.ended.is_set():
            await ws.send_str(dumps(tunnel.final_frame()))
            await ws.close()
            return
        ending = "client closed the tunnel"
        try:
            async with stall_guard(hang_up, "tunnel"):
                await ws.send_str(dumps({"type": "opened"}))  # before any of the tunnel's bytes
        except ConnectionError:
            await self.end(tunnel, "client connection lost")
            return
        pump = tunnel.start_pump(ws, hang_up)
        try:
            await tunnel.to_node(ws, self.route)
        except ConnectionError:
            ending = "client connection lost"
        finally:
            await self.finish_relay(tunnel, pump, ending)
