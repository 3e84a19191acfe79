"""The real `dvic` console in a real terminal (tmux); in a browser (--web): tests/tui/test_tui_web.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import CentralServer
from tests.tui.clikit import ROOT
from tests.tui.realkit import online_node
from tests.tui.tuifake import wait_for


def _env(server: CentralServer, base: dict[str, str]) -> dict[str, str]:
    return dict(base, DVIC_SERVER=server.url, DVIC_TOKEN=server.admin_token, DVIC_CA=str(server.ca_path),
                TERM="xterm-256color")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_dvic_without_arguments_opens_the_console_in_a_terminal(
    central_server: CentralServer, dvic_env: dict[str, str], tmp_path: Path
) -> None:
    sock = f"dvic-test-{tmp_path.name}"
    env = _env(central_server, dvic_env)
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        # tmux commands return at once: a plain blocking call is fine here.
        return subprocess.run([*tmux, *args], capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    def pane() -> str:
        return run("capture-pane", "-p", "-t", "dvic").stdout

    async with online_node(central_server, "pi-42"):
        # The variables reach the console through tmux's environment (-e), like `dvic-central up` does.
        cmd = ["new-session", "-d", "-s", "dvic", "-x", "100", "-y", "30"]
        for key in ("DVIC_SERVER", "DVIC_TOKEN", "DVIC_CA", "XDG_CONFIG_HOME", "PYTHONPATH", "TERM"):
            cmd += ["-e", f"{key}={env[key]}"]
        run(*cmd, sys.executable, "-m", "tui", check=True, cwd=ROOT, env=env)
        try:
            await wait_for(lambda: "pi-42" in pane() and "online" in pane(), within=30, what="fleet in tmux")
            run("send-keys", "-t", "dvic", "?", check=True)
            await wait_for(lambda: "Everywhere" in pane(), what="help")
            run("send-keys", "-t", "dvic", "Escape", check=True)
            await wait_for(lambda: "Everywhere" not in pane(), what="help closed")
            run("send-keys", "-t", "dvic", "q", check=True)

            def ended() -> bool:
                return run("has-session", "-t", "dvic").returncode != 0

            await wait_for(ended, within=15, what="console to quit")
        finally:
            run("kill-server")
