"""`dvic shell` in a real terminal (PTY) through the real server to a real PTY shell; sessions and replay."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tests.support.cli import DvicRunner, PtyProcess
from tests.support.server import CentralServer
from tests.tui_remote.executor_node import ExecutorNode


async def until_size(term: PtyProcess, cols: int, rows: int, timeout: float = 15.0) -> None:
    """Asks the remote shell for its size until it matches (the resize travels asynchronously)."""
    want = f"{rows} {cols}".encode()
    deadline = time.monotonic() + timeout
    while True:
        mark = len(term.output)
        term.type(b"stty size\r")
        try:
            await term.expect(b"\n" + want, timeout=1.0)
            if want in term.output[mark:]:
                return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


async def interrupt_until(term: PtyProcess, line: bytes, shows: bytes, timeout: float = 15.0) -> None:
    """Ctrl-C, then `line`, until `shows` appears. A Ctrl-C typed before the job is in the
    foreground reaches the shell instead, and the next one that kills the job also flushes the
    line typed ahead (the terminal drops its pending input on an interrupt): both are repeated."""
    deadline = time.monotonic() + timeout
    while True:
        term.type(b"\x03")
        term.type(line)
        try:
            await term.expect(shows, timeout=2.0)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


async def test_shell_round_trip_resize_ctrl_c_and_exit_code(shared_server: CentralServer, dvic: DvicRunner,
                                                            dvic_env: dict[str, str], tmp_path: Path):
    async with ExecutorNode(shared_server.enroll("pi-sh")):
        term = PtyProcess(dvic.argv(("shell", "pi-sh"), None), dvic_env, cols=100, rows=30)
        try:
            await term.expect(b"$ ")
            term.type(b"echo $((6*7))\r")
            await term.expect(b"42")
            await until_size(term, 100, 30)  # the shell starts at the operator's terminal size
            term.resize(120, 40)
            await until_size(term, 120, 40)
            # Raw mode: Ctrl-C goes to the remote foreground job instead of stopping dvic.
            term.type(b"sleep 30\r")
            await term.expect(b"sleep 30")
            await interrupt_until(term, b"echo after-$((1+1))\r", b"after-2")
            term.type(b"exit 3\r")
            assert await term.wait() == 3
            assert term.attrs() == term.saved, "the terminal was not restored"
        finally:
            term.close()

    sessions = json.loads((await dvic("sessions", "--node", "pi-sh", "--json")).out)["sessions"]
    assert len(sessions) == 1 and sessions[0]["exit_code"] == 3
    sid = sessions[0]["id"]
    table = await dvic("sessions")
    assert sid in table.out and "pi-sh" in table.out
    replayed = await dvic("replay", sid, "--speed", "50", "--idle-limit", "0.05")
    assert replayed.code == 0, replayed.err
    assert "42" in replayed.out and "after-2" in replayed.out
    saved = await dvic("replay", sid, "--out", str(tmp_path / "s.cast"))
    assert saved.code == 0 and "asciinema play" in saved.out
    lines = (tmp_path / "s.cast").read_text().splitlines()
    assert json.loads(lines[0])["version"] == 2 and any(json.loads(x)[1] == "r" for x in lines[1:])
    nowhere = await dvic("replay", sid, "--out", str(tmp_path / "no" / "dir" / "s.cast"))
    assert nowhere.code == 2 and "cannot write" in nowhere.err


async def test_shell_ends_cleanly_when_the_node_goes_away(shared_server: CentralServer, dvic: DvicRunner,
                                                          dvic_env: dict[str, str]):
    node = ExecutorNode(shared_server.enroll("pi-gone"))
    await node.__aenter__()
    term = PtyProcess(dvic.argv(("shell", "pi-gone"), None), dvic_env)
    try:
        await term.expect(b"$ ")
        await node.close()
        assert await term.wait() == 255
        assert b"went offline" in term.output
        assert term.attrs() == term.saved, "the terminal was not restored"
    finally:
        term.close()
        await node.close()


async def test_shell_on_offline_or_unknown_node_is_refused_clearly(shared_server: CentralServer,
                                                                   dvic: DvicRunner):
    shared_server.enroll("pi-off")
    offline = await dvic("shell", "pi-off", stdin=b"")
    assert offline.code == 1 and "'pi-off' is new: cannot open a shell" in offline.err, offline
    unknown = await dvic("shell", "pi-none", stdin=b"")
    assert unknown.code == 1 and "pi-none" in unknown.err
    missing = await dvic("replay", "no-such-session")
    assert missing.code == 1 and "no_such_session" in missing.err


async def test_shell_with_piped_input_runs_the_script(shared_server: CentralServer, dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-pipe")):
        res = await dvic("shell", "pi-pipe", stdin=b"echo piped-$((2*3))\nexit 4\n")
    assert res.code == 4, res
    assert "piped-6" in res.out


async def test_full_screen_vim_and_sigterm_restore_the_terminal(shared_server: CentralServer, dvic: DvicRunner,
                                                                dvic_env: dict[str, str], tmp_path: Path):
    target = tmp_path / "note.txt"
    async with ExecutorNode(shared_server.enroll("pi-vim")) as node:
        term = PtyProcess(dvic.argv(("shell", "pi-vim"), None), dvic_env, cols=90, rows=20)
        try:
            await term.expect(b"$ ")
            term.type(f"vim -u NONE -N {target}\r".encode())
            await term.expect(b"\x1b[?1049h")  # vim switched to the alternate screen: it runs full-screen
            term.resize(100, 30)
            term.type(b"ihello from vim\x1b:wq\r")
            deadline = time.monotonic() + 15
            while not (target.exists() and target.read_text() == "hello from vim\n"):
                assert time.monotonic() < deadline, f"vim did not write the file: {term.output[-500:]!r}"
                await asyncio.sleep(0.05)
                term.read_some()
            await until_size(term, 100, 30)
            # A polite kill of dvic ends the session and still restores the terminal.
            term.proc.terminate()
            assert await term.wait() == 255
            assert b"stopped by signal SIGTERM" in term.output
            assert term.attrs() == term.saved, "the terminal was not restored"
        finally:
            term.close()
        # The server closed the shell on the node too: no orphan shell left behind.
        deadline = time.monotonic() + 10
        while node.shells:
            assert time.monotonic() < deadline, "the node's shell is still open"
            await asyncio.sleep(0.05)
