"""Runs the real `dvic` command for the tests: on pipes, on a real PTY, or in a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

ROOT = Path(__file__).resolve().parents[2]
# The `dvic` command (tui/cli.py), its one entry point.
DVIC = [sys.executable, "-m", "tui"]
HAS_TMUX = shutil.which("tmux") is not None


def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment for `dvic`: an empty config dir under `tmp_path`, no inherited DVIC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "160"
    return env


def server_env(env: dict[str, str], server: CentralServer, token: str | None = None) -> dict[str, str]:
    """`env` pointed at `server` through DVIC_SERVER/DVIC_TOKEN/DVIC_CA, as the admin unless `token`."""
    return dict(env, DVIC_SERVER=server.url, DVIC_TOKEN=token or server.admin_token, DVIC_CA=str(server.ca_path))


@dataclass
class Result:
    code: int
    out: str
    err: str


async def start_dvic(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """`dvic ARGS` running on pipes (stdin empty), for a test that reads its output as it comes."""
    return await asyncio.create_subprocess_exec(
        *DVIC, *args, env=env, cwd=str(ROOT), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run_dvic(env: dict[str, str], *args: str, stdin: bytes | None = None, limit: float = 30) -> Result:
    """`dvic ARGS` to its end: exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *DVIC, *args, env=env, cwd=str(ROOT), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class DvicRunner:
    """`dvic` against one server with its options on the command line, as the admin or another token."""

    def __init__(self, server: CentralServer, env: dict[str, str]) -> None:
        self.server = server
        self.env = env

    def options(self, args: tuple[str, ...], token: str | None) -> list[str]:
        return ["--server", self.server.url, "--ca", str(self.server.ca_path),
                "--token", token or self.server.admin_token, *args]

    def argv(self, args: tuple[str, ...], token: str | None) -> list[str]:
        return [*DVIC, *self.options(args, token)]

    async def start(self, *args: str, token: str | None = None) -> asyncio.subprocess.Process:
        return await start_dvic(self.env, *self.options(args, token))

    async def __call__(self, *args: str, token: str | None = None, stdin: bytes | None = None,
                       limit: float = 30) -> Result:
        return await run_dvic(self.env, *self.options(args, token), stdin=stdin, limit=limit)

    def operator(self, name: str, role: str) -> str:
        """A new active account's token."""
        status, body = self.server.api("POST", "/api/v1/operators", {"name": name, "role": role})
        assert status == 201, body
        return str(body["token"])


class PtyProcess:
    """A subprocess whose stdin/stdout/stderr are a real PTY the test drives (like a user's terminal)."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int = 80, rows: int = 24) -> None:
        self.master, slave = pty.openpty()
        set_size(self.master, cols, rows)
        self.saved = termios.tcgetattr(slave)
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


class Tmux:
    """The `dvic` console in a real terminal: a private tmux server with one 100x30 session."""

    def __init__(self, socket_name: str) -> None:
        # tmux's sockets are one directory per user: the pid keeps two test runs (or xdist workers)
        # that name a session alike off each other's server.
        self.base = ["tmux", "-L", f"{socket_name}-{os.getpid()}", "-f", "/dev/null"]

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        # tmux commands return at once: a plain blocking call is fine here.
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=check, cwd=ROOT)

    def pane(self) -> str:
        return self.run("capture-pane", "-p", "-t", "dvic").stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "dvic", *keys, check=True)

    def ended(self) -> bool:
        return self.run("has-session", "-t", "dvic").returncode != 0

    @contextlib.contextmanager
    def console(self, env: dict[str, str]) -> Iterator[Tmux]:
        """Starts `dvic` (the console) in the session; the variables reach it through tmux's
        environment (-e), as `dvic-central up` passes them. The tmux server goes at the end."""
        cmd = ["new-session", "-d", "-s", "dvic", "-x", "100", "-y", "30"]
        for key in ("DVIC_SERVER", "DVIC_TOKEN", "DVIC_CA", "XDG_CONFIG_HOME", "PYTHONPATH", "TERM"):
            cmd += ["-e", f"{key}={env[key]}"]
        subprocess.run([*self.base, *cmd, *DVIC], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
        try:
            yield self
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the pane shows:\n{self.pane()}") from None
        finally:
            self.run("kill-server")

    async def until(self, condition: Callable[[str], bool], what: str, timeout: float = 10.0) -> None:
        """Waits until `condition(pane text)` holds."""
        await async_wait_for(lambda: condition(self.pane()), timeout=timeout, what=what)
