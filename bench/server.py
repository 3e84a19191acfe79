"""A real dvic-central started as a subprocess on 127.0.0.1 with a fresh data dir, for benchmarks."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """The server did not start, or died; the message carries the end of its log."""


class BenchServer:
    def __init__(self, data_dir: Path, *, extra_args: tuple[str, ...] = (), ssl_read_buffer: int = 0) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        # What-if (bench/whatif_server.py): another asyncio TLS read buffer size. Without it the
        # server runs as shipped.
        self.ssl_read_buffer = ssl_read_buffer
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError("the server is not running")
        return self.proc.pid

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "dvic.sqlite3"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def start(self, timeout: float = 60.0) -> BenchServer:
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ServerError(f"data dir {self.data_dir} exists and is not a directory")
        listen_file = self.data_dir / "listen.json"
        listen_file.unlink(missing_ok=True)
        whatif = bool(self.ssl_read_buffer)
        module = "bench.whatif_server" if whatif else "central.cli"
        cmd = [sys.executable, "-m", module, "--data-dir", str(self.data_dir), "serve",
               "--listen", "127.0.0.1:0", *self.extra_args]
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "DVIC_BENCH_SSL_READ_BUFFER": str(self.ssl_read_buffer)}
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (listen_file.exists() and listen_file.stat().st_size > 0):
            if self.proc.poll() is not None:
                raise ServerError(f"dvic-central exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"dvic-central did not listen within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.url = json.loads(listen_file.read_text())["url"]
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (the writer commits what it holds); SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
