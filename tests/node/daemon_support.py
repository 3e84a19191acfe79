"""The node tests' demos (dvic_log subprocesses), interpreters and paged reads of what the server stored.

The daemon itself is started with tests/support/daemon.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support.daemon import PY38
from tests.support.server import REPO, CentralServer


def interpreters() -> list[Any]:
    """The current Python and, when installed, the oldest one the daemon supports."""
    import pytest

    return [pytest.param(sys.executable, id="py-current"),
            pytest.param(str(PY38), id="py3.8", marks=pytest.mark.skipif(not PY38.exists(),
                                                                       reason="python3.8 not installed"))]


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
    return server.logs(node=node_id, **({"source": source} if source else {}))


def events(server: CentralServer, node_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    q = {"node": node_id, "limit": "1000"}
    if kind:
        q["kind"] = kind
    status, body = server.api("GET", "/api/v1/events?" + urllib.parse.urlencode(q))
    assert status == 200, body
    return body["events"]
