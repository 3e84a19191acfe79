"""One real node for the daemon benchmarks: a dvic-central, an enrolled bundle, dvic_node.py and demos.

Everything is a real process on 127.0.0.1: the server (bench/server.py), the daemon as systemd
runs it (node_script/dvic_node.py imported by its launcher, from the bytecode the installer
compiles), and demos that log through the dvic_log library
(bench/demo_writer.py). API calls are plain blocking urllib calls; async callers run them in a
thread so a live stream subscriber is never held up.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from .server import BenchServer

REPO = Path(__file__).resolve().parents[1]
NODE_SCRIPT = REPO / "node_script" / "dvic_node.py"
DEMO_WRITER = Path(__file__).resolve().parent / "demo_writer.py"
WHATIF_DAEMON = Path(__file__).resolve().parent / "whatif_daemon.py"
T = TypeVar("T")


class RigError(RuntimeError):
    """A part of the rig did not come up or misbehaved; the message says which and why."""


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `condition` until it is truthy; RigError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RigError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def api(server: BenchServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One call to the server's API with the admin token: (HTTP status, decoded JSON body)."""
    req = urllib.request.Request(
        server.url + path, method=method,
        headers={"Authorization": f"Bearer {server.admin_token}", "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, context=server.ssl_context(), timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def daemon_launcher(script: Path = NODE_SCRIPT) -> str:
    """The daemon's LAUNCHER (`python3 -c LAUNCHER DAEMON ARGS`, as its systemd unit starts it), read from
    the file without importing it."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["LAUNCHER"]:
            return str(ast.literal_eval(node.value))
    raise RigError(f"{script} has no LAUNCHER")


def compile_daemon(python: str, script: Path = NODE_SCRIPT) -> None:
    """Compile the daemon's bytecode next to it with `python`, as the installer does."""
    code = ("import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True, "
            "invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)")
    done = subprocess.run([python, "-c", code, str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RigError(f"compiling the daemon with {python} failed: {done.stderr.strip()}")


def enroll(server: BenchServer, name: str, bundle_path: Path) -> dict[str, Any]:
    """Enroll one node through POST /api/v1/nodes and write its bundle (0600) for the daemon."""
    status, bundle = api(server, "POST", "/api/v1/nodes", {"name": name, "kind": "desktop", "group": "bench"})
    if status != 201:
        raise RigError(f"enrolling {name}: HTTP {status} {bundle}")
    fd = os.open(bundle_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the node's key
    with os.fdopen(fd, "w") as fh:
        json.dump(bundle, fh)
    return bundle


def node_detail(server: BenchServer, node_id: str) -> dict[str, Any]:
    status, body = api(server, "GET", f"/api/v1/nodes/{node_id}")
    if status != 200:
        raise RigError(f"GET /api/v1/nodes/{node_id}: HTTP {status} {body}")
    return body


def demo_lines(server: BenchServer, node_id: str, max_pages: int = 10_000) -> list[dict[str, Any]]:
    """Every stored demo line of the node, through GET /api/v1/logs (all pages, bounded)."""
    lines: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(max_pages):
        query = {"node": node_id, "source": "demo", "limit": "1000"}
        if cursor:
            query["cursor"] = cursor
        status, body = api(server, "GET", "/api/v1/logs?" + urllib.parse.urlencode(query))
        if status != 200:
            raise RigError(f"GET /api/v1/logs: HTTP {status} {body}")
        lines.extend(body["lines"])
        cursor = body.get("next_cursor") or ""
        if not cursor:
            return lines
    raise RigError(f"more than {max_pages} pages of logs: stopped counting")


def metric_samples(server: BenchServer, node_id: str, since: float, until: float) -> int:
    """How many raw cpu samples the server stored for the node between two unix times."""
    query = urllib.parse.urlencode({"from": f"{since:.3f}", "to": f"{until:.3f}", "step": "1", "names": "cpu"})
    status, body = api(server, "GET", f"/api/v1/nodes/{node_id}/metrics?{query}")
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


class DaemonRun:
    """node_script/dvic_node.py as a subprocess, as systemd runs it (default timings unless given).

    `from_source`: run as a script (`python3 dvic_node.py`), compiled at start, as before the launcher;
    `script_args`: a wrapper script's own arguments (then it is run as a script).
    """

    def __init__(self, python: str, bundle: Path, state_dir: Path, log_dir: Path, *,
                 poll_interval: float | None = None, no_psutil: bool = False, script: Path = NODE_SCRIPT,
                 script_args: tuple[str, ...] = (), from_source: bool = False) -> None:
        if from_source or script_args:
            start = [python, str(script), *script_args]
        else:
            compile_daemon(python, script)
            start = [python, "-c", daemon_launcher(script), str(script)]
        self.args = [*start, "--config", str(bundle), "--state-dir", str(state_dir),
                     "--log-dir", str(log_dir), "--system-log", "none", "--docker-socket", "none"]
        if poll_interval is not None:
            self.args += ["--poll-interval", str(poll_interval)]
        if no_psutil:
            self.args.append("--no-psutil")
        self.log_path = state_dir.parent / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RigError("the daemon is not running")
        return self.proc.pid

    def start(self, extra_env: dict[str, str] | None = None) -> DaemonRun:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # standard library (+ psutil) only
        env.update(extra_env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RigError(f"the daemon exited ({code}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

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
    """Server + one enrolled node + its daemon, under `work`; `close()` stops them all."""

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
        self.server = BenchServer(work / "central", extra_args=("--interval", f"{interval:g}"))
        self.python = python
        self.poll_interval = poll_interval
        self.no_psutil = no_psutil
        self.from_source = from_source
        self.env: dict[str, str] = {}  # added to the daemon's environment
        self.daemon: DaemonRun | None = None
        self.node_id = ""

    def start_server(self) -> None:
        self.server.start()
        bundle = enroll(self.server, "bench-node", self.work / "bundle.json")
        self.node_id = bundle["node_id"]

    def start_daemon(self, timeout: float = 60.0) -> DaemonRun:
        state = self.work / "node-state"
        self.daemon = DaemonRun(self.python, self.work / "bundle.json", state, self.log_dir,
                                poll_interval=self.poll_interval, no_psutil=self.no_psutil,
                                script=self.script, script_args=self.script_args,
                                from_source=self.from_source).start(self.env)

        def connected() -> bool:
            assert self.daemon is not None
            self.daemon.check_alive()
            return bool(node_detail(self.server, self.node_id).get("connected"))

        wait_until(connected, timeout, "the daemon to connect", interval=0.2)
        return self.daemon

    def wait_demos_alive(self, count: int, timeout: float = 30.0) -> None:
        def alive() -> bool:
            assert self.daemon is not None
            self.daemon.check_alive()
            demos = node_detail(self.server, self.node_id).get("demos", {})
            return int(demos.get("alive", 0)) >= count

        wait_until(alive, timeout, f"{count} demos reported alive", interval=0.2)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.server.stop()
