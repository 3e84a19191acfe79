"""`dvic-central up`: the quick-start stack on one machine (server, this machine's daemon, console).

Everything lives in one data dir, so running it again brings back the same fleet: the server's
database and CA, this machine's enrollment bundle, the daemon's state and both processes' logs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import node_script
from tui.api import calls

from .local import LISTEN_FILE, admin_call, running_server

DAEMON = node_script.DAEMON
# The directory holding this package (a checkout or site-packages): `python -m central.cli` run
# from there starts the same code as this process, installed or not.
CODE_ROOT = Path(__file__).resolve().parents[1]
LOCAL_BUNDLE = "local-node.json"


def _node_name() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63].strip("-.") or "this-machine"
    return name if name[0].isalnum() else f"n{name}"


def _wait_listening(data_dir: Path, proc: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise SystemExit(f"the central server exited ({proc.returncode}):\n{tail}")
        info = running_server(data_dir)
        if info is not None and info.get("pid") == proc.pid:
            return info
        time.sleep(0.1)
    raise SystemExit(f"the central server did not start within 30 s; see {log_path}")


def _stop(proc: subprocess.Popen[bytes] | None, what: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        print(f"{what} did not stop in 10 s: killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def _write_bundle(path: Path, bundle: dict[str, Any]) -> None:
    from .pki import write_private

    write_private(path, (json.dumps(bundle, indent=2) + "\n").encode())


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _pointed_at(bundle: dict[str, Any], url: str) -> dict[str, Any]:
    """The bundle with the node dialing `url` (a balancer in front of replicas): same identity."""
    base = url.rstrip("/")
    ws = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return {**bundle, "server_url": base, "ws_url": ws + "/api/v1/node/ws"}


def _dials(bundle: dict[str, Any], url: str) -> bool:
    return bool(bundle.get("server_url") == url.rstrip("/") and str(bundle.get("ws_url", "")).startswith(
        url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)))


def run_local_stack(data_dir: Path, listen: tuple[str, int], console: bool = True, server_url: str = "") -> int:
    """`server_url`: start no server, use the one (or the balancer in front of replicas) at that
    URL with the data dir's admin token and CA, and point this machine's daemon at it."""
    # A closed terminal (SIGHUP) or a kill (SIGTERM) must still stop what we started: the
    # children run in their own sessions, so nothing else would.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    # The children run elsewhere (CODE_ROOT): a relative --data-dir must name the same directory.
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server_proc: subprocess.Popen[bytes] | None = None
    daemon_proc: subprocess.Popen[bytes] | None = None
    try:
        running = None if server_url else running_server(data_dir)
        info: dict[str, Any]
        if server_url:
            info = {"url": server_url.rstrip("/")}
            print(f"using the central server at {server_url} (no server started here)", flush=True)
            admin_call(data_dir, info, calls.nodes())  # reachable, and this data dir's token and CA fit
        elif running is None:
            (data_dir / LISTEN_FILE).unlink(missing_ok=True)
            log_path = data_dir / "server.log"
            host, port = listen
            with open(log_path, "ab") as log:
                server_proc = subprocess.Popen(
                    [sys.executable, "-m", "central.cli", "--data-dir", str(data_dir), "serve",
                     "--listen", f"{host}:{port}"],
                    cwd=CODE_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            print(f"starting the central server (log: {log_path}) ...", flush=True)
            info = _wait_listening(data_dir, server_proc, log_path)
        else:
            info = running
            print(f"using the central server already running on {info['url']}", flush=True)
        url = info["url"]

        bundle_path = data_dir / LOCAL_BUNDLE
        if bundle_path.exists():
            bundle = json.loads(bundle_path.read_text())
            if server_url and not _dials(bundle, server_url):
                bundle = _pointed_at(bundle, server_url)
                _write_bundle(bundle_path, bundle)
                print(f"this machine's node now dials {server_url} ({bundle_path})", flush=True)
            elif not bundle["ws_url"].startswith(url.replace("https://", "wss://").replace("http://", "ws://")):
                print(f"note: {bundle_path} points at {bundle['server_url']}, the server is on {url}",
                      file=sys.stderr)
        else:
            name = _node_name()
            existing = admin_call(data_dir, info, calls.nodes())
            taken = {n["name"] for n in existing}
            base, n = name, 2
            while name in taken:
                name, n = f"{base}-{n}", n + 1
            bundle = admin_call(data_dir, info, calls.enroll(name, "desktop", "local"))
            if server_url:  # the replicas' --public-url may name one of them: this machine dials what it was told
                bundle = _pointed_at(bundle, server_url)
            _write_bundle(bundle_path, bundle)
            print(f"enrolled this machine as node {name!r}", flush=True)

        if DAEMON.exists():
            node_log = data_dir / "node.log"
            with open(node_log, "ab") as log:
                daemon_proc = subprocess.Popen(
                    [sys.executable, str(DAEMON), "--config", str(bundle_path), "--state-dir",
                     str(data_dir / "node-state")],
                    cwd=CODE_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            print(f"started this machine's node daemon (log: {node_log})", flush=True)
        else:
            print(f"warning: {DAEMON} not found; no node daemon started", file=sys.stderr)

        token = (data_dir / "admin.token").read_text().strip()
        env = {**os.environ, "DVIC_SERVER": url, "DVIC_TOKEN": token, "DVIC_CA": str(data_dir / "ca.pem")}
        if not console:
            print(f"running: server {url}, admin token in {data_dir / 'admin.token'}. Ctrl-C stops.", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        dvic = shutil.which("dvic") or str(Path(sys.executable).with_name("dvic"))
        try:
            return subprocess.call([dvic], env=env)
        except KeyboardInterrupt:
            return 130
    finally:
        _stop(daemon_proc, "the node daemon")
        _stop(server_proc, "the central server")
