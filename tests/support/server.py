"""A real dvic-central in a subprocess, for tests: started on 127.0.0.1 port 0 with a temp data dir."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .wait import wait_for

REPO = Path(__file__).resolve().parents[2]


class CentralServer:
    def __init__(self, data_dir: Path, *, interval: float = 5.0, offline_after: float = 15.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.interval = interval
        self.offline_after = offline_after
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self._listen = ("127.0.0.1", 0)

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def start(self) -> CentralServer:
        listen_file = self.data_dir / "listen.json"
        listen_file.unlink(missing_ok=True)
        host, port = self._listen
        cmd = [
            sys.executable, "-m", "central.cli", "--data-dir", str(self.data_dir), "serve",
            "--listen", f"{host}:{port}", "--interval", str(self.interval),
            "--offline-after", str(self.offline_after), *self.extra_args,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dvic-central exited with {self.proc.returncode}:\n{self.log()}")
            return listen_file.exists() and listen_file.stat().st_size > 0

        wait_for(listening, timeout=30, what="dvic-central to listen")
        self.url = json.loads(listen_file.read_text())["url"]
        # Restarts come back on the same port, as a real server would.
        self._listen = ("127.0.0.1", int(self.url.rsplit(":", 1)[1]))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def api(self, method: str, path: str, json_body: Any = None, token: str | None = None,
            *, json: Any = None) -> tuple[int, Any]:
        """One API call (sync, urllib): returns (status, decoded JSON body or None)."""
        body = json if json is not None else json_body
        headers = {"Content-Type": "application/json"}
        tok = self.admin_token if token is None else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        req = urllib.request.Request(
            self.url + path, method=method, headers=headers,
            data=None if body is None else _dumps(body).encode(),
        )
        try:
            with urllib.request.urlopen(req, context=self.ssl_context, timeout=30) as resp:
                raw = resp.read()
                return resp.status, _loads(raw)
        except urllib.error.HTTPError as exc:
            return exc.code, _loads(exc.read())

    def enroll(self, name: str, kind: str = "desktop", group: str = "") -> dict[str, Any]:
        status, bundle = self.api("POST", "/api/v1/nodes", {"name": name, "kind": kind, "group": group})
        if status != 201:
            raise RuntimeError(f"enroll {name}: HTTP {status} {bundle}")
        return bundle

    def write_bundle(self, bundle: dict[str, Any], path: Path) -> Path:
        path.write_text(_dumps(bundle))
        path.chmod(0o600)
        return path

    def node(self, ref: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/v1/nodes/{ref}")
        if status != 200:
            raise RuntimeError(f"node {ref}: HTTP {status} {body}")
        return body


def _dumps(value: Any) -> str:
    import json as _json

    return _json.dumps(value)


def _loads(raw: bytes) -> Any:
    import json as _json

    try:
        return _json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")
