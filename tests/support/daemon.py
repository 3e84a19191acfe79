"""The real node daemon (node_script/dvic_node.py) in a subprocess, for tests and benchmarks: one node,
a node enrolled on a CentralServer and online, or a fleet of them."""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from .procs import ManagedProcess, stop_all
from .server import REPO, CentralServer
from .wait import wait_for

NODE_SCRIPT = REPO / "node_script" / "dvic_node.py"
PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")  # the oldest Python the daemon supports
# Nothing of this machine's own system log or Docker: a test node reports its demos only.
NO_HOST_SOURCES = ("--system-log", "none", "--docker-socket", "none")
# Test-friendly timings: reconnect at once, notice new log lines within 50 ms, say what it does.
TEST_TIMINGS = ("--reconnect-max", "1", "--poll-interval", "0.05", "-v")

# How the daemon is started: "launcher" as its systemd unit does (`python3 -c LAUNCHER DAEMON ARGS`,
# imported, so from its bytecode), "compiled" the same after compiling that bytecode as the installer
# does, "source" as a plain script (`python3 dvic_node.py ARGS`).
How = Literal["launcher", "compiled", "source"]


class DaemonError(RuntimeError):
    """The daemon did not start, or exited; the message carries the end of its log."""


def daemon_launcher(script: Path = NODE_SCRIPT) -> str:
    """The daemon's LAUNCHER, read from the file without importing it (a test may run another copy)."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["LAUNCHER"]:
            return str(ast.literal_eval(node.value))
    raise DaemonError(f"{script} has no LAUNCHER")


def compile_daemon(python: str, script: Path = NODE_SCRIPT) -> None:
    """Compile the daemon's bytecode next to it with `python`, as the installer does."""
    code = ("import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True, "
            "invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)")
    done = subprocess.run([python, "-c", code, str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise DaemonError(f"compiling the daemon with {python} failed: {done.stderr.strip()}")


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without PYTHONPATH: the daemon has the standard library (and psutil) only."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra or {})
    return env


class DaemonProcess(ManagedProcess):
    """dvic_node.py with a bundle, a state dir and a demo log dir.

    `extra`: more daemon options; `timings`: TEST_TIMINGS, or () for the daemon's defaults (benchmarks);
    `script_args`: a wrapper script's own arguments (bench/whatif_daemon.py), which runs it as "source".
    """

    def __init__(self, bundle: Path, state_dir: Path, log_dir: Path, *, python: str | Path = sys.executable,
                 extra: Sequence[str] = (), timings: Sequence[str] = TEST_TIMINGS, env: dict[str, str] | None = None,
                 script: Path = NODE_SCRIPT, how: How = "launcher", script_args: Sequence[str] = (),
                 log_path: Path | None = None) -> None:
        self.python = str(python)
        self.script = script
        self.how: How = "source" if script_args else how
        self.script_args = tuple(script_args)
        self.state_dir = state_dir
        self.options = ["--config", str(bundle), "--state-dir", str(state_dir), "--log-dir", str(log_dir),
                        *NO_HOST_SOURCES, *timings, *extra]
        self.env = dict(env or {})
        self.log_path = log_path or state_dir.parent / f"{state_dir.name}-daemon.log"

    @property
    def args(self) -> list[str]:
        if self.how == "source":
            return [self.python, str(self.script), *self.script_args, *self.options]
        return [self.python, "-c", daemon_launcher(self.script), str(self.script), *self.options]

    def start(self, *, new_session: bool = False, cwd: Path | None = None) -> DaemonProcess:
        if self.how == "compiled":
            compile_daemon(self.python, self.script)
        self.spawn(self.args, env=daemon_env(self.env), cwd=cwd, new_session=new_session)
        return self

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        """DaemonError with the end of its log when the daemon is not running (any more)."""
        if not self.running():
            code = None if self.proc is None else self.proc.returncode
            raise DaemonError(f"the daemon exited ({code}):\n{self.log_tail(20)}")


def enrolled_daemon(server: CentralServer, home: Path, log_dir: Path | None = None, *, name: str = "",
                    group: str = "", bundle_overrides: dict[str, object] | None = None,
                    **options: Any) -> tuple[str, DaemonProcess]:
    """Enroll a node and make (not start) its daemon, its files under `home`: (node id, daemon).

    The name defaults to `home`'s (a test's tmp_path: unique in the session, so tests can share a
    server); `log_dir` (the demos' logs) to a new `home`/logs; `bundle_overrides` change the bundle.
    """
    name = name or home.name
    home.mkdir(parents=True, exist_ok=True)
    if log_dir is None:
        log_dir = home / "logs"
        log_dir.mkdir(mode=0o755, exist_ok=True)
    bundle = {**server.enroll(name, group=group), **(bundle_overrides or {})}
    path = server.write_bundle(bundle, home / f"{name}.json")
    return bundle["node_id"], DaemonProcess(path, home / f"state-{name}", log_dir, **options)


def wait_connected(server: CentralServer, node: str, daemon: DaemonProcess, timeout: float = 30.0) -> None:
    """Until the server sees the node's websocket; fails at once, with its log, if the daemon exits."""

    def connected() -> bool:
        daemon.check_alive()
        return bool(server.node(node).get("connected"))

    wait_for(connected, timeout, f"node {node} to connect", interval=0.1)


@contextlib.contextmanager
def online_daemon(server: CentralServer, home: Path, log_dir: Path | None = None,
                  **options: Any) -> Iterator[tuple[str, DaemonProcess]]:
    """An enrolled node whose real daemon is connected: yields (node id, daemon); stopped afterwards.
    Arguments as enrolled_daemon's."""
    node_id, daemon = enrolled_daemon(server, home, log_dir, **options)
    with daemon:
        wait_connected(server, node_id, daemon)
        yield node_id, daemon


class Fleet:
    """N daemons, each in its own process group; `stop()` leaves none behind (nor what they started).
    `options` as DaemonProcess's."""

    def __init__(self, python: str | Path = sys.executable, **options: Any) -> None:
        self.python = python
        self.options = options
        self.daemons: list[DaemonProcess] = []

    def start(self, bundles: Sequence[Path]) -> Fleet:
        """One daemon per bundle file, its state, demo logs and own log beside the bundle."""
        for bundle in bundles:
            home = bundle.parent
            (home / "logs").mkdir(mode=0o755, exist_ok=True)
            daemon = DaemonProcess(bundle, home / "state", home / "logs", python=self.python,
                                   log_path=home / "daemon.log", **self.options)
            self.daemons.append(daemon.start(new_session=True, cwd=home))
        return self

    def dead(self) -> list[int]:
        return [d.proc.pid for d in self.daemons if d.proc is not None and d.proc.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        stop_all([d.proc for d in self.daemons if d.proc is not None], timeout)
        for daemon in self.daemons:
            daemon.proc = None
