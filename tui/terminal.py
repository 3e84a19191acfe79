"""The local terminal side of `dvic shell` and `dvic replay`: raw mode, byte relay, resize, playback.

`RawMode` puts the terminal in raw mode and always puts it back (normal exit, error, signal);
`relay` pumps bytes between stdin/stdout and a shell websocket and forwards window resizes;
`play` shows an asciicast v2 recording with its timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import aiohttp

READ_CHUNK = 64 * 1024
EOT = b"\x04"  # what a terminal sends for Ctrl-D: ends the remote shell when stdin is not a tty
# What `signal.signal` returns and takes back: a function, SIG_DFL or SIG_IGN (or None: set outside Python).
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def size(fd: int) -> tuple[int, int]:
    """(cols, rows) of the terminal on `fd`, or 80x24 when it is not a terminal."""
    try:
        got = os.get_terminal_size(fd)
        if got.columns > 0 and got.lines > 0:
            return got.columns, got.lines
    except OSError:
        pass
    return 80, 24


class RawMode:
    """Raw mode on a tty for the duration of a `with` block; does nothing when `fd` is not a tty.

    SIGTERM and SIGHUP are turned into exceptions meanwhile so the `finally` that restores the
    terminal runs even when the user's terminal goes away or `dvic` is killed politely.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None  # termios attributes, as tcgetattr gives them
        self._handlers: dict[int, SignalHandler] = {}

    def __enter__(self) -> RawMode:
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._handlers[sig] = signal.signal(sig, _raise_exit)
            tty.setraw(self.fd, termios.TCSADRAIN)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()

    def restore(self) -> None:
        if self.saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers.clear()


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class ShellEnd:
    """How a shell session ended: the remote exit code (None when it did not exit by itself)."""

    code: int | None
    message: str
    session: str | None


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue  # a non-blocking stdout that is full: retry (rare, and short)
        view = view[written:]


async def relay(ws: aiohttp.ClientWebSocketResponse, in_fd: int, out_fd: int) -> ShellEnd:
    """Relays stdin -> websocket (binary) and websocket -> stdout until the session ends.

    Window changes (SIGWINCH) are sent as `{"type": "resize"}`. When stdin is not a terminal, its
    end sends one Ctrl-D so a piped script ends the remote shell like it would a local one.
    """
    loop = asyncio.get_running_loop()
    outgoing: asyncio.Queue[bytes | str | None] = asyncio.Queue()
    is_tty = os.isatty(in_fd)
    end = ShellEnd(None, "", None)

    def on_readable() -> None:
        try:
            data = os.read(in_fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            outgoing.put_nowait(data)
        else:
            loop.remove_reader(in_fd)
            outgoing.put_nowait(None)

    async def read_file() -> None:
        # A regular file (or /dev/null) cannot be watched by epoll; it never blocks either.
        while True:
            data = await loop.run_in_executor(None, os.read, in_fd, READ_CHUNK)
            if not data:
                outgoing.put_nowait(None)
                return
            outgoing.put_nowait(data)

    def on_resize() -> None:
        cols, rows = size(out_fd)
        outgoing.put_nowait(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def send() -> None:
        while True:
            item = await outgoing.get()
            if item is None:
                if not is_tty:
                    await ws.send_bytes(EOT)
                continue  # keep sending resizes after stdin ended
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)

    file_reader: asyncio.Task[None] | None = None
    try:
        loop.add_reader(in_fd, on_readable)
        watching = True
    except (PermissionError, OSError):
        watching = False
        file_reader = asyncio.ensure_future(read_file())
    def on_terminate(signum: int) -> None:
        end.message = f"dvic stopped by signal {signal.Signals(signum).name}"
        asyncio.ensure_future(ws.close())

    loop.add_signal_handler(signal.SIGWINCH, on_resize)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_terminate, sig)
    sender = asyncio.ensure_future(send())
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    write_all(out_fd, msg.data)
                except OSError as exc:
                    end.message = f"the local terminal is gone ({exc.strerror or exc})"
                    break
            elif msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    doc = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(doc, dict):
                    continue
                if doc.get("type") == "opened":
                    end.session = str(doc.get("session") or "")
                elif doc.get("type") == "exit":
                    code = doc.get("code")
                    end.code = code if isinstance(code, int) and not isinstance(code, bool) else None
                    end.message = str(doc.get("message") or "")
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
                break
        if end.code is None and not end.message:
            end.message = f"connection closed (code {ws.close_code})"
    finally:
        for sig in (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if watching:
            loop.remove_reader(in_fd)
        for task in (sender, file_reader):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (sender, file_reader) if t is not None), return_exceptions=True)
        await ws.close()
    return end


@dataclass
class PlayResult:
    events: int
    skipped: int
    first_bad: int | None


def parse_cast(text: str) -> tuple[dict[str, object], list[tuple[float, str, str]], list[int]]:
    """The header, the (time, kind, data) events and the numbers of malformed lines of an asciicast v2."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("the recording is empty")
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise ValueError("not an asciicast v2 recording (line 1 must be a header with \"version\": 2)")
    events: list[tuple[float, str, str]] = []
    bad: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            t, kind, data = json.loads(line)
            if isinstance(t, bool) or not isinstance(t, int | float) or not isinstance(kind, str) \
                    or not isinstance(data, str):
                raise ValueError
        except (ValueError, TypeError):
            bad.append(number)
            continue
        events.append((float(t), kind, data))
    return header, events, bad


async def play(text: str, out_fd: int, speed: float = 1.0, idle_limit: float | None = None) -> PlayResult:
    """Writes a recording's output events to `out_fd` with their timing (scaled by `speed`).

    Pauses longer than `idle_limit` (or the header's `idle_time_limit`) are shortened to it, like
    asciinema. Resize events cannot resize this terminal and are skipped; input events too.
    """
    header, events, bad = parse_cast(text)
    if idle_limit is None and isinstance(header.get("idle_time_limit"), int | float):
        idle_limit = float(header["idle_time_limit"])  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    start = loop.time()
    shown = 0.0  # recording time already played, after idle capping
    previous = 0.0
    for t, kind, data in events:
        gap = max(0.0, t - previous)
        previous = t
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        shown += gap
        # Scheduled from the start, so rounding in each sleep does not add up over a long session.
        delay = start + shown / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "o":
            write_all(out_fd, data.encode("utf-8", "replace"))
    return PlayResult(len(events), len(bad), bad[0] if bad else None)
