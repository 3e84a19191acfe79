"""Helpers shared by the dvic_log tests: reading files back and following them (waits: tests/support/wait.py)."""

import json
import os
import re
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any


def tool(name: str, install: str = ".ci/run installs it") -> str:
    """Path of a tool the test needs; skipped without it, except on CI where it must be installed."""
    path = shutil.which(name)
    if path is None:
        import pytest

        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed ({install})")
        pytest.skip(f"{name} is not installed")
    return path


def library_env(log_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a demo using a dvic_log library: this one's without DVIC_LOG_* settings, the
    log directory `log_dir`, no pruning by age, and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_LOG_")}
    env.update(DVIC_LOG_DIR=str(log_dir), DVIC_LOG_KEEP_DAYS="0")
    env.update(extra)
    return env


LIVE_NAME = re.compile(r"^dvic_log_[0-9a-f]{16}$")
LIB_DIR = Path(__file__).resolve().parents[2] / "lib" / "python"


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

    def check_counted(self, total: int, typical_line: str) -> list[int]:
        """After a writer wrote records "n=0".."n=<total-1>" through five rotations or more: each
        record read once, in order, and lines missing only where the headers say the reader fell
        more than two whole files behind (the scheduler decides). The numbers read."""
        got = [int(r["msg"][2:]) for r in self.records()]
        assert got == sorted(set(got)), "records out of order or duplicated"
        assert self.switches >= 5
        if self.missed_files == 0:
            assert got == list(range(total))
        else:
            per_file = 64 * 1024 // len(typical_line)
            assert len(got) >= total - self.missed_files * (per_file + 1)
        return got


def check_full_disk(proc: subprocess.Popen[str]) -> None:
    """Take a writer (another language's library) through a full disk, and check what
    docs/log-format.md promises: one line on stderr, every record from the first refused one on
    refused, and once there is room the cut line finished before the next record.

    The writer prints its file's path, waits for a byte on stdin, writes 100 records, prints JSON
    {"ok": [one bool per record], "torn": whether the file ends in a cut line}, waits again, then
    writes "space is back". RLIMIT_FSIZE (prlimit on the running process) refuses bytes past 3000
    meanwhile, as a full disk would, and is lifted as freeing space would.
    """
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        path = Path(proc.stdout.readline().strip())
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
        proc.stdin.write("1")
        proc.stdin.flush()
        report: dict[str, Any] = json.loads(proc.stdout.readline())
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        proc.stdin.write("2")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    refused = [i for i, ok in enumerate(report["ok"]) if not ok]
    assert refused and refused == list(range(refused[0], 100))  # from the first failure on
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dvic_log: cannot write to {path}: "), stderr
    _, records = read_file(path)  # every line whole again
    kept = [int(r["msg"].split()[1]) for r in records[:-1]]
    # A cut line counts as refused for the caller, but it is finished, so it is in the file.
    assert kept == list(range(refused[0] + (1 if report["torn"] else 0)))
    assert records[-1]["msg"] == "space is back"
