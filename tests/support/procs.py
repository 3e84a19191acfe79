"""Child processes of the tests and benchmarks: one way to start one with a log, to stop it, and to
look processes up under /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from .wait import WaitTimeout, wait_for

STOP_GRACE_S = 15.0  # SIGTERM, then this long to exit (a server commits what it holds) before SIGKILL


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_GRACE_S) -> int:
    """SIGTERM, wait up to `timeout` s, then SIGKILL; its exit code."""
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        _signal(proc, signal.SIGKILL)
    proc.wait()


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float = STOP_GRACE_S) -> None:
    """Stop many processes at once, each the leader of its own group (start_new_session=True).

    SIGTERM to every group, one shared deadline, then SIGKILL to every group whatever is left in it:
    that also reaches a command or shell a process left behind after it exited itself.
    """
    procs = list(procs)
    for proc in procs:
        _signal(proc, signal.SIGTERM, group=True)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        _signal(proc, signal.SIGKILL, group=True)
        proc.wait(timeout=timeout)


def _signal(proc: subprocess.Popen[bytes], sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass  # gone already (a group: every member of it)


def stop_pid(pid: int, still_it: Callable[[], bool], timeout: float = 5.0) -> None:
    """Stop a process this test did not start itself (no Popen), e.g. one an install script started.

    `still_it()` says whether `pid` is still that process: a pid can be reused, and a zombie waiting
    for init to reap it counts as gone.
    """
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not still_it(), timeout, f"process {pid} to exit", interval=0.02)
    except ProcessLookupError:
        return
    except WaitTimeout:
        if still_it():
            os.kill(pid, signal.SIGKILL)


class ManagedProcess:
    """A child process whose output goes to a log file; subclasses say how to start it."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | str | None = None,
              new_session: bool = False) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                         start_new_session=new_session)
        return self.proc

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    alive = running

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; the exit code (None when it was not running)."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            kill_process(self.proc)
        self.proc = None


# -- looking processes up under /proc ------------------------------------------------------------

def _proc_entries() -> Iterable[Path]:
    return (entry for entry in Path("/proc").iterdir() if entry.name.isdigit())


def cmdline(pid: int) -> list[bytes]:
    """A process's arguments ([] when it is gone or not ours to read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def pids_where(match: Callable[[bytes], bool], part: str = "cmdline") -> list[int]:
    """Pids whose /proc/PID/`part` (cmdline, environ) matches; processes gone meanwhile are skipped."""
    found = []
    for entry in _proc_entries():
        try:
            data = (entry / part).read_bytes()
        except OSError:
            continue
        if match(data):
            found.append(int(entry.name))
    return found


_STAT_FIELD = {"group": 2, "session": 3}  # in /proc/PID/stat after the ")" ending the command name


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ...; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def live_members(ident: int, of: Literal["group", "session"] = "group") -> list[int]:
    """Live (not zombie) processes of a process group, or of a session (its leader's pid)."""
    members = []
    for entry in _proc_entries():
        fields = stat_fields(int(entry.name))
        if fields is not None and int(fields[_STAT_FIELD[of]]) == ident and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    return live_members(pgid) != []
