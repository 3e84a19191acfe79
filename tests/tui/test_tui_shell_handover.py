"""The real `dvic` console in tmux hands the terminal to a remote shell and takes it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import HAS_TMUX, Tmux, server_env
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui_remote.executor_node import ExecutorNode


@pytest.mark.skipif(not HAS_TMUX, reason="tmux is not installed")
async def test_shell_round_trip_from_the_console(
    central_server: CentralServer, dvic_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(server_env(dvic_env, central_server), TERM="xterm-256color")
    async with ExecutorNode(central_server.enroll("pi-s")):
        with Tmux(f"dvic-shell-{tmp_path.name}").console(env) as term:
            pane, keys = term.pane, term.keys
            await term.until(lambda p: "pi-s" in p and "online" in p, "fleet in tmux", timeout=30)
            # Laid out for the pane's 100 columns, not for $COLUMNS (160 here): the right edge shows.
            assert pane().splitlines()[-1].rstrip().endswith("^p palette")
            keys("m")
            await async_wait_for(lambda: "pi-s: maintenance on" in pane(), what="a notification in the pane")
            await async_wait_for(lambda: "◐ maintenanc" in pane(), what="the row in maintenance")
            keys("m")
            await async_wait_for(lambda: "pi-s: maintenance off" in pane() and "online" in pane(), what="maintenance off")
            keys("h")
            # capture-pane drops trailing blanks: the prompt "$ " shows as a line "$".
            await async_wait_for(lambda: "[dvic] shell on pi-s" in pane() and "\n$" in pane(), timeout=15,
                                 what="remote shell prompt")
            keys("echo round-$((20+3))", "Enter")
            await async_wait_for(lambda: "round-23" in pane(), what="command output in the shell")
            assert "sort name" not in pane()  # the console's table is put away meanwhile
            keys("exit 3", "Enter")
            await async_wait_for(lambda: "sort name" in pane() and "pi-s" in pane(), timeout=15, what="console back")
            # The console says how the shell ended, in a notification at the pane's bottom right.
            await async_wait_for(lambda: "shell on pi-s ended (exit 3)" in pane(), what="the shell's end notified")
            assert pane().splitlines()[-1].rstrip().endswith("^p palette")
            keys("?")
            await async_wait_for(lambda: "Everywhere" in pane(), what="keys work again")
            keys("Escape")
            await async_wait_for(lambda: "Everywhere" not in pane(), what="help closed")
            # The session was a real one: recorded by the server with the shell's exit code.
            sessions = central_server.api("GET", "/api/v1/sessions")[1]["sessions"]
            assert [(s["node_name"], s["exit_code"]) for s in sessions] == [("pi-s", 3)]
            # Admin -> Recordings -> replay: the console hands the terminal to the playback, then comes back.
            keys("a")
            await async_wait_for(lambda: "Operators" in pane(), what="admin screen")
            keys("s")
            await async_wait_for(lambda: "Recordings" in pane() and "pi-s" in pane(), what="recordings")
            seen: list[str] = []

            def replayed() -> bool:
                seen.append(pane())
                return "[dvic] end of the recording" in seen[-1] or (
                    "Recordings" in seen[-1] and any("[dvic] replay of session" in p for p in seen[:-1]))

            keys("p")
            await async_wait_for(replayed, timeout=20, what="replay", interval=0.02)  # it may flash by
            assert any("round-23" in p for p in seen), "the replay shows the session's output"
            await async_wait_for(lambda: "Recordings" in pane(), timeout=15, what="console back after the replay")
            keys("Escape")
            await async_wait_for(lambda: "sort name" in pane(), what="fleet again")
            keys("q")
            await term.until(lambda _: term.ended(), "quit", timeout=15)
