"""One dvic_log file on disk: exclusive creation, whole-line writes, rotation under a cap, fork safety."""

import errno
import math
import os
import secrets
import stat
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Optional, Tuple, Union

from ._config import check_name, resolve_dir, resolve_keep_seconds, resolve_max_bytes
from ._format import (
    encode_line,
    fit_record,
    heartbeat_line,
    level_name,
    make_header,
    make_record,
    record_line,
    to_text,
)
from ._identity import ProcessIdentity, current_identity
from ._prune import prune_once

FILE_PREFIX = "dvic_log_"
ROTATED_SUFFIX = ".1"
# The next file of a rotation is prepared under this name, then renamed over the live path, so
# the live name never disappears and never shows a file without its header.
_PREPARE_SUFFIX = ".new"

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NOFOLLOW and O_EXCL together refuse any existing name, a symlink planted in /tmp included.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _NOFOLLOW | _CLOEXEC
_FILE_MODE = 0o644
_TOKEN_ATTEMPTS = 16
# How often a writer checks that its file still has a name (someone may delete it from /tmp).
_VANISH_CHECK_SECONDS = 1.0
# Errors that mean "no room": reported to the caller, never worked around by another rotation.
_NO_ROOM = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name))
# Slack for the '"rotated":N' field that later headers add: keeps every record under the cap.
_ROTATED_FIELD_SLACK = 24
#: A heartbeat call within this many seconds of the last heartbeat record writes nothing.
HEARTBEAT_MIN_INTERVAL = 1.0


def new_token() -> str:
    """A fresh random token: 16 lower-case hex characters."""
    return secrets.token_hex(8)


