"""The real `dvic` console in a real terminal (tmux); in a browser (--web): tests/tui/test_tui_web.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import HAS_TMUX, Tmux, server_env
from tests.support.nodes import online_node
from tests.support.server import CentralServer


@pytest.mark.skipif(not HAS_TMUX, reason="tmux is not installed")
async def test_dvic_without_arguments_opens_the_console_in_a_terminal(
    central_server: CentralServer, dvic_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(server_env(dvic_env, central_server), TERM="xterm-256color")
    async with online_node(central_server, "pi-42"):
        with Tmux(f"dvic-test-{tmp_path.name}").console(env) as term:
            await term.until(lambda pane: "pi-42" in pane and "online" in pane, "fleet in tmux", timeout=30)
            term.keys("?")
            await term.until(lambda pane: "Everywhere" in pane, "help")
            term.keys("Escape")
            await term.until(lambda pane: "Everywhere" not in pane, "help closed")
            term.keys("q")
            await term.until(lambda _: term.ended(), "console to quit", timeout=15)
