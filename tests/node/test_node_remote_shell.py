"""Interactive shells on the real daemon: a PTY with the right size, resizes, full-screen programs, no orphans."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from remote_support import ScriptedNode, ScriptedServer, scripted_node

from tests.support.daemon import PY38
from tests.support.procs import live_members


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ScriptedNode]:
    async with scripted_node(tmp_path) as node:
        yield node


async def open_shell(srv: ScriptedServer, cols: int = 80, rows: int = 24, term: str = "xterm-256color") -> tuple[str, int]:
    rid = str(uuid.uuid4())
    await srv.send({"type": "shell_open", "id": rid, "cols": cols, "rows": rows, "term": term})
    opened = await srv.reply(rid, "shell_opened")
    # the login profile has run (never kill a shell mid-profile: e.g. pyenv leaves a stale lock) and
    # history goes nowhere (tests must not write to the user's real ~/.bash_history)
    await srv.shell_input(rid, "unset HISTFILE; echo READY-$((20+22))\n")
    await until_output(srv, rid, "READY-42")
    return rid, opened["pid"]


async def until_output(srv: ScriptedServer, rid: str, text: str, timeout: float = 15) -> str:
    return await srv.wait(lambda: text in srv.shell_text(rid) and srv.shell_text(rid), timeout, repr(text))


async def test_shell_sees_its_size_and_resizes_and_reports_the_exit_code(
        node: ScriptedNode) -> None:
    srv, _ = node
    rid, pid = await open_shell(srv, cols=100, rows=30, term="vt100")
    await srv.shell_input(rid, "stty size; echo \"T=$TERM\"\n")
    await until_output(srv, rid, "30 100")
    await until_output(srv, rid, "T=vt100")
    await srv.send({"type": "shell_resize", "id": rid, "cols": 132, "rows": 43})
    await srv.shell_input(rid, "stty size\n")
    await until_output(srv, rid, "43 132")
    await srv.shell_input(rid, "tty; exit 3\n")
    exit_ = await srv.reply(rid, "shell_exit")
    assert exit_["code"] == 3 and "/dev/pts/" in srv.shell_text(rid)
    assert not live_members(pid, "session")


@pytest.mark.skipif(not shutil.which("vi"), reason="no vi on this machine")
async def test_a_full_screen_editor_works(node: ScriptedNode, tmp_path: Path) -> None:
    srv, _ = node
    rid, _ = await open_shell(srv, cols=90, rows=20)
    target = tmp_path / "edited.txt"
    await srv.shell_input(rid, f"vi -i NONE {target}\n")
    await srv.wait(lambda: "\x1b[" in srv.shell_text(rid).split("vi ", 1)[-1], what="vi drawing the screen")
    await srv.shell_input(rid, "ihello from vi\x1b")
    await until_output(srv, rid, "hello from vi")
    await srv.shell_input(rid, ":wq\r")
    await srv.wait(lambda: target.exists() and target.read_text() == "hello from vi\n", what="the file written by vi")
    await srv.send({"type": "shell_close", "id": rid})
    await srv.reply(rid, "shell_exit")


async def test_close_and_connection_loss_leave_no_processes(node: ScriptedNode) -> None:
    srv, _ = node
    pids = []
    for closing in ("shell_close", "drop"):
        rid, pid = await open_shell(srv)
        # a background job in its own process group, a nohup'd one and a foreground one
        await srv.shell_input(rid, "set -m; sleep 301 & nohup sleep 302 >/dev/null 2>&1 & echo started; sleep 303\n")
        await until_output(srv, rid, "started")
        await srv.wait(lambda pid=pid: len(live_members(pid, "session")) >= 4, what="the session's processes")
        pids.append(pid)
        if closing == "shell_close":
            await srv.send({"type": "shell_close", "id": rid})
            await srv.reply(rid, "shell_exit")
        else:
            await srv.drop()
            await srv.connected(2)
        await srv.wait(lambda pid=pid: not live_members(pid, "session"), timeout=10, what=f"no processes left after {closing}")


async def test_at_most_4_shells_and_bad_requests_are_answered(node: ScriptedNode) -> None:
    srv, daemon = node
    shells = [await open_shell(srv) for _ in range(4)]
    fifth = str(uuid.uuid4())
    await srv.send({"type": "shell_open", "id": fifth, "cols": 80, "rows": 24, "term": "xterm"})
    assert "4 shells open" in (await srv.reply(fifth, "shell_exit"))["message"]
    for rid, _ in shells:
        await srv.send({"type": "shell_close", "id": rid})
        await srv.reply(rid, "shell_exit")
    bad = {"cols": 0, "rows": 24, "term": "xterm"}, {"cols": 80, "rows": 24, "term": "x; rm -rf /"}
    for fields in bad:
        rid = str(uuid.uuid4())
        await srv.send({"type": "shell_open", "id": rid, **fields})
        assert "expected" in (await srv.reply(rid, "shell_exit"))["message"]
    rid, _ = await open_shell(srv)
    await srv.send({"type": "shell_input", "id": rid, "data": "%%% not base64"})  # ignored, session lives
    await srv.send({"type": "shell_resize", "id": rid, "cols": 99999, "rows": 1})  # ignored
    await srv.shell_input(rid, "echo alive\n")
    await until_output(srv, rid, "alive")
    await srv.send({"type": "shell_close", "id": rid})
    await srv.reply(rid, "shell_exit")
    assert "not base64" in daemon.log() and "resize ignored" in daemon.log()


def other_login_user() -> str:
    import pwd

    for p in pwd.getpwall():
        if p.pw_uid >= 100 and p.pw_shell in ("/bin/sh", "/bin/bash") and Path(p.pw_shell).exists():
            return p.pw_name
    return ""


@pytest.mark.skipif(os.geteuid() != 0 or not other_login_user(), reason="needs root and a second login user")
async def test_root_daemon_drops_to_the_shell_user(tmp_path: Path) -> None:
    user = other_login_user()
    async with scripted_node(tmp_path, extra=("--shell-user", user)) as (srv, _):
        rid, _ = await open_shell(srv)
        await srv.shell_input(rid, "echo \"me=$(id -un) groups=$(id -G) home=$HOME\"; exit\n")
        await srv.reply(rid, "shell_exit")
        text = srv.shell_text(rid)
        assert f"me={user} " in text and "home=/" in text
        assert " 0 " not in text.split("groups=")[-1].split("home=")[0] + " "  # root's group dropped
    async with scripted_node(tmp_path, extra=("--shell-user", "no-such-user-xyz")) as (srv, _):
        rid = str(uuid.uuid4())
        await srv.send({"type": "shell_open", "id": rid, "cols": 80, "rows": 24, "term": "xterm"})
        assert "no user 'no-such-user-xyz'" in (await srv.reply(rid, "shell_exit"))["message"]



@pytest.mark.parametrize("python", [sys.executable, PY38], ids=["python", "python3.8"])
async def test_commands_started_as_shells_close_keep_their_output_and_their_end(tmp_path: Path, python: Path) -> None:
    """Closing a shell frees its PTY's descriptor number at once, and a command started right then may
    get that number for its output pipe. The closed shell's reader, cancelled a moment later, must not
    take the pipe's registration with it: the command's output would be lost and, cancelled, its end
    never noticed (Python >= 3.11 waits for the pipes too): its run never finished, its slot never freed.
    The closes and the commands arrive together, so the events come in the same order on every run."""
    if not Path(python).exists():
        pytest.skip(f"{python} not installed")
    async with scripted_node(tmp_path, python=python) as (srv, _):
        shells = [(await open_shell(srv))[0] for _ in range(4)]
        commands = [str(uuid.uuid4()) for _ in range(3)]
        await srv.send_together([{"type": "shell_close", "id": rid} for rid in shells] + [
            {"type": "exec", "id": rid, "argv": None, "shell": f"echo {rid}; sleep 30", "timeout": 60, "cap": 1000}
            for rid in commands])
        for rid in commands:
            await srv.reply(rid, "exec_started")
            await srv.send({"type": "cancel", "id": rid})
        for rid in commands:
            exit_ = await srv.reply(rid, "exec_exit", timeout=10)
            assert (exit_["reason"], srv.output(rid)) == ("cancelled", rid + "\n"), exit_
        for rid in shells:
            await srv.reply(rid, "shell_exit")
