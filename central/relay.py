"""What the shell and tunnel relays and the command-output stream share: sending to a client
websocket without ever waiting for ever on a client that stopped reading, a bounded queue whose
end marker always fits, and waiting for the pump when the relay ends; for shells and tunnels, the
relayed channel itself (`Channel`) and the hub of the open ones (`ChannelHub`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from aiohttp import WSMsgType, web

from .bus import SEND_STALL_S
from .cluster.route import LOCAL, Route
from .registry import NodeState
from .strictjson import dumps

log = logging.getLogger(__name__)

PUMP_GRACE_S = 5.0
CHUNK = 32 * 1024  # client bytes per message to the node


class ClientGone(ConnectionError):
    """The client stopped reading and was hung up."""


@contextlib.asynccontextmanager
async def stall_guard(hang_up: Callable[[], None], what: str) -> AsyncIterator[None]:
    """Around a send to a client: if it has not taken the frame after SEND_STALL_S, it stopped
    reading (pings do not count: they keep the websocket heartbeat content). Hang it up, which
    frees what was queued for it, and raise ClientGone. A send waits only when the socket's
    buffers are full, so a client that reads, however slowly, is never cut by this."""
    try:
        async with asyncio.timeout(SEND_STALL_S):
            yield
    except TimeoutError:
        log.warning("%s client not reading for %.0f s: hanging up", what, SEND_STALL_S)
        hang_up()
        raise ClientGone(f"{what} client not reading") from None


def hang_up_of(request: web.Request) -> Callable[[], None]:
    """Drops the request's connection at once (no goodbye the client would not read anyway)."""
    transport = request.transport
    return transport.abort if transport is not None else (lambda: None)


def offer(queue: asyncio.Queue[Any], item: Any, limit: int) -> bool:
    """Queue an item for the pump unless `limit` items wait already; the end marker (None) always
    fits, so a pump behind a full queue still learns that the relay ended."""
    if item is not None and queue.qsize() >= limit:
        return False
    queue.put_nowait(item)
    return True


async def pump_to_client(queue: asyncio.Queue[Any], ws: web.WebSocketResponse,
                         final: Callable[[], dict[str, Any]], hang_up: Callable[[], None], what: str) -> None:
    """Send queued items (bytes as binary frames, dicts as JSON) until None, then `final()` and close."""
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            async with stall_guard(hang_up, what):
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_str(dumps(item))
        async with stall_guard(hang_up, what):
            await ws.send_str(dumps(final()))
            await ws.close()
    except (ConnectionError, RuntimeError):
        # The client is gone: nothing left to tell it, and nothing queued is kept for it.
        while not queue.empty():
            queue.get_nowait()


async def finish_pump(pump: asyncio.Task[None]) -> None:
    """Let the pump deliver its last frames, but never hang the handler on a stuck client."""
    if pump.done():
        return
    try:
        await asyncio.wait_for(pump, PUMP_GRACE_S)
    except TimeoutError:
        pump.cancel()


@dataclass(eq=False)
class Channel:
    """A client websocket relayed to what a node opened for it: a PTY (shells.py) or a TCP
    connection (tunnels.py). Binary frames carry the bytes both ways."""

    # Each kind's, given as class arguments: its name in the node messages (`<kind>_open`,
    # `<kind>_close`), the message that carries the client's bytes to the node, and how many
    # items may wait for the client.
    kind: ClassVar[str]
    input_type: ClassVar[str]
    client_queue: ClassVar[int]

    def __init_subclass__(cls, *, kind: str, input_type: str, client_queue: int, **rest: Any) -> None:
        super().__init_subclass__(**rest)
        cls.kind, cls.input_type, cls.client_queue = kind, input_type, client_queue

    id: str
    node: NodeState
    _: KW_ONLY
    # Bounded by `client_queue` through to_client_nowait (the end marker always fits).
    to_client: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    message: str = ""

    def to_client_nowait(self, item: Any) -> bool:
        return offer(self.to_client, item, self.client_queue)

    def final_frame(self) -> dict[str, Any]:
        """The client's last frame, sent before the close."""
        raise NotImplementedError

    def start_pump(self, ws: web.WebSocketResponse, hang_up: Callable[[], None]) -> asyncio.Task[None]:
        return asyncio.create_task(pump_to_client(self.to_client, ws, self.final_frame, hang_up, self.kind))

    async def to_node(self, ws: web.WebSocketResponse, route: Route,
                      on_text: Callable[[str], Awaitable[None]] | None = None) -> None:
        """The client's binary frames to the node (by `route`), CHUNK bytes a message, until the
        client or the channel ends; its text frames to `on_text` (ignored without one)."""
        async for msg in ws:
            if self.ended.is_set():
                break
            if msg.type == WSMsgType.BINARY:
                for i in range(0, len(msg.data), CHUNK):
                    data = base64.b64encode(msg.data[i:i + CHUNK]).decode()
                    if not await route.send(self.node, self.id, {"type": self.input_type, "id": self.id, "data": data}):
                        break
            elif msg.type == WSMsgType.TEXT and on_text is not None:
                await on_text(msg.data)


C = TypeVar("C", bound=Channel)


class ChannelHub(Generic[C]):
    """The open channels of one kind, by id."""

    def __init__(self) -> None:
        self.channels: dict[str, C] = {}
        # To the node's own session, or through the replica holding it (central/cluster/routing.py).
        self.route: Route = LOCAL

    def open_on(self, node_id: str) -> int:
        return sum(1 for c in self.channels.values() if c.node.id == node_id)

    def addressed(self, node: NodeState, msg: dict[str, Any]) -> C | None:
        """The channel a node's message is about, if it is one of that node's."""
        channel = self.channels.get(msg["id"])
        return channel if channel is not None and channel.node.id == node.id else None

    async def on_message(self, node: NodeState, msg: dict[str, Any]) -> None:
        """A node's message about one of its channels: `<kind>_opened` here, the rest by the kind."""
        channel = self.addressed(node, msg)
        if channel is None:
            return
        if msg["type"] == f"{channel.kind}_opened":
            channel.opened.set()
        else:
            await self.on_channel_message(channel, msg)

    async def on_channel_message(self, channel: C, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    async def end(self, channel: C, message: str, *, tell_node: bool = True) -> bool:
        """End the channel: its slot is freed, a relay waiting for the node to open stops waiting,
        the pump sends the final frame, and the node closes its side (`tell_node`: unless it is
        the one that ended it). False when it had ended already."""
        if channel.ended.is_set():
            return False
        channel.message = message
        channel.ended.set()
        channel.opened.set()
        self.channels.pop(channel.id, None)
        channel.to_client_nowait(None)
        if tell_node:
            await self.route.send(channel.node, channel.id, {"type": f"{channel.kind}_close", "id": channel.id})
        self.route.forget(channel.id)
        return True

    async def node_disconnected(self, node: NodeState) -> None:
        for channel in [c for c in self.channels.values() if c.node.id == node.id]:
            await self.end(channel, f"node {node.name} went offline", tell_node=False)

    async def finish_relay(self, channel: C, pump: asyncio.Task[None], ending: str) -> None:
        """Whatever ended the relay (even an error or a cancelled handler), the channel ends: its
        slot is freed and the node closes its side; then the pump gets a moment to finish."""
        if not channel.ended.is_set():
            await asyncio.shield(self.end(channel, ending))
        await finish_pump(pump)
