"""One real node for the daemon benchmarks: a dvic-central, an enrolled bundle, dvic_node.py and demos.

Everything is a real process on 127.0.0.1, started with the tests' launchers (tests/support): the
server, the daemon as systemd runs it (node_script/dvic_node.py imported by its launcher, from the
bytecode the installer compiles), and demos that log through the dvic_log library
(bench/demo_writer.py). API calls are plain blocking urllib calls; async callers run them in a
thread so a live stream subscriber is never held up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.support.daemon import NODE_SCRIPT, DaemonError, DaemonProcess
from tests.support.server import REPO, CentralServer, ServerError
from tests.support.wait import WaitTimeout, wait_for

from .common import bench_server

DEMO_WRITER = Path(__file__).resolve().parent / "demo_writer.py"
WHATIF_DAEMON = Path(__file__).resolve().parent / "whatif_daemon.py"


class RigError(RuntimeError):
    """A part of the rig did not come up or misbehaved; the message says which and why."""


# What ends a benchmark run as failed (exit 1, the reason on stderr) rather than with a traceback.
RIG_FAILURES = (RigError, DaemonError, ServerError, WaitTimeout)


def enroll(server: CentralServer, name: str, bundle_path: Path) -> dict[str, Any]:
    """Enroll one node through POST /api/v1/nodes and write its bundle (0600) for the daemon."""
    bundle = server.enroll(name, group="bench")
    server.write_bundle(bundle, bundle_path)
    return bundle


def node_detail(server: CentralServer, node_id: str) -> dict[str, Any]:
    return server.node(node_id)


def demo_lines(server: CentralServer, node_id: str, max_pages: int = 10_000) -> list[dict[str, Any]]:
    """Every stored demo line of the node, through GET /api/v1/logs (all pages, bounded)."""
    return server.logs(max_pages, node=node_id, source="demo")


def metric_samples(server: CentralServer, node_id: str, since: float, until: float) -> int:
    """How many raw cpu samples the server stored for the node between two unix times."""
    query = urllib.parse.urlencode({"from": f"{since:.3f}", "to": f"{until:.3f}", "step": "1", "names": "cpu"})
    status, body = server.api("GET", f"/api/v1/nodes/{node_id}/metrics?{query}")
    if status != 200:
        raise RigError(f"GET metrics: HTTP {status} {body}")
    return len(body.get("series", {}).get("cpu", []))


@dataclass
class LineCheck:
    """What the server stored against what the demos wrote, line by line."""
    written: int
    stored: int
    missing: int
    duplicates: int
    foreign: int  # demo lines that no writer of this run wrote

    @property
    def ok(self) -> bool:
        return self.stored == self.written and self.missing == 0 and self.duplicates == 0 and self.foreign == 0


def check_lines(stored: list[dict[str, Any]], written: dict[str, int]) -> LineCheck:
    """Match stored lines to the writers' `bench NAME INDEX ...` messages (written: name -> count)."""
    seen: dict[str, set[int]] = {name: set() for name in written}
    duplicates = foreign = 0
    for line in stored:
        parts = line.get("msg", "").split(" ", 3)
        if len(parts) < 3 or parts[0] != "bench" or parts[1] not in seen or not parts[2].isdigit():
            foreign += 1
            continue
        index = int(parts[2])
        if index in seen[parts[1]]:
            duplicates += 1
        seen[parts[1]].add(index)
    missing = sum(len(set(range(count)) - seen[name]) for name, count in written.items())
    return LineCheck(sum(written.values()), len(stored), missing, duplicates, foreign)


