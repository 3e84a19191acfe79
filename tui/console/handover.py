"""Hands the terminal over from the console to a remote shell or a recording, and takes it back.

The console suspends itself (`App.suspend()`: its screen, input thread and terminal modes are put
away), the shell relay of `tui/terminal.py` owns the terminal until the session ends, then the
console resumes and repaints. Live updates keep arriving meanwhile; the suspended driver does not
draw them, and the repaint on resume shows the current state.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from textual.app import SuspendNotSupported

from tui import terminal
from tui.api.errors import ApiError
from tui.textsafe import clean

if TYPE_CHECKING:
    from tui.console.host import ConsoleHost

BANNER = "\r\n[dvic] {what}: the console comes back when it ends.\r\n"


def _say(fd: int, text: str) -> None:
    try:
        terminal.write_all(fd, text.encode())
    except OSError:
        pass  # the terminal is gone: the console's own exit handles that


async def shell(app: ConsoleHost, node_id: str) -> str:
    """Opens a shell on `node_id` in this terminal; returns how it ended (for a notification)."""
    name = clean(app.fleet.nodes.get(node_id, {}).get("name", node_id), single_line=True)
    in_fd, out_fd = sys.__stdin__.fileno(), sys.__stdout__.fileno()  # type: ignore[union-attr]
    cols, rows = terminal.size(out_fd)
    # Open before suspending: a refusal (maintenance, offline, role) is shown in the console.
    ws = await app.api.shell(node_id, cols, rows)
    try:
        with app.suspend():
            _say(out_fd, BANNER.format(what=f"shell on {name}"))
            with terminal.RawMode(in_fd):
                end = await terminal.relay(ws, in_fd, out_fd)
    except SuspendNotSupported:
        await ws.close()
        raise
    if end.code is not None:
        return f"shell on {name} ended (exit {end.code})"
    return f"shell on {name} ended: {clean(end.message or 'connection closed', single_line=True)}"


async def replay(app: ConsoleHost, session_id: str, speed: float = 1.0) -> str:
    """Plays a recorded session in this terminal at `speed`, idle pauses capped at 2 s."""
    try:
        cast = await app.api.recording(session_id)
        terminal.parse_cast(cast)  # a broken recording is reported in the console, not half-played
    except ValueError as exc:
        raise ApiError(0, "bad_recording", f"session {session_id}: {exc}") from None
    out_fd = sys.__stdout__.fileno()  # type: ignore[union-attr]
    with app.suspend():
        _say(out_fd, BANNER.format(what=f"replay of session {session_id}") + "\r\n")
        result = await terminal.play(cast, out_fd, speed=speed, idle_limit=2.0)
        _say(out_fd, "\r\n[dvic] end of the recording.\r\n")
    note = f" ({result.skipped} malformed line(s) skipped)" if result.skipped else ""
    return f"replayed session {session_id}{note}"
