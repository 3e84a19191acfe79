"""TCP connections through a node, for asyncssh's `tunnel=` (and any asyncio protocol).

`NodeTunnel(settings, "pi-1")` opens `GET /api/v1/nodes/pi-1/tunnel?host=H&port=P` for each
`create_connection(protocol_factory, host, port)` and hands the protocol a transport whose bytes
travel as the websocket's binary frames. asyncssh only needs that method:

    async with NodeTunnel(settings, "pi-1") as via:
        async with asyncssh.connect("10.0.0.9", tunnel=via, ...) as conn: ...

The server allows only its `--tunnel-port` ports (22 by default) and only operators and admins.
`dvic add-node --via NODE` (installer/api.py) uses it with the installer's own client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp

from tui.api import calls
from tui.api.aio import AsyncClient
from tui.api.config import Settings
from tui.api.core import Json, decode_frame
from tui.api.errors import ApiError

FRAME = 32 * 1024  # bytes per websocket frame: the server accepts frames up to 256 KiB
HIGH_WATER = 256 * 1024  # bytes queued for the websocket before the protocol is asked to pause
LOW_WATER = 64 * 1024
# The server gives the node 20 s to connect before it says `closed` (central/tunnels.py): a little more.
OPEN_WAIT_S = 25.0
NOT_ALLOWED = " (the port is not among the server's --tunnel-port ports)"  # a refusal nothing else explains


class TunnelError(ConnectionError):
    """The tunnel could not be opened; the message says why for an operator. `status`, `code` and
    `reason` are the server's refusal as it came (status 0: `code` "timeout", no `opened` in time;
    "not_opened", the node could not connect and `reason` is its word; or the client's own error)."""

    def __init__(self, message: str, status: int, code: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.reason = reason


class NodeTunnel:
    """Opens TCP connections from a node's network; one websocket per connection.

    Given `Settings`, it opens (and closes) its own client; given an `AsyncClient`, it uses that one."""

    def __init__(self, source: Settings | AsyncClient, node: str, opened_within: float = OPEN_WAIT_S) -> None:
        self.node = node
        self.own_client = isinstance(source, Settings)
        self.api = AsyncClient(source) if isinstance(source, Settings) else source
        self.opened_within = opened_within
        self._transports: set[WebSocketTransport] = set()

    async def __aenter__(self) -> NodeTunnel:
        await self.api.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Aborts the connections still open (and closes its own client)."""
        for transport in list(self._transports):
            transport.abort()
        for transport in list(self._transports):
            await transport.wait_closed()
        if self.own_client:
            await self.api.close()

    async def create_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str,
                                port: int, **_ignored: Any) -> tuple[WebSocketTransport, asyncio.BaseProtocol]:
        """Like `loop.create_connection`: the node connects to host:port; raises `TunnelError`."""
        ws = await self._open(host, int(port))
        protocol = protocol_factory()
        transport = WebSocketTransport(ws, protocol, (host, int(port)))
        self._transports.add(transport)
        transport.closed.add_done_callback(lambda _f: self._transports.discard(transport))
        transport.start()
        return transport, protocol

    async def _open(self, host: str, port: int) -> aiohttp.ClientWebSocketResponse:
        """The tunnel's websocket once the server said `opened`."""
        where = f"{host}:{port}"
        await self.api.open()
        try:
            ws = await self.api.websocket(calls.tunnel(self.node, host, port))
        except ApiError as exc:
            shown = await self.api.explain(exc, self.node, f"open a tunnel to {where}", NOT_ALLOWED)
            raise TunnelError(f"tunnel through {self.node} to {where}: {shown.message} [{shown.code}]",
                              exc.status, exc.code, exc.message) from exc
        try:
            try:
                first = await asyncio.wait_for(ws.receive(), self.opened_within)
            except TimeoutError:
                raise TunnelError(f"node {self.node} did not open {where} within {self.opened_within:.0f} s",
                                  0, "timeout", "") from None
            doc = _control(first)
            if doc is None or doc.get("type") != "opened":
                reason = str((doc or {}).get("message") or f"closed before opening (code {ws.close_code})")
                raise TunnelError(f"node {self.node} could not connect to {where}: {reason}", 0, "not_opened",
                                  reason)
        except BaseException:
            await ws.close()
            raise
        return ws

    async def open_connection(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Like `asyncio.open_connection`, through the node."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2 ** 16, loop=loop)
        transport, protocol = await self.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port)
        assert isinstance(protocol, asyncio.StreamReaderProtocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    def __repr__(self) -> str:  # asyncssh logs "via <tunnel>"
        return f"node {self.node} (via {self.api.base})"


def _control(msg: aiohttp.WSMessage) -> Json | None:
    return decode_frame(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None


class WebSocketTransport(asyncio.Transport):
    """An asyncio transport over the tunnel websocket: write() queues, a task sends in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, protocol: asyncio.BaseProtocol,
                 peer: tuple[str, int]) -> None:
        super().__init__({"peername": peer})
        self.ws = ws
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffered = 0
        self._write_paused = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.close_message = ""
        self._high, self._low = HIGH_WATER, LOW_WATER

    def start(self) -> None:
        self._protocol.connection_made(self)
        self._tasks = [asyncio.ensure_future(self._receive()), asyncio.ensure_future(self._send())]

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed)

    # -- asyncio.Transport ------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        chunk = bytes(data)
        self._buffered += len(chunk)
        self._queue.put_nowait(chunk)
        if not self._write_paused and self._buffered > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False  # the tunnel protocol has no half-close

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Closes once the queued bytes are sent."""
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(None)

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = min(self._high, LOW_WATER if low is None else low)

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- pumps ------------------------------------------------------------------------------------
    async def _send(self) -> None:
        try:
            while True:
                chunk = await self._queue.get()
                if chunk is None:
                    break
                for i in range(0, len(chunk), FRAME):
                    await self.ws.send_bytes(chunk[i:i + FRAME])
                self._buffered -= len(chunk)
                if self._write_paused and self._buffered <= self._low:
                    self._write_paused = False
                    self._protocol.resume_writing()
        except (ConnectionError, RuntimeError) as exc:
            self._finish(exc)
            return
        await self.ws.close()
        self._finish(None)

    async def _receive(self) -> None:
        error: Exception | None = None
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    await self._reading.wait()
                    if isinstance(self._protocol, asyncio.Protocol):
                        self._protocol.data_received(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    doc = _control(msg)
                    if doc is not None and doc.get("type") == "closed":
                        self.close_message = str(doc.get("message") or "")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    error = ConnectionResetError(f"tunnel websocket error: {self.ws.exception()}")
                    break
        except (ConnectionError, RuntimeError) as exc:
            error = exc
        # The far side is done: tell the protocol (eof first, as a socket would), then close.
        if error is None and not self._closing and isinstance(self._protocol, asyncio.Protocol):
            self._protocol.eof_received()
        self._closing = True
        self._finish(error)

    def _finish(self, error: Exception | None) -> None:
        if self.closed.done():
            return
        self._closing = True  # later writes are dropped, as on a closed socket
        self.closed.set_result(None)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if not self.ws.closed:
            asyncio.ensure_future(self.ws.close())
        self._loop.call_soon(self._protocol.connection_lost, error)
