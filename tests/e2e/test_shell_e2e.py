"""`dvic shell NODE` end to end: an operator's real terminal (a PTY), the `dvic` process, the real
central server and the real node daemon (node_script/dvic_node.py with an enrolled bundle), whose
shell is a real login shell on the node's PTY."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from tests.node.daemon_support import DaemonProcess, write_bundle
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for, wait_for
from tests.tui_remote.clikit import DvicRunner, PtyProcess, clean_env


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, pgrp, session, ...); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2:].split()


def session_of(pid: int) -> int | None:
    """The session id of process `pid`, None once it is gone (or a zombie nobody reaped yet)."""
    fields = stat_fields(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[3])


def in_session(sid: int) -> list[int]:
    """Live processes of session `sid` (a shell's session: the shell and whatever it left running)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and session_of(int(p)) == sid]


async def test_shell_on_the_real_daemon_through_a_real_terminal(central_server: CentralServer, tmp_path: Path):
    bundle = central_server.enroll("e2e-shell")
    (tmp_path / "logs").mkdir()
    daemon = DaemonProcess(sys.executable, write_bundle(tmp_path / "node.json", bundle), tmp_path / "state",
                           tmp_path / "logs").start()
    term: PtyProcess | None = None
    try:
        wait_for(lambda: central_server.node("e2e-shell")["connected"], 30, "the daemon to connect")
        env = clean_env(tmp_path)
        dvic = DvicRunner(central_server, env)
        term = PtyProcess(dvic.argv(("shell", "e2e-shell"), None), env, cols=100, rows=30)
        # The daemon runs its user's login shell: whatever its prompt, READY shows only in the output
        # (the echoed input reads RE%sDY). No history is written to the account's home.
        term.type(b"unset HISTFILE; printf 'RE%sDY\\n' A\r")
        await term.expect(b"READY\r\n", timeout=30)
        term.type(b'echo "pid=$$"; echo $((6*7))\r')
        await term.expect(b"\r\n42\r\n")
        match = re.search(rb"pid=(\d+)\r\n", term.output)
        assert match, term.output[-500:]
        shell_pid = int(match.group(1))
        assert session_of(shell_pid) == shell_pid, "the node's shell leads its own session"
        assert daemon.proc is not None and int(stat_fields(shell_pid)[1]) == daemon.proc.pid, \
            "the shell is not the daemon's child"

        term.type(b"exit 7\r")
        assert await term.wait(timeout=30) == 7  # dvic ends with the remote shell's status
        assert term.attrs() == term.saved, "the operator's terminal was not restored"

        # Nothing of the shell's session outlives it on the node, and the daemon itself goes on.
        async def session_gone() -> bool:
            return not in_session(shell_pid)

        await async_wait_for(session_gone, timeout=15, what=f"the node's shell session {shell_pid} to end")
        assert daemon.running(), daemon.log()[-2000:]
        sessions = json.loads((await dvic("sessions", "--node", "e2e-shell", "--json")).out)["sessions"]
        assert [s["exit_code"] for s in sessions] == [7]
        assert sessions[0]["ended_at"] is not None
    finally:
        if term is not None:
            term.close()
        daemon.stop()
