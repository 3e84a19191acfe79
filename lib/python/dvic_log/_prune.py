"""Retention: removing this user's dvic_log files whose writer exited long ago.

Rotation bounds one demo to two files; this bounds how many old runs pile up in /tmp. A file
is removed only if this user owns it, it has not been written for the retention period, and the
process named in its header is gone (pid and start time checked), so the node daemon has long
shipped it and no live demo ever loses its file.
"""

import errno
import json
import os
import re
import stat
import time
from typing import Any, Dict, Optional, Set

from ._forksafe import ForkSafeLock
from ._identity import read_pid_start

# The live name, its rotated copy, and a rotation's file in preparation (left by a crash).
_NAME = re.compile(r"^dvic_log_[0-9a-f]{16}(\.1|\.new)?$")
_HEADER_BYTES = 64 * 1024
# A directory with more entries than this is only partly scanned per process start.
_MAX_ENTRIES = 20000

_done: Set[str] = set()
_done_lock = ForkSafeLock()


def _read_header(path: str) -> Optional[Dict[str, Any]]:
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        )
    except OSError:
        return None
    try:
        first = os.read(fd, _HEADER_BYTES).split(b"\n", 1)[0]
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        header = json.loads(first.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return None
    return header if isinstance(header, dict) else None


def writer_alive(header: Dict[str, Any]) -> bool:
    """Whether the process a header names is still running (same pid *and* same start time)."""
    pid = header.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    pid_start = header.get("pid_start")
    if isinstance(pid_start, int) and not isinstance(pid_start, bool):
        return read_pid_start(pid) == pid_start
    try:
        os.kill(pid, 0)  # no start time to compare: a live pid counts as alive, to be safe
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def prune_stale(directory: str, keep_seconds: float, now: Optional[float] = None) -> int:
    """Remove this user's stale dvic_log files in directory; return how many were removed."""
    now = time.time() if now is None else now
    uid = os.geteuid()
    removed = 0
    try:
        entries = os.scandir(directory)
    except OSError:
        return 0
    with entries:
        for count, entry in enumerate(entries):
            if count >= _MAX_ENTRIES:
                break
            if not _NAME.match(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or now - st.st_mtime < keep_seconds:
                continue
            header = _read_header(entry.path)
            if header is not None and writer_alive(header):
                continue  # an idle demo that is still running keeps its file
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass  # gone already, or not ours to remove after all
    return removed


def prune_once(directory: str, keep_seconds: float) -> None:
    """prune_stale() at most once per process and directory; never raises."""
    if keep_seconds <= 0:
        return
    key = os.path.realpath(directory)
    with _done_lock:
        if key in _done:
            return
        _done.add(key)
    try:
        prune_stale(directory, keep_seconds)
    except Exception:  # retention is housekeeping: it must never break a demo's logging
        pass
