"""Runs the real `dvic` remote-control commands as subprocesses (pipes or a real PTY) for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import CentralServer

ROOT = Path(__file__).resolve().parents[2]
# The `dvic` command (tui/cli.py), its one entry point.
DVIC = [sys.executable, "-m", "tui"]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment for `dvic`: an empty config dir under `tmp_path`, no inherited DVIC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "160"
    return env


@dataclass
class Result:
    code: int
    out: str
    err: str


class DvicRunner:
    def __init__(self, server: CentralServer, env: dict[str, str]) -> None:
        self.server = server
        self.env = env

    def argv(self, args: tuple[str, ...], token: str | None) -> list[str]:
        return [*DVIC, "--server", self.server.url, "--ca", str(self.server.ca_path),
                "--token", token or self.server.admin_token, *args]

    async def start(self, *args: str, token: str | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.argv(args, token), env=self.env, cwd=str(ROOT), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

    async def __call__(self, *args: str, token: str | None = None, stdin: bytes | None = None,
                       limit: float = 30) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(args, token), env=self.env, cwd=str(ROOT), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
        return Result(proc.returncode if proc.returncode is not None else -1, out.decode(), err.decode())

    def operator(self, name: str, role: str) -> str:
        """A new active account's token."""
        status, body = self.server.api("POST", "/api/v1/operators", {"name": name, "role": role})
        assert status == 201, body
        return body["token"]


class PtyProcess:
    """A subprocess whose stdin/stdout/stderr are a real PTY the test drives (like a user's terminal)."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int = 80, rows: int = 24) -> None:
        self.master, slave = pty.openpty()
        set_size(self.master, cols, rows)
        self.saved = termios.tcgetattr(slave)
        import subprocess

        self.proc = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=_controlling_tty)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.output = b""

    def read_some(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self.master, 65536):
                self.output += chunk

    async def expect(self, needle: bytes, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {needle!r}; got {self.output[-2000:]!r}")
            if self.proc.poll() is not None:
                self.read_some()
                if needle in self.output:
                    break
                raise AssertionError(f"exited {self.proc.returncode} before {needle!r}; got {self.output[-2000:]!r}")
            await asyncio.sleep(0.02)
            self.read_some()

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def resize(self, cols: int, rows: int) -> None:
        set_size(self.master, cols, rows)
        os.killpg(self.proc.pid, signal.SIGWINCH)

    async def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running; output {self.output[-2000:]!r}")
            await asyncio.sleep(0.02)
            self.read_some()
        self.read_some()
        return self.proc.returncode

    def attrs(self) -> list[object]:
        """The terminal's current settings (as the next program on it would find them)."""
        return termios.tcgetattr(self.master)  # on Linux the master reports the slave's settings

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
