"""``--via NODE``: an asyncssh tunnel whose TCP stream runs through a fleet node's daemon.

The central server relays ``GET /api/v1/nodes/{node}/tunnel?host=H&port=P`` (a websocket whose
binary frames are the TCP bytes) to the node, which opens the TCP connection (protocol.md 4.4, 6).
asyncssh wants a transport, so each stream is bridged through a local socket pair: asyncssh gets
one end as an ordinary socket, a pump copies the other end to and from the websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .errors import InstallerError

OpenWebsocket = Callable[[str, int], Awaitable[aiohttp.ClientWebSocketResponse]]
_READ = 32 * 1024


class NodeTunnel:
    """asyncssh's tunnel interface (``create_connection``) over tunnel websockets to one node."""

    def __init__(self, node: str, open_websocket: OpenWebsocket) -> None:
        self.node = node
        self._open = open_websocket
        self._pumps: set[asyncio.Task[None]] = set()
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def __repr__(self) -> str:  # asyncssh logs "via <tunnel>"
        return f"node {self.node}"

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[asyncio.BaseTransport, Any]:
        ws = await self._open(remote_host, remote_port)
        ours, theirs = socket.socketpair()
        try:
            loop = asyncio.get_running_loop()
            transport, session = await loop.create_connection(session_factory, sock=theirs)
            reader, writer = await asyncio.open_connection(sock=ours)
        except BaseException:
            ours.close()
            theirs.close()
            await ws.close()
            raise

        async def close() -> None:
            writer.close()
            await ws.close()

        self._closers.append(close)
        for pump in (self._ws_to_socket(ws, writer), self._socket_to_ws(reader, ws)):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)
        return transport, session

    @staticmethod
    async def _ws_to_socket(ws: aiohttp.ClientWebSocketResponse, writer: asyncio.StreamWriter) -> None:
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    writer.write(msg.data)
                    await writer.drain()
                elif msg.type != aiohttp.WSMsgType.TEXT:
                    break  # a "closed" text frame is followed by the close itself
        except (ConnectionError, OSError):
            pass
        finally:
            # The far end is gone: so is the TCP stream asyncssh sees.
            writer.close()

    @staticmethod
    async def _socket_to_ws(reader: asyncio.StreamReader, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while data := await reader.read(_READ):
                await ws.send_bytes(data)
        except (ConnectionError, OSError):
            pass
        finally:
            await ws.close()

    async def aclose(self) -> None:
        for close in self._closers:
            with contextlib.suppress(OSError, ConnectionError):
                await close()
        self._closers.clear()
        pumps = list(self._pumps)
        if pumps:
            _, pending = await asyncio.wait(pumps, timeout=5)
            for task in pending:
                task.cancel()


def refusal_reason(exc: aiohttp.WSServerHandshakeError) -> str:
    """The server's `code: message` for a refused upgrade (aiohttp drops its body; the header repeats it)."""
    header = (exc.headers or {}).get("X-Dvic-Error", "")
    return header if ": " in header else f"HTTP {exc.status}"


def tunnel_error(node: str, host: str, port: int, status: int, reason: str) -> InstallerError:
    """The server's refusal of a tunnel (`reason`: its `code: message`), said for an operator."""
    where = f"{host}:{port} through node {node}"
    refused_hint = "tunnels need the operator role and a port the server allows (dvic-central --tunnel-port)"
    if reason.startswith("port_not_allowed:"):
        refused_hint = (f"port {port} is not among the ports the server lets tunnels reach: an admin can add it "
                        f"(dvic-central serve --tunnel-port {port}), or use --jump/--direct")
    table = {
        404: ("via_unknown", f"the server knows no node {node!r}", "check the name with: dvic nodes"),
        409: ("via_offline", f"node {node} is not connected, so it cannot reach {host}:{port}",
              "pick an online node for --via, or bring that node back"),
        403: ("via_refused", f"the server refused a tunnel to {where}: {reason}", refused_hint),
        429: ("via_busy", f"node {node} has too many tunnels open", "wait a moment and run again"),
    }
    code, text, hint = table.get(status, ("via_failed", f"the tunnel to {where} failed: {reason}", ""))
    return InstallerError("connect", code, text, hint)


async def read_opened(ws: aiohttp.ClientWebSocketResponse, node: str, host: str, port: int, wait: float) -> None:
    """Wait for the server's ``opened`` frame; a ``closed`` frame becomes a clear error."""
    try:
        msg = await asyncio.wait_for(ws.receive(), wait)
    except TimeoutError:
        await ws.close()
        raise InstallerError("connect", "via_timeout", f"node {node} did not open {host}:{port} in time",
                             "check that the node can reach the target") from None
    info: dict[str, Any] = {}
    if msg.type == aiohttp.WSMsgType.TEXT:
        with contextlib.suppress(ValueError):
            info = json.loads(msg.data)
    if info.get("type") == "opened":
        return
    await ws.close()
    reason = str(info.get("message") or "the tunnel closed before it opened")
    if "does not support" in reason:
        raise InstallerError("connect", "via_unsupported", f"node {node}: {reason}",
                             "upgrade that node's daemon (run dvic add-node on it again), or use --jump/--direct")
    raise InstallerError("connect", "unreachable", f"node {node} cannot reach {host}:{port}: {reason}",
                         "check the address and port from that node; is sshd running on the target?")