@dataclass
class Demo:
    name: str
    proc: subprocess.Popen[str]
    token: str = ""
    done: dict[str, Any] = field(default_factory=dict)

    def _stdin(self) -> IO[str]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def _read_event(self, event: str, timeout: float) -> dict[str, Any]:
        # The writer prints one JSON line per step; a bounded wait guards against a stuck child.
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RigError(f"demo {self.name} exited ({self.proc.wait()}) before '{event}'")
            doc = json.loads(line)
            if doc.get("event") == event:
                return doc
        raise RigError(f"demo {self.name}: no '{event}' within {timeout:.0f} s")

    def go(self) -> None:
        self._stdin().write("go\n")
        self._stdin().flush()

    def wait_done(self, timeout: float) -> dict[str, Any]:
        self.done = self._read_event("done", timeout)
        return self.done

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self._stdin().close()  # EOF: the writer closes its log and exits
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def start_demos(log_dir: Path, names: list[str], *, count: int = 0, rate: float = 100.0,
                stamp: bool = False, timeout: float = 30.0) -> list[Demo]:
    """Start one writer process per name; returns once each has created its dvic_log file."""
    env = dict(os.environ, DVIC_LOG_DIR=str(log_dir), PYTHONPATH=str(REPO / "lib" / "python"))
    args = ["--count", str(count), "--rate", str(rate)] + (["--stamp"] if stamp else [])
    demos = [Demo(name, subprocess.Popen([sys.executable, str(DEMO_WRITER), "--name", name, *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
             for name in names]
    try:
        for demo in demos:
            demo.token = demo._read_event("ready", timeout)["token"]
    except BaseException:
        stop_demos(demos)
        raise
    return demos


def stop_demos(demos: list[Demo]) -> None:
    for demo in demos:
        demo.stop()


class NodeRig:
    """Server + one enrolled node + its daemon, under `work`; `close()` stops them all.

    The daemon runs as installed (launcher, checked-hash bytecode) unless `from_source`, with its own
    timings unless `poll_interval` is given; `coalesce`: the what-if daemon with another COALESCE_S.
    """

    def __init__(self, work: Path, *, interval: float = 5.0, python: str = sys.executable,
                 poll_interval: float | None = None, no_psutil: bool = False, script: Path = NODE_SCRIPT,
                 coalesce: float | None = None, from_source: bool = False) -> None:
        self.work = work
        self.script = script
        self.script_args: tuple[str, ...] = ()
        if coalesce is not None:  # what-if: the unchanged daemon with another COALESCE_S
            self.script, self.script_args = WHATIF_DAEMON, ("--coalesce", f"{coalesce:g}", "--")
        self.log_dir = work / "demo-logs"
        self.log_dir.mkdir(mode=0o755)
        self.server = bench_server(work / "central", interval=interval)
        self.python = python
        self.options = [*(("--poll-interval", str(poll_interval)) if poll_interval is not None else ()),
                        *(("--no-psutil",) if no_psutil else ())]
        self.from_source = from_source
        self.env: dict[str, str] = {}  # added to the daemon's environment
        self.daemon: DaemonProcess | None = None
        self.node_id = ""

    def start_server(self) -> None:
        self.server.start()
        bundle = enroll(self.server, "bench-node", self.work / "bundle.json")
        self.node_id = bundle["node_id"]

    def start_daemon(self, timeout: float = 60.0) -> DaemonProcess:
        state = self.work / "node-state"
        self.daemon = DaemonProcess(self.work / "bundle.json", state, self.log_dir, python=self.python,
                                    timings=(), extra=self.options, env=self.env, script=self.script,
                                    script_args=self.script_args,
                                    how="source" if self.from_source else "compiled",
                                    log_path=self.work / "daemon.log").start(cwd=REPO)

        def connected() -> bool:
            assert self.daemon is not None
            self.daemon.check_alive()
            return bool(node_detail(self.server, self.node_id).get("connected"))

        wait_for(connected, timeout, "the daemon to connect", interval=0.2)
        return self.daemon

    def wait_demos_alive(self, count: int, timeout: float = 30.0) -> None:
        def alive() -> bool:
            assert self.daemon is not None
            self.daemon.check_alive()
            demos = node_detail(self.server, self.node_id).get("demos", {})
            return int(demos.get("alive", 0)) >= count

        wait_for(alive, timeout, f"{count} demos reported alive", interval=0.2)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.server.stop()
