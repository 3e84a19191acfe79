"""`dvic shell NODE` end to end: an operator's real terminal (a PTY), the `dvic` process, the real
central server and the real node daemon (node_script/dvic_node.py with an enrolled bundle), whose
shell is a real login shell on the node's PTY."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.cli import DvicRunner, PtyProcess, clean_env
from tests.support.daemon import enrolled_daemon, wait_connected
from tests.support.procs import live_members, stat_fields
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for


def session_of(pid: int) -> int | None:
    """The session id of process `pid`, None once it is gone (or a zombie nobody reaped yet)."""
    fields = stat_fields(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[3])


async def test_shell_on_the_real_daemon_through_a_real_terminal(central_server: CentralServer, tmp_path: Path):
    _, daemon = enrolled_daemon(central_server, tmp_path, name="e2e-shell")
    term: PtyProcess | None = None
    try:
        wait_connected(central_server, "e2e-shell", daemon.start())
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
        fields = stat_fields(shell_pid)
        assert fields is not None and daemon.proc is not None and int(fields[1]) == daemon.proc.pid, \
            "the shell is not the daemon's child"

        term.type(b"exit 7\r")
        assert await term.wait(timeout=30) == 7  # dvic ends with the remote shell's status
        assert term.attrs() == term.saved, "the operator's terminal was not restored"

        # Nothing of the shell's session outlives it on the node, and the daemon itself goes on.
        await async_wait_for(lambda: not live_members(shell_pid, "session"), timeout=15,
                             what=f"the node's shell session {shell_pid} to end")
        assert daemon.running(), daemon.log()[-2000:]
        sessions = json.loads((await dvic("sessions", "--node", "e2e-shell", "--json")).out)["sessions"]
        assert [s["exit_code"] for s in sessions] == [7]
        assert sessions[0]["ended_at"] is not None
    finally:
        if term is not None:
            term.close()
        daemon.stop()
