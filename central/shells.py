"""Interactive shells: relay a client websocket to a PTY on a node, and record it (asciicast v2).

Client protocol (`GET /api/v1/nodes/{node}/shell?cols=80&rows=24`): binary frames are terminal
bytes both ways; text frames are JSON control messages: client -> server `{"type": "resize",
"cols": c, "rows": r}`; server -> client `{"type": "opened", "session": id}` and, at the end,
`{"type": "exit", "code": n, "message": "…"}` before the close.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiohttp import WSMsgType, web

from . import store
from .registry import NodeState
from .relay import finish_pump, offer, pump_to_client, stall_guard
from .strictjson import JsonError, dumps, loads
from .writer import Writer

log = logging.getLogger(__name__)

MAX_SESSIONS_PER_NODE = 4
CLIENT_QUEUE = 1024  # output chunks buffered for a slow client before the session is cut
CHUNK = 32 * 1024
OPEN_TIMEOUT_S = 15.0


@dataclass(eq=False)
class ShellSession:
    id: str
    node: NodeState
    operator: str
    cols: int
    rows: int
    recording_path: Path
    started_at: float = field(default_factory=time.time)
    # Bounded by CLIENT_QUEUE through to_client_nowait (the end marker always fits).
    to_client: asyncio.Queue[bytes | dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    message: str = ""
    bytes_out: int = 0
    _cast: IO[str] | None = None
    _decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def open_recording(self) -> None:
        self.recording_path.parent.mkdir(parents=True, exist_ok=True)
        self._cast = open(self.recording_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close_recording
        header = {"version": 2, "width": self.cols, "height": self.rows, "timestamp": int(self.started_at),
                  "title": f"{self.node.name} ({self.operator})", "env": {"TERM": "xterm-256color"}}
        self._cast.write(json.dumps(header) + "\n")

    def record(self, kind: str, data: str) -> None:
        if self._cast is not None:
            self._cast.write(json.dumps([round(time.time() - self.started_at, 6), kind, data]) + "\n")

    def record_output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self.record("o", text)

    def close_recording(self) -> None:
        if self._cast is not None:
            self._cast.close()
            self._cast = None

    def to_client_nowait(self, item: bytes | dict[str, Any] | None) -> bool:
        return offer(self.to_client, item, CLIENT_QUEUE)


class ShellHub:
    def __init__(self, writer: Writer, recordings: Path) -> None:
        self.writer = writer
        self.recordings = recordings
        self.sessions: dict[str, ShellSession] = {}

    def open_on(self, node_id: str) -> int:
        return sum(1 for s in self.sessions.values() if s.node.id == node_id)

    async def create(self, node: NodeState, operator: str, cols: int, rows: int) -> ShellSession:
        sid = str(uuid.uuid4())
        session = ShellSession(sid, node, operator, cols, rows, self.recordings / f"{sid}.cast")
        session.open_recording()
        await self.writer.submit(  # the operator's shell opens after it
            store.open_shell_session(sid, node.id, operator, session.started_at, cols, rows,
                                     session.recording_path.name), urgent=True)
        self.sessions[sid] = session
        return session

    async def end(self, session: ShellSession, code: int | None, message: str) -> None:
        if session.ended.is_set():
            return
        session.exit_code, session.message = code, message
        session.ended.set()
        self.sessions.pop(session.id, None)
        session.close_recording()
        session.to_client_nowait(None)
        if session.node.send is not None:
            await session.node.send({"type": "shell_close", "id": session.id})
        await self.writer.submit(store.end_shell_session(session.id, time.time(), code, message, session.bytes_out))

    async def on_message(self, node: NodeState, msg: dict[str, Any]) -> None:
        session = self.sessions.get(msg["id"])
        if session is None or session.node.id != node.id:
            return
        kind = msg["type"]
        if kind == "shell_opened":
            session.opened.set()
        elif kind == "shell_output":
            data: bytes = msg["data"]
            session.bytes_out += len(data)
            session.record_output(data)
            if not session.to_client_nowait(data):
                await self.end(session, None, "client too slow: session closed")
        elif kind == "shell_exit":
            session.opened.set()
            await self.end(session, msg["code"], msg["message"] or "shell exited")
        elif kind == "unsupported":
            session.opened.set()
            await self.end(session, None, "the node's daemon does not support shells")

    async def node_disconnected(self, node: NodeState) -> None:
        for session in [s for s in self.sessions.values() if s.node.id == node.id]:
            await self.end(session, None, f"node {node.name} went offline")

    async def relay(self, session: ShellSession, ws: web.WebSocketResponse, hang_up: Callable[[], None]) -> None:
        """Pump bytes between the client websocket and the node until either side ends.
        `hang_up` drops the client's connection (used when it stops reading)."""
        node = session.node
        assert node.send is not None
        stopped_reading: list[bool] = []

        def hang_up_client() -> None:
            stopped_reading.append(True)
            hang_up()

        sent = await node.send({"type": "shell_open", "id": session.id, "cols": session.cols,
                                "rows": session.rows, "term": "xterm-256color"})
        if not sent:
            await self.end(session, None, "node connection closed while opening the shell")
        pump = asyncio.create_task(pump_to_client(
            session.to_client, ws,
            lambda: {"type": "exit", "code": session.exit_code, "message": session.message},
            hang_up_client, "shell"))
        ending = "the session ended on a server error"
        try:
            try:
                await asyncio.wait_for(session.opened.wait(), OPEN_TIMEOUT_S)
            except TimeoutError:
                await self.end(session, None, "the node did not open a shell in time")
            if not session.ended.is_set():
                async with stall_guard(hang_up_client, "shell"):
                    await ws.send_str(dumps({"type": "opened", "session": session.id}))
            async for msg in ws:
                if session.ended.is_set():
                    break
                if msg.type == WSMsgType.BINARY:
                    for i in range(0, len(msg.data), CHUNK):
                        piece = msg.data[i:i + CHUNK]
                        if node.send is None or not await node.send({
                                "type": "shell_input", "id": session.id, "data": base64.b64encode(piece).decode()}):
                            break
                elif msg.type == WSMsgType.TEXT:
                    await self._control(session, msg.data)
            ending = "client closed the session"
        except ConnectionError:
            ending = "client connection lost"  # e.g. an answer to its ping that could not be sent
        finally:
            # Whatever ended the relay (even an error or a cancelled handler), the session ends:
            # its slot is freed, the node hangs up the PTY, the history gets its end.
            if stopped_reading:
                ending = "client stopped reading: hung up"
            if not session.ended.is_set():
                await asyncio.shield(self.end(session, None, ending))
            await finish_pump(pump)

    async def _control(self, session: ShellSession, text: str) -> None:
        size = parse_resize(text)
        if size is None:
            return  # a garbled control frame is ignored; terminal bytes go as binary frames
        session.cols, session.rows = size
        session.record("r", f"{size[0]}x{size[1]}")
        if session.node.send is not None:
            await session.node.send({"type": "shell_resize", "id": session.id, "cols": size[0], "rows": size[1]})


def _dimension(value: Any) -> int | None:
    """A terminal size from 1 to 1000 (compared before int(): int(1e999) raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 1000:
        return None
    return int(value)


def parse_resize(text: str) -> tuple[int, int] | None:
    """(cols, rows) of a client's `{"type": "resize", ...}` text frame; None for anything else."""
    try:
        body = loads(text)
    except JsonError:
        return None
    if not isinstance(body, dict) or body.get("type") != "resize":
        return None
    cols, rows = _dimension(body.get("cols")), _dimension(body.get("rows"))
    return None if cols is None or rows is None else (cols, rows)