class LogFile:
    """A dvic_log file written by this process; also the library's small direct API.

    Each write is one os.write() of a whole line on a descriptor opened with O_APPEND, made
    under a lock so the size accounting that drives rotation stays exact across threads.
    """

    def __init__(
        self,
        name: str,
        *,
        directory: Optional[str] = None,
        max_bytes: Optional[int] = None,
        identity: Optional[ProcessIdentity] = None,
        keep_days: Optional[float] = None,
    ) -> None:
        self.name = check_name(name)
        self.directory = resolve_dir(directory)
        self.max_bytes = resolve_max_bytes(max_bytes)
        keep_seconds = resolve_keep_seconds(keep_days)
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._closed = False
        self._closed_file: Optional[Tuple[int, int]] = None  # (inode, device) at close(), for reopen()
        self._last_heartbeat: Optional[float] = None  # time.monotonic() of the last heartbeat record
        self._open_stream(identity or current_identity())
        _WRITERS.add(self)
        prune_once(self.directory, keep_seconds)

    # ----- public API -------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The 16-hex-character token of the current stream (changes in a forked child)."""
        return self._token

    @property
    def path(self) -> str:
        """Full path of the live file: <directory>/dvic_log_<token>."""
        return self._path

    @property
    def closed(self) -> bool:
        """True after close(); writing then raises ValueError."""
        return self._closed

    def write(
        self,
        level: Union[int, str],
        msg: Any,
        *,
        logger: Optional[str] = None,
        exc: Optional[str] = None,
        ts: Optional[float] = None,
    ) -> None:
        """Append one record; when this call returns the whole line is in the file.

        Raises ValueError after close(), and OSError if the disk refuses the line. If only part
        of the line fit (disk full), the rest is written before the next record, so the file
        never holds a torn line once space is back; the caller still gets the OSError.
        """
        if ts is None:
            ts = time.time()
        elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise ValueError("dvic_log: ts must be a finite number of Unix seconds, not %r" % (ts,))
        fields = (
            float(ts),
            level_name(level),
            to_text(msg),
            to_text(logger) if logger else None,
            to_text(exc) if exc else None,
        )
        line = record_line(*fields)  # outside the lock: threads only queue for the write itself
        with self._lock:
            if self._closed:
                raise ValueError("dvic_log: write to closed log file %s" % self._path)
            if self._pid != os.getpid():
                self._reopen_after_fork()
            if len(line) > self._max_line:
                line = fit_record(make_record(*fields), self._max_line)
            self._append(line)

    def heartbeat(self) -> bool:
        """Say the demo is alive: a heartbeat record, at most one per second (more calls are free).

        Returns True when a record was written. Raises like write() (ValueError after close,
        OSError when the disk refuses it).
        """
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise ValueError("dvic_log: heartbeat on closed log file %s" % self._path)
            if self._pid != os.getpid():
                self._reopen_after_fork()
                self._last_heartbeat = None
            if self._last_heartbeat is not None and now - self._last_heartbeat < HEARTBEAT_MIN_INTERVAL:
                return False
            self._append(heartbeat_line(time.time()))
            self._last_heartbeat = now
            return True

    def debug(self, msg: Any) -> None:
        self.write("DEBUG", msg)

    def info(self, msg: Any) -> None:
        self.write("INFO", msg)

    def warning(self, msg: Any) -> None:
        self.write("WARNING", msg)

    def error(self, msg: Any) -> None:
        self.write("ERROR", msg)

    def critical(self, msg: Any) -> None:
        self.write("CRITICAL", msg)

    def exception(self, msg: Any) -> None:
        """Write an ERROR record with the traceback of the exception being handled."""
        info = sys.exc_info()
        exc = "".join(traceback.format_exception(*info)).rstrip("\n") if info[0] is not None else None
        self.write("ERROR", msg, exc=exc)

    def close(self) -> None:
        """Close the descriptor. The file stays: the node daemon still has to read it."""
        with self._lock:
            if self._closed:
                return
            if self._pending and self._fd is not None and self._pid == os.getpid():
                try:
                    self._finish_pending()
                except OSError:
                    pass  # still no room: the reader will see the incomplete last line
            self._closed = True
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    st = os.fstat(fd)
                    self._closed_file = (st.st_ino, st.st_dev)
                finally:
                    os.close(fd)

    def reopen(self) -> None:
        """Continue a closed LogFile in the same file (or a new stream if that file is gone).

        logging.shutdown() closes handlers at exit while other threads or atexit functions may
        still log; like logging.FileHandler, the handler then reopens instead of losing records.
        """
        with self._lock:
            if not self._closed:
                return
            self._closed = False
            if self._pid != os.getpid():
                self._open_stream(current_identity())
                return
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _CLOEXEC)
            except OSError:
                self._open_stream(self._identity)
                return
            st = os.fstat(fd)
            if (st.st_ino, st.st_dev) != self._closed_file or not stat.S_ISREG(st.st_mode):
                os.close(fd)  # not the file we closed (rotated away, replaced): start afresh
                self._open_stream(self._identity)
                return
            self._fd, self._size = fd, st.st_size

    def __enter__(self) -> "LogFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<dvic_log.LogFile name=%r path=%r%s>" % (
            self.name,
            self._path,
            " closed" if self._closed else "",
        )

    # ----- internals (called with self._lock held, except from __init__) -----------------------

    def _header(self, rotated: int) -> bytes:
        ident = self._identity
        return encode_line(
            make_header(
                token=self._token,
                name=self.name,
                pid=ident.pid,
                pid_start=ident.pid_start,
                exe=ident.exe,
                argv=ident.argv,
                user=ident.user,
                host=ident.host,
                start=self._start,
                rotated=rotated,
            )
        )

    def _fit_identity(self, identity: ProcessIdentity) -> ProcessIdentity:
        """Shorten argv and exe until the header takes at most a quarter of the cap.

        With the smallest caps a long command line would otherwise leave no room for records.
        """
        budget = self.max_bytes // 4
        # Measured with a stand-in token of the real length and the largest "rotated" value.
        self._identity, self._token = identity, "0" * 16
        for max_args, max_chars in ((None, None), (16, 64), (4, 32), (1, 32), (0, 0)):
            if len(self._header(10**9)) <= budget:
                break
            argv = identity.argv
            if max_args is not None and max_chars is not None:
                kept = [a[:max_chars] for a in argv[:max_args]]
                if len(argv) > max_args:
                    kept.append("... (%d more arguments)" % (len(argv) - max_args))
                argv = kept
            self._identity = identity._replace(argv=argv, exe=identity.exe[:256])
        return self._identity

    def _open_stream(self, identity: ProcessIdentity) -> None:
        """Start a new stream: new token, new file, header with rotated = 0."""
        self._pid = os.getpid()
        self._start = time.time()
        self._identity = self._fit_identity(identity)
        self._rotated = 0
        self._pending = b""
        last_error: Optional[OSError] = None
        for _ in range(_TOKEN_ATTEMPTS):
            self._token = new_token()
            self._path = os.path.join(self.directory, FILE_PREFIX + self._token)
            header = self._header(0)
            try:
                fd = _create_with_header(self._path, header)
            except FileExistsError as exc:  # a token collision or a name planted in advance
                last_error = exc
                continue
            self._fd, self._size = fd, len(header)
            self._max_line = self.max_bytes - len(header) - _ROTATED_FIELD_SLACK
            self._next_vanish_check = time.monotonic() + _VANISH_CHECK_SECONDS
            return
        raise OSError(
            errno.EEXIST,
            "dvic_log: no free file name after %d attempts in %s" % (_TOKEN_ATTEMPTS, self.directory),
        ) from last_error

    def _reopen_after_fork(self) -> None:
        """A forked child logs: it gets its own file, so each file describes one process."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)  # the parent's descriptor, inherited: the parent keeps its own copy
            except OSError:
                pass
        self._open_stream(current_identity())

    def _append(self, line: bytes) -> None:
        """Write one line, into a new file if this one vanished or the line would pass the cap."""
        self._check_vanished()
        if self._pending:
            self._finish_pending()
        if self._size + len(line) > self.max_bytes:
            self._rotate()
        self._write_line(line)

    def _write_line(self, line: bytes) -> None:
        fd = self._fd
        assert fd is not None
        written = os.write(fd, line)
        self._size += written
        if written != len(line):
            # Disk full or file size limit: part of the line is on disk. Keep the rest and write
            # it first next time, so the file stays append-only and the line ends up whole.
            self._pending = line[written:]
            raise OSError(
                errno.ENOSPC,
                "dvic_log: no room in %s: %d of %d bytes of the record written, the rest follows "
                "before the next record" % (self._path, written, len(line)),
            )

    def _finish_pending(self) -> None:
        """Write what a short write left over; raises OSError while there is still no room."""
        fd = self._fd
        assert fd is not None
        while self._pending:
            written = os.write(fd, self._pending)
            self._size += written
            self._pending = self._pending[written:]

    def _check_vanished(self) -> None:
        """If the file was deleted under us, start a fresh one at the same path (as a rotation)."""
        now = time.monotonic()
        if now < self._next_vanish_check:
            return
        self._next_vanish_check = now + _VANISH_CHECK_SECONDS
        assert self._fd is not None
        if os.fstat(self._fd).st_nlink > 0:
            return
        self._pending = b""  # the unfinished line went away with the deleted file
        rotated = self._rotated + 1
        header = self._header(rotated)
        try:
            fd = _create_with_header(self._path, header)
        except FileExistsError:
            # Something else took the name: continue under a new token rather than lose lines.
            old = self._fd
            self._open_stream(self._identity)
            os.close(old)
            return
        old, self._fd = self._fd, fd
        self._size, self._rotated = len(header), rotated
        os.close(old)

    def _rotate(self) -> None:
        """Move the live file to <path>.1 (replacing the older one) and continue in a fresh file.

        Preferred: the new file is prepared under .new, the full one gets the second name .1
        (a hard link), and .new is renamed over the live name, so the live name never disappears.
        Without hard links, or when .new is unusable: the live file is renamed to .1 and the live
        name created again. If .1 is unusable too (something else occupies it), the writer goes
        on under a new token rather than stop logging. A full disk is reported, not worked around.
        """
        rotated = self._rotated + 1
        header = self._header(rotated)
        try:
            new_fd = self._rotate_with_link(header)
        except OSError as exc:
            if exc.errno in _NO_ROOM:
                raise
            try:
                new_fd = self._rotate_with_rename(header)
            except OSError as exc2:
                if exc2.errno in _NO_ROOM:
                    raise
                old = self._fd
                self._open_stream(self._identity)
                if old is not None:
                    os.close(old)
                return
        old, self._fd = self._fd, new_fd
        self._size, self._rotated = len(header), rotated
        if old is not None:
            os.close(old)

    def _rotate_with_link(self, header: bytes) -> int:
        prepared = self._path + _PREPARE_SUFFIX
        _unlink_if_present(prepared)  # left over by a crash in the middle of an earlier rotation
        new_fd = _create_with_header(prepared, header)
        try:
            backup = self._path + ROTATED_SUFFIX
            _unlink_if_present(backup)
            os.link(self._path, backup, follow_symlinks=False)
            os.rename(prepared, self._path)
        except BaseException:
            os.close(new_fd)
            try:
                os.unlink(prepared)
            except OSError:
                pass
            raise
        return new_fd

    def _rotate_with_rename(self, header: bytes) -> int:
        backup = self._path + ROTATED_SUFFIX
        _unlink_if_present(backup)
        try:
            os.rename(self._path, backup)
        except FileNotFoundError:
            pass  # deleted under us: nothing to keep
        return _create_with_header(self._path, header)


def _create_with_header(path: str, header: bytes) -> int:
    """Create path exclusively (never through a symlink), mode 0644, holding only the header."""
    fd = os.open(path, _CREATE_FLAGS, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)  # a restrictive umask must not hide the file from the daemon
        written = os.write(fd, header)
        if written != len(header):
            raise OSError(errno.ENOSPC, "dvic_log: short write of the header to %s" % path)
    except BaseException:
        os.close(fd)
        _unlink_if_present(path)
        raise
    return fd


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# Every live writer, so a forked child can reset their locks (weak: closing is not required).
_WRITERS: "weakref.WeakSet[LogFile]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at fork time and would stay locked
    # forever in the child; the file itself is replaced on the child's first write.
    for writer in list(_WRITERS):
        writer._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
