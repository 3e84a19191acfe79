"""Load-generator child processes, driven over stdin/stdout with one JSON object per line.

The parent starts a worker, waits for its `ready` line, writes `go`, then reads its `result`.
A worker stops by itself at its own deadline, and when its stdin closes (the parent died).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from tests.support.server import REPO


class WorkerError(RuntimeError):
    pass


class Worker:
    def __init__(self, name: str, module: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with _open_log(self.log_path) as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, *self.args, cwd=REPO, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=64 * 1024 * 1024,
            )

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next message of kind `event` (others are skipped); WorkerError on exit or timeout."""
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(10_000):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                break
            if not raw:
                await self.proc.wait()
                raise WorkerError(f"{self.name} exited with {self.proc.returncode} before '{event}':\n"
                                  f"{self.log_tail()}")
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("event") == event:
                return message
        raise WorkerError(f"{self.name}: no '{event}' within {timeout:.0f} s:\n{self.log_tail()}")

    async def send(self, event: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"event": event}) + "\n").encode())
        await self.proc.stdin.drain()

    async def finish(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _open_log(path: Path) -> BinaryIO:
    return open(path, "ab")  # noqa: SIM115 - closed by the caller's `with`


# -- the worker's side ------------------------------------------------------------------------------

def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def wait_for_go(timeout: float) -> bool:
    """True on `go` from the parent; False when stdin closes or `timeout` passes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        raw = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        return False
    try:
        return bool(raw) and json.loads(raw).get("event") == "go"
    except ValueError:
        return False
