"""Interactive shells: relay a client websocket to a PTY on a node, and record it (asciicast v2).

Client protocol (`GET /api/v1/nodes/{node}/shell?cols=80&rows=24`): binary frames are terminal
bytes both ways; text frames are JSON control messages: client -> server `{"type": "resize",
"cols": c, "rows": r}`; server -> client `{"type": "opened", "session": id}` and, at the end,
`{"type": "exit", "code": n, "message": "…"}` before the close.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from . import store
from .registry import NodeState
from .relay import Channel, ChannelHub, stall_guard
from .strictjson import JsonError, dumps, loads
from .writer import Writer

log = logging.getLogger(__name__)

MAX_SESSIONS_PER_NODE = 4
CLIENT_QUEUE = 1024  # output chunks buffered for a slow client before the session is cut
OPEN_TIMEOUT_S = 15.0


@dataclass(eq=False)
class ShellSession(Channel, kind="shell", input_type="shell_input", client_queue=CLIENT_QUEUE):
    """A PTY on a node, recorded (asciicast v2) while it runs."""

    operator: str
    cols: int
    rows: int
    recording_path: Path
    started_at: float = field(default_factory=time.time)
    exit_code: int | None = None
    bytes_out: int = 0
    _cast: IO[str] | None = None
    _decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def final_frame(self) -> dict[str, Any]:
        return {"type": "exit", "code": self.exit_code, "message": self.message}

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


class ShellHub(ChannelHub[ShellSession]):
    def __init__(self, writer: Writer, recordings: Path) -> None:
        super().__init__()
        self.writer = writer
        self.recordings = recordings

    @property
    def sessions(self) -> dict[str, ShellSession]:
        """The open sessions by id."""
        return self.channels

    async def create(self, node: NodeState, operator: str, cols: int, rows: int) -> ShellSession:
        sid = str(uuid.uuid4())
        session = ShellSession(sid, node, operator, cols, rows, self.recordings / f"{sid}.cast")
        session.open_recording()
        await self.writer.submit(  # the operator's shell opens after it
            store.open_shell_session(sid, node.id, operator, session.started_at, cols, rows,
                                     session.recording_path.name), urgent=True)
        self.channels[sid] = session
        return session

    async def end(self, session: ShellSession, message: str, *, tell_node: bool = True,
                  code: int | None = None) -> bool:
        """ChannelHub.end, with the shell's exit code; the recording is closed and the history
        gets the session's end."""
        if session.ended.is_set():
            return False
        session.exit_code = code
        session.close_recording()
        await super().end(session, message, tell_node=tell_node)
        await self.writer.submit(store.end_shell_session(session.id, time.time(), code, message, session.bytes_out))
        return True

    async def on_channel_message(self, session: ShellSession, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "shell_output":
            data: bytes = msg["data"]
            session.bytes_out += len(data)
            session.record_output(data)
            if not session.to_client_nowait(data):
                await self.end(session, "client too slow: session closed")
        elif kind == "shell_exit":
            await self.end(session, msg["message"] or "shell exited", code=msg["code"])
        elif kind == "unsupported":
            await self.end(session, "the node's daemon does not support shells")

    async def relay(self, session: ShellSession, ws: web.WebSocketResponse, hang_up: Callable[[], None]) -> None:
        """Pump bytes between the client websocket and the node until either side ends.
        `hang_up` drops the client's connection (used when it stops reading)."""
        stopped_reading: list[bool] = []

        def hang_up_client() -> None:
            stopped_reading.append(True)
            hang_up()

        why = await self.route.open(session.node, session.id, "shells", {
            "type": "shell_open", "id": session.id, "cols": session.cols, "rows": session.rows,
            "term": "xterm-256color"})
        if why is not None:
            await self.end(session, f"{why} (opening the shell)", tell_node=False)
        pump = session.start_pump(ws, hang_up_client)
        ending = "the session ended on a server error"
        try:
            try:
                await asyncio.wait_for(session.opened.wait(), OPEN_TIMEOUT_S)
            except TimeoutError:
                await self.end(session, "the node did not open a shell in time")
            if not session.ended.is_set():
                async with stall_guard(hang_up_client, "shell"):
                    await ws.send_str(dumps({"type": "opened", "session": session.id}))
            await session.to_node(ws, self.route, lambda text: self._control(session, text))
            ending = "client closed the session"
        except ConnectionError:
            ending = "client connection lost"  # e.g. an answer to its ping that could not be sent
        finally:
            if stopped_reading:
                ending = "client stopped reading: hung up"
            await self.finish_relay(session, pump, ending)

    async def _control(self, session: ShellSession, text: str) -> None:
        size = parse_resize(text)
        if size is None:
            return  # a garbled control frame is ignored; terminal bytes go as binary frames
        session.cols, session.rows = size
        session.record("r", f"{size[0]}x{size[1]}")
        await self.route.send(session.node, session.id,
                              {"type": "shell_resize", "id": session.id, "cols": size[0], "rows": size[1]})


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
