"""Who is logging: the process facts written in the header (pid, start time, exe, argv, user, host)."""

import os
import pwd
import shutil
import socket
import sys
from typing import List, NamedTuple, Optional, Sequence

# A header must stay small next to the size cap even for a program started with a huge command
# line; these bounds keep it well under the smallest allowed cap.
_MAX_ARGS = 64
_MAX_ARG_CHARS = 256


class ProcessIdentity(NamedTuple):
    """The facts that identify one running process, as written in a dvic_log header."""

    pid: int
    pid_start: Optional[int]
    exe: str
    argv: List[str]
    user: str
    host: str


def read_pid_start(pid: int) -> Optional[int]:
    """Return field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None.

    Together with the pid it names a process uniquely until reboot, which is how a reader tells
    the demo from a later process that was given the same pid.
    """
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself hold spaces and ")": split after the last one.
    end = stat.rfind(b")")
    if end < 0:
        return None
    fields = stat[end + 1 :].split()
    # fields[0] is field 3 (state), so field 22 is fields[19].
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _user_name() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (common in containers)
        return str(uid)


def _bounded_argv(argv: Sequence[str]) -> List[str]:
    args = [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv]
    out = [a if len(a) <= _MAX_ARG_CHARS else a[:_MAX_ARG_CHARS] + "..." for a in args[:_MAX_ARGS]]
    if len(args) > _MAX_ARGS:
        out.append("... (%d more arguments)" % (len(args) - _MAX_ARGS))
    return out


def _exe_of(pid: int, fallback: str) -> str:
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return fallback


def current_identity() -> ProcessIdentity:
    """Identity of this very process (used by the library inside a demo, and again after fork)."""
    pid = os.getpid()
    exe = sys.executable or _exe_of(pid, "")
    return ProcessIdentity(
        pid=pid,
        pid_start=read_pid_start(pid),
        exe=exe,
        argv=_bounded_argv(getattr(sys, "argv", None) or []),  # embedded interpreters may lack argv
        user=_user_name(),
        host=socket.gethostname(),
    )


def child_identity(pid: int, argv: Sequence[str]) -> ProcessIdentity:
    """Identity of a child started by the run wrapper: the child's pid, start time, exe and argv."""
    args = list(argv)
    fallback = (shutil.which(args[0]) or args[0]) if args else ""
    return ProcessIdentity(
        pid=pid,
        pid_start=read_pid_start(pid),
        exe=_exe_of(pid, fallback),
        argv=_bounded_argv(args),
        user=_user_name(),
        host=socket.gethostname(),
    )
