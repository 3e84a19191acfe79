"""Reading dvic_log files back: parsing any line, and following a file through its rotations.

This is the reference implementation of the reader rules in docs/log-format.md (the node
daemon has its own copy, being a single file); `python3 -m dvic_log cat` and `ls` use it.
"""

import json
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional

from ._format import LEVELS, is_heartbeat
from ._prune import writer_alive

LIVE_NAME = re.compile(r"^dvic_log_[0-9a-f]{16}$")
_READ_SIZE = 256 * 1024
# A "line" longer than this without a newline is handed out in pieces (bounded memory).
MAX_LINE_BYTES = 16 * 1024 * 1024


class Entry(NamedTuple):
    """One thing read from a file: kind is "header", "record", "heartbeat", "raw" or "gap"."""

    kind: str
    data: Dict[str, Any]


def parse_line(raw: bytes) -> Entry:
    """Classify one line (without its newline). Never raises: anything odd becomes "raw" INFO."""
    text = raw.decode("utf-8", errors="replace")
    if text.endswith("\r"):
        text = text[:-1]
    obj = None
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
    if isinstance(obj, dict):
        if "dvic_log" in obj:
            return Entry("header", obj)
        if isinstance(obj.get("msg"), str):
            level = obj.get("level")
            record = dict(obj)
            record["level"] = level if level in LEVELS else "INFO"
            ts = obj.get("ts")
            record["ts"] = ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
            return Entry("heartbeat" if is_heartbeat(obj) else "record", record)
    return Entry("raw", {"ts": None, "level": "INFO", "msg": text})


def read_header(path: str) -> Optional[Dict[str, Any]]:
    """The header of a file, or None if its first line is not one."""
    try:
        with open(path, "rb") as f:
            first = f.readline(64 * 1024)
    except OSError:
        return None
    entry = parse_line(first.rstrip(b"\n"))
    return entry.data if entry.kind == "header" else None


def is_alive(header: Dict[str, Any]) -> bool:
    """Whether the writer a header names still runs (pid and start time both match)."""
    return writer_alive(header)


class Follower:
    """Follows one dvic_log path by the rules of docs/log-format.md.

    poll() returns what became readable since the last call: only complete lines; on a rotation
    the old file is read to its end, then <path>.1 if it is a file never seen (the reader fell
    behind), then the new file; whole files that went by unread are reported as a "gap" entry.
    """

    def __init__(self, path: str, include_previous: bool = False) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._partial = b""
        self._rotated = 0
        self._pending_previous = include_previous
        self.finished = False  # the path is gone and the old descriptor is drained

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> List[Entry]:
        out: List[Entry] = []
        if self._fd is None:
            if not self._open_first(out):
                return out
        self._drain(out)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.finished = True  # keep the descriptor: the writer may create the path again
            return out
        assert self._fd is not None
        old = os.fstat(self._fd)
        if (st.st_ino, st.st_dev) == (old.st_ino, old.st_dev):
            self.finished = False
            if os.lseek(self._fd, 0, os.SEEK_CUR) > st.st_size:
                # Shrunk: dvic_log never truncates, so someone else rewrote it; start again.
                os.lseek(self._fd, 0, os.SEEK_SET)
                self._partial = b""
                self._drain(out)
            return out
        self._switch(out, old)
        return out

    def flush_partial(self) -> List[Entry]:
        """The unterminated last line, if any, as an entry: for a file whose writer is gone."""
        if not self._partial:
            return []
        entry, self._partial = parse_line(self._partial), b""
        return [entry]

    # ----- internals ------------------------------------------------------------------------------

    def _open_first(self, out: List[Entry]) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except FileNotFoundError:
            self.finished = True
            return False
        if self._pending_previous:
            self._read_previous(out, fd)
        self._fd = fd
        header = _pread_header(fd)
        self._rotated = int(header.get("rotated", 0)) if header else 0
        return True

    def _read_previous(self, out: List[Entry], current_fd: int) -> None:
        """Read <path>.1 (records only) before the current file, when it precedes it."""
        self._pending_previous = False
        current = _pread_header(current_fd) or {}
        try:
            fd = os.open(self.path + ".1", os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except OSError:
            return
        try:
            previous = _pread_header(fd) or {}
            if (
                previous.get("token") == current.get("token")
                and previous.get("rotated", 0) == current.get("rotated", 0) - 1
            ):
                self._read_whole(out, fd)
        finally:
            os.close(fd)

    def _drain(self, out: List[Entry]) -> None:
        assert self._fd is not None
        while True:
            chunk = os.read(self._fd, _READ_SIZE)
            if not chunk:
                return
            self._split(chunk, out)

    def _split(self, chunk: bytes, out: List[Entry]) -> None:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line:
                out.append(parse_line(line))
        while len(self._partial) > MAX_LINE_BYTES:
            out.append(parse_line(self._partial[:MAX_LINE_BYTES]))
            self._partial = self._partial[MAX_LINE_BYTES:]

    def _read_whole(self, out: List[Entry], fd: int) -> None:
        saved_fd, saved_partial = self._fd, self._partial
        self._fd, self._partial = fd, b""
        os.lseek(fd, 0, os.SEEK_SET)
        self._drain(out)
        if self._partial:
            out.append(parse_line(self._partial))
        self._fd, self._partial = saved_fd, saved_partial

    def _switch(self, out: List[Entry], old: os.stat_result) -> None:
        # The writer may have appended to the old file after our last read: drain it first.
        self._drain(out)
        if self._partial:  # a finished file may end without a newline (a writer that died)
            out.append(parse_line(self._partial))
            self._partial = b""
        try:
            new_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except FileNotFoundError:
            self.finished = True
            return
        new_header = _pread_header(new_fd) or {}
        new_rotated = int(new_header.get("rotated", 0))
        caught_up = 0
        try:
            backup_fd: Optional[int] = os.open(
                self.path + ".1", os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK
            )
        except OSError:
            backup_fd = None
        if backup_fd is not None:
            try:
                backup = os.fstat(backup_fd)
                backup_header = _pread_header(backup_fd) or {}
                unseen = (backup.st_ino, backup.st_dev) != (old.st_ino, old.st_dev)
                if (
                    unseen
                    and backup_header.get("rotated", 0) == new_rotated - 1
                    and new_rotated - 1 > self._rotated
                ):
                    self._read_whole(out, backup_fd)
                    caught_up = 1
            finally:
                os.close(backup_fd)
        missed = new_rotated - self._rotated - 1 - caught_up
        if missed > 0:
            out.append(Entry("gap", {"files": missed, "rotated": new_rotated}))
        self.close()
        self._fd, self._rotated = new_fd, new_rotated
        self.finished = False
        self._drain(out)


def _pread_header(fd: int) -> Optional[Dict[str, Any]]:
    first = os.pread(fd, 64 * 1024, 0).split(b"\n", 1)[0]
    entry = parse_line(first)
    return entry.data if entry.kind == "header" else None


def live_files(directory: str) -> List[str]:
    """Paths of the live files in directory (names ^dvic_log_[0-9a-f]{16}$), sorted."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if LIVE_NAME.match(n))
