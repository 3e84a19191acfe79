"""Running the real daemon (a subprocess) and real demos (dvic_log subprocesses) in tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import dvic_node

from tests.support.server import CentralServer

REPO = Path(__file__).resolve().parents[2]
NODE_SCRIPT = REPO / "node_script" / "dvic_node.py"
PY38 = "/root/.pyenv/versions/3.8.18/bin/python3.8"
DAEMON_LAUNCHER = dvic_node.LAUNCHER  # the unit's `python3 -c LAUNCHER DAEMON ARGS`


def interpreters() -> list[Any]:
    """The current Python and, when installed, the oldest one the daemon supports."""
    import pytest

    return [pytest.param(sys.executable, id="py-current"),
            pytest.param(PY38, id="py3.8", marks=pytest.mark.skipif(not os.path.exists(PY38),
                                                                  reason="python3.8 not installed"))]


class DaemonProcess:
    """dvic_node.py as systemd runs it (imported by the unit's launcher, so from its bytecode), with
    test-friendly timings. `script` is the daemon file; `env` is added to the environment."""

    def __init__(self, python: str, bundle_path: Path, state_dir: Path, log_dir: Path,
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.python = python
        self.script = NODE_SCRIPT
        self.options = ["--config", str(bundle_path), "--state-dir", str(state_dir), "--log-dir", str(log_dir),
                        "--system-log", "none", "--docker-socket", "none", "--reconnect-max", "1",
                        "--poll-interval", "0.05", "-v", *extra]
        self.env = env or {}
        self.log_path = state_dir.parent / f"{state_dir.name}-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def args(self) -> list[str]:
        return [self.python, "-c", DAEMON_LAUNCHER, str(self.script), *self.options]

    def start(self) -> DaemonProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the stdlib (+psutil)
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
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


DEMO_CODE = """
import sys, time
import dvic_log
log = dvic_log.open_log(sys.argv[1])
count, pause = int(sys.argv[2]), float(sys.argv[3])
for i in range(count):
    log.info("line %06d of %s" % (i, sys.argv[1]))
    if pause:
        time.sleep(pause)  # pacing the demo's output, not synchronising the test
print("written", log.token, flush=True)
sys.stdin.readline()
"""


class Demo:
    """A demo process that logs `count` lines through the dvic_log library, then waits for stdin."""

    def __init__(self, log_dir: Path, name: str, count: int, pause: float = 0.0, max_bytes: int = 0) -> None:
        env = dict(os.environ, DVIC_LOG_DIR=str(log_dir), PYTHONPATH=str(REPO / "lib" / "python"))
        if max_bytes:
            env["DVIC_LOG_MAX_BYTES"] = str(max_bytes)
        self.name = name
        self.count = count
        self.proc = subprocess.Popen([sys.executable, "-c", DEMO_CODE, name, str(count), str(pause)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.token = ""

    def wait_written(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()  # the demo prints once, after its last line
        assert line.startswith("written"), line
        self.token = line.split()[1]
        return self.token

    def expected(self) -> list[str]:
        return [f"line {i:06d} of {self.name}" for i in range(self.count)]

    def finish(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"exit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def all_logs(server: CentralServer, node_id: str, source: str | None = None) -> list[dict[str, Any]]:
    """Every stored log line of a node (all pages), oldest first."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):  # bounded paging
        q = {"node": node_id, "limit": "1000"}
        if source:
            q["source"] = source
        if cursor:
            q["cursor"] = cursor
        status, body = server.api("GET", "/api/v1/logs?" + urllib.parse.urlencode(q))
        assert status == 200, body
        out.extend(body["lines"])
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return sorted(out, key=lambda ln: ln["seq"])


def events(server: CentralServer, node_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    q = {"node": node_id, "limit": "1000"}
    if kind:
        q["kind"] = kind
    status, body = server.api("GET", "/api/v1/events?" + urllib.parse.urlencode(q))
    assert status == 200, body
    return body["events"]


def write_bundle(path: Path, bundle: dict[str, Any]) -> Path:
    path.write_text(json.dumps(bundle))
    path.chmod(0o600)
    return path
