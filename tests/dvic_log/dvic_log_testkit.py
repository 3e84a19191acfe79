"""Helpers shared by the dvic_log tests: reading files back, following them, waiting with a deadline."""

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIVE_NAME = re.compile(r"^dvic_log_[0-9a-f]{16}$")
LIB_DIR = Path(__file__).resolve().parents[2] / "lib" / "python"
PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


def live_files(directory: Path) -> list[Path]:
    """The files a reader discovers: only names matching ^dvic_log_[0-9a-f]{16}$."""
    return sorted(p for p in directory.iterdir() if LIVE_NAME.match(p.name))


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """Strictly parse a whole file: valid UTF-8, ends with a newline, one JSON object per line."""
    text = data.decode("utf-8")  # strict: invalid UTF-8 fails the test
    assert text == "" or text.endswith("\n"), f"file ends in a partial line: {text[-80:]!r}"
    out = []
    for line in text.split("\n")[:-1]:
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def headed_files(directory: Path) -> list[Path]:
    """The live files whose header is written: a writer creates its file, then writes the header
    (two calls), so a reader can see it empty for a moment."""
    return [path for path in live_files(directory) if path.stat().st_size > 0]


def read_file(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, records) of one dvic_log file."""
    objs = parse_lines(path.read_bytes())
    assert objs, f"empty file {path}"
    assert objs[0].get("dvic_log") == 1, objs[0]
    return objs[0], objs[1:]


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.01
) -> Any:
    """Poll condition every `interval` s until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


class Follower:
    """A reader that follows one dvic_log path the way docs/log-format.md tells the daemon to.

    It ships only complete lines. When the inode at the path changes it drains the old
    descriptor to EOF, reads <path>.1 first if that is a file it never saw (it fell behind by a
    whole rotation), then switches to the new file. Files it could not catch up with are
    counted in missed_files, from the headers' "rotated" numbers.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = os.open(str(path), os.O_RDONLY)
        self.partial = b""
        self.objects: list[dict[str, Any]] = []
        self.switches = 0
        self.missed_files = 0
        self.rotated = 0

    def _drain(self) -> None:
        assert self.fd is not None
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.partial += chunk
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            self.objects.append(json.loads(line.decode("utf-8")))

    def poll(self) -> None:
        self._drain()
        try:
            st = os.stat(str(self.path))
        except FileNotFoundError:
            return
        assert self.fd is not None
        old_ino = os.fstat(self.fd).st_ino
        if st.st_ino == old_ino:
            return
        self._drain()
        assert self.partial == b"", "rotated file ended in a partial line"
        os.close(self.fd)
        new_fd = os.open(str(self.path), os.O_RDONLY)
        new_rotated = self._header_rotated(new_fd)
        caught_up = 0
        backup = str(self.path) + ".1"
        try:
            backup_fd = os.open(backup, os.O_RDONLY)
        except FileNotFoundError:
            backup_fd = None
        if backup_fd is not None:
            if os.fstat(backup_fd).st_ino != old_ino and self._header_rotated(backup_fd) == new_rotated - 1:
                os.lseek(backup_fd, 0, os.SEEK_SET)
                self.fd = backup_fd
                self._drain()
                caught_up = 1
            os.close(backup_fd)
        self.missed_files += max(0, new_rotated - self.rotated - 1 - caught_up)
        self.rotated = new_rotated
        os.lseek(new_fd, 0, os.SEEK_SET)
        self.fd = new_fd
        self.switches += 1
        self._drain()

    @staticmethod
    def _header_rotated(fd: int) -> int:
        first = os.pread(fd, 65536, 0).split(b"\n", 1)[0]
        return int(json.loads(first).get("rotated", 0))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def records(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if "dvic_log" not in o]

    def headers(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if "dvic_log" in o]
