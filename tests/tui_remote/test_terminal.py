"""tui.terminal without a server: asciicast parsing and timed playback, raw mode restored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import termios
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.cli import set_size
from tui import terminal


@contextlib.contextmanager
def fd_pair(opener: Callable[[], tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Both ends of `os.pipe()` or `pty.openpty()`, closed at the end."""
    first, second = opener()
    try:
        yield first, second
    finally:
        os.close(first)
        os.close(second)


def _cast(*events: object, header: dict | None = None) -> str:
    head = header if header is not None else {"version": 2, "width": 80, "height": 24}
    return "\n".join([json.dumps(head), *(e if isinstance(e, str) else json.dumps(e) for e in events)]) + "\n"


def _read_all(fd: int) -> bytes:
    out = b""
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 65536):
            out += chunk
    except BlockingIOError:
        pass
    return out


async def test_play_keeps_the_order_caps_idle_pauses_and_scales_speed():
    cast = _cast([0.1, "o", "one "], [0.2, "r", "100x30"], [30.0, "o", "two "], [30.1, "i", "secret"],
                 [60.0, "o", "three\r\n"])
    with fd_pair(os.pipe) as (read_fd, write_fd):
        started = time.monotonic()
        # 0.1 + (0.1 + 0.2 capped) + 0.2 capped, at double speed: about 0.25 s instead of a minute.
        result = await terminal.play(cast, write_fd, speed=2.0, idle_limit=0.2)
        elapsed = time.monotonic() - started
        assert _read_all(read_fd) == b"one two three\r\n"
    assert result.events == 5 and result.skipped == 0
    assert 0.2 <= elapsed < 5.0


async def test_play_uses_the_header_idle_limit_and_skips_bad_lines():
    cast = _cast([0.0, "o", "a"], "not json", [1, "o"], [5.0, "o", "b"],
                 header={"version": 2, "width": 80, "height": 24, "idle_time_limit": 0.05})
    with fd_pair(os.pipe) as (read_fd, write_fd):
        started = time.monotonic()
        result = await terminal.play(cast, write_fd)
        assert time.monotonic() - started < 3.0
        assert _read_all(read_fd) == b"ab"
    assert (result.skipped, result.first_bad) == (2, 3)


def test_parse_cast_refuses_what_is_not_asciicast_v2():
    with pytest.raises(ValueError, match="empty"):
        terminal.parse_cast("")
    with pytest.raises(ValueError, match="asciicast v2"):
        terminal.parse_cast('{"version": 1}\n')
    with pytest.raises(ValueError, match="asciicast v2"):
        terminal.parse_cast("[0, \"o\", \"x\"]\n")


def test_raw_mode_is_restored_even_after_an_error():
    with fd_pair(pty.openpty) as (_, slave):
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError), terminal.RawMode(slave):
            raw = termios.tcgetattr(slave)
            assert not raw[3] & termios.ECHO and not raw[3] & termios.ICANON
            raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    # Not a terminal: nothing to do, nothing to break.
    with fd_pair(os.pipe) as (read_fd, _), terminal.RawMode(read_fd):
        pass


def test_size_falls_back_to_80x24_off_a_terminal():
    with fd_pair(os.pipe) as (_, write_fd):
        assert terminal.size(write_fd) == (80, 24)
    with fd_pair(pty.openpty) as (master, slave):
        set_size(master, 132, 43)
        assert terminal.size(slave) == (132, 43)


def test_play_needs_a_running_loop_only():
    # `play` is a coroutine; a plain asyncio.run drives it (as `dvic replay` does).
    with fd_pair(os.pipe) as (read_fd, write_fd):
        asyncio.run(terminal.play(_cast([0, "o", "x"]), write_fd))
        assert _read_all(read_fd) == b"x"
