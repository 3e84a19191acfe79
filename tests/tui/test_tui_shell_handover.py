"""The real `dvic` console in tmux hands the terminal to a remote shell and takes it back."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import CentralServer
from tests.tui.clikit import ROOT
from tests.tui.tuifake import wait_for
from tests.tui_remote.executor_node import ExecutorNode


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_shell_round_trip_from_the_console(
    central_server: CentralServer, dvic_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(dvic_env, DVIC_SERVER=central_server.url, DVIC_TOKEN=central_server.admin_token,
               DVIC_CA=str(central_server.ca_path), TERM="xterm-256color")
    tmux = ["tmux", "-L", f"dvic-shell-{tmp_path.name}", "-f", "/dev/null"]

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        # tmux commands return at once: a plain blocking call is fine here.
        return subprocess.run([*tmux, *args], capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    def pane() -> str:
        return run("capture-pane", "-p", "-t", "dvic").stdout

    def keys(*k: str) -> None:
        run("send-keys", "-t", "dvic", *k, check=True)

    async with ExecutorNode(central_server.enroll("pi-s")):
        cmd = ["new-session", "-d", "-s", "dvic", "-x", "100", "-y", "30"]
        for key in ("DVIC_SERVER", "DVIC_TOKEN", "DVIC_CA", "XDG_CONFIG_HOME", "PYTHONPATH", "TERM"):
            cmd += ["-e", f"{key}={env[key]}"]
        run(*cmd, sys.executable, "-m", "tui", check=True, cwd=ROOT, env=env)
        try:
            await wait_for(lambda: "pi-s" in pane() and "online" in pane(), within=30, what="fleet in tmux")
            # Laid out for the pane's 100 columns, not for $COLUMNS (160 here): the right edge shows.
            assert pane().splitlines()[-1].rstrip().endswith("^p palette")
            keys("m")
            await wait_for(lambda: "pi-s: maintenance on" in pane(), what="a notification in the pane")
            await wait_for(lambda: "◐ maintenanc" in pane(), what="the row in maintenance")
            keys("m")
            await wait_for(lambda: "pi-s: maintenance off" in pane() and "online" in pane(), what="maintenance off")
            keys("h")
            # capture-pane drops trailing blanks: the prompt "$ " shows as a line "$".
            await wait_for(lambda: "[dvic] shell on pi-s" in pane() and "\n$" in pane(), within=15,
                           what="remote shell prompt")
            keys("echo round-$((20+3))", "Enter")
            await wait_for(lambda: "round-23" in pane(), what="command output in the shell")
            assert "sort name" not in pane()  # the console's table is put away meanwhile
            keys("exit 3", "Enter")
            await wait_for(lambda: "sort name" in pane() and "pi-s" in pane(), within=15, what="console back")
            # The console says how the shell ended, in a notification at the pane's bottom right.
            await wait_for(lambda: "shell on pi-s ended (exit 3)" in pane(), what="the shell's end notified")
            assert pane().splitlines()[-1].rstrip().endswith("^p palette")
            keys("?")
            await wait_for(lambda: "Everywhere" in pane(), what="keys work again")
            keys("Escape")
            await wait_for(lambda: "Everywhere" not in pane(), what="help closed")
            # The session was a real one: recorded by the server with the shell's exit code.
            sessions = central_server.api("GET", "/api/v1/sessions")[1]["sessions"]
            assert [(s["node_name"], s["exit_code"]) for s in sessions] == [("pi-s", 3)]
            # Admin -> Recordings -> replay: the console hands the terminal to the playback, then comes back.
            keys("a")
            await wait_for(lambda: "Operators" in pane(), what="admin screen")
            keys("s")
            await wait_for(lambda: "Recordings" in pane() and "pi-s" in pane(), what="recordings")
            seen: list[str] = []

            def replayed() -> bool:
                seen.append(pane())
                return "[dvic] end of the recording" in seen[-1] or (
                    "Recordings" in seen[-1] and any("[dvic] replay of session" in p for p in seen[:-1]))

            keys("p")
            await wait_for(replayed, within=20, what="replay")
            assert any("round-23" in p for p in seen), "the replay shows the session's output"
            await wait_for(lambda: "Recordings" in pane(), within=15, what="console back after the replay")
            keys("Escape")
            await wait_for(lambda: "sort name" in pane(), what="fleet again")
            keys("q")
            await wait_for(lambda: run("has-session", "-t", "dvic").returncode != 0, within=15, what="quit")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the pane shows:\n{pane()}") from None
        finally:
            run("kill-server")
