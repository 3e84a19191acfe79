"""A real dvic-central in a subprocess, for tests and benchmarks: 127.0.0.1 port 0, its own data dir.

The benchmarks (bench/) start theirs with this class too: `module` runs a what-if variant of the
server (bench/whatif_server.py) and `env` passes its settings.
"""

from __future__ import annotations

import json
import os
import sqlite3
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from . import postgres
from .procs import ManagedProcess
from .wait import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]


class ServerError(RuntimeError):
    """The server did not start, or died; the message carries the end of its log."""


class CentralServer(ManagedProcess):
    """`interval`/`offline_after` (seconds) are passed to `serve` when given; else the server's defaults.

    `database`: the server's --database URL. None: the SQLite file in the data dir, or, when
    DVIC_TEST_DATABASE=postgresql, a fresh database on this process's throw-away PostgreSQL
    cluster (tests/support/postgres.py), kept across restarts of this server.
    `name`: several servers sharing one data dir (replicas, tests/support/replicas.py) each keep
    their own log file, named after it."""

    def __init__(self, data_dir: Path, *, interval: float | None = None, offline_after: float | None = None,
                 extra_args: tuple[str, ...] = (), module: str = "central.cli",
                 env: dict[str, str] | None = None, api_timeout: float = 30.0, database: str | None = None,
                 name: str = "") -> None:
        self.data_dir = data_dir
        if database is None and postgres.wanted():
            database = postgres.shared_cluster().fresh_database()
        self.database = database
        self.interval = interval
        self.offline_after = offline_after
        self.extra_args = extra_args
        self.module = module
        self.env = env or {}
        self.api_timeout = api_timeout
        self.url = ""
        self.name = name
        self.log_path = data_dir.parent / f"{data_dir.name}{'-' + name if name else ''}-server.log"
        self._listen = ("127.0.0.1", 0)

    @classmethod
    def running_in(cls, data_dir: Path) -> CentralServer:
        """The server another process started (`dvic-central up`) with this data dir: for its API."""
        server = cls(data_dir)
        server.url = json.loads((data_dir / "listen.json").read_text())["url"]
        return server

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "dvic.sqlite3"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only statement (`?` placeholders) on this server's database, whichever
        engine it is: for tests that check what was stored."""
        if not self.database:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
            try:
                return [tuple(row) for row in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        return postgres.query(self.database, sql, params)

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def command(self) -> list[str]:
        host, port = self._listen
        timings = [*(("--interval", f"{self.interval:g}") if self.interval is not None else ()),
                   *(("--offline-after", f"{self.offline_after:g}") if self.offline_after is not None else ())]
        database = ("--database", self.database) if self.database else ()
        return [sys.executable, "-m", self.module, "--data-dir", str(self.data_dir), "serve",
                "--listen", f"{host}:{port}", *database, *timings, *self.extra_args]

    @property
    def listen_file(self) -> Path:
        """Where this server says where it listens: listen.json, or listen-NAME.json for a
        replica named with --replica (listen.json then names the replica that started last)."""
        args = list(self.extra_args)
        replica = args[args.index("--replica") + 1] if "--replica" in args else ""
        return self.data_dir / (f"listen-{replica}.json" if replica else "listen.json")

    def start(self, timeout: float = 60.0) -> CentralServer:
        self.launch()
        return self.wait_listening(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to listen (wait_listening): several servers
        can start at once."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ServerError(f"data dir {self.data_dir} exists and is not a directory")
        self.listen_file.unlink(missing_ok=True)
        env = {**os.environ, **self.env,
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.spawn(self.command(), env=env, cwd=REPO)

    def wait_listening(self, timeout: float = 60.0) -> CentralServer:
        proc, listen_file = self.proc, self.listen_file
        assert proc is not None, "launch() first"

        def listening() -> bool:
            if proc.poll() is not None:
                raise ServerError(f"dvic-central exited with {proc.returncode}:\n{self.log_tail()}")
            return listen_file.exists() and listen_file.stat().st_size > 0

        try:
            wait_for(listening, timeout, "dvic-central to listen")
        except WaitTimeout:
            self.kill()
            raise ServerError(f"dvic-central did not listen within {timeout:g} s:\n{self.log_tail()}") from None
        self.url = json.loads(listen_file.read_text())["url"]
        # Restarts come back on the same port, as a real server would.
        self._listen = ("127.0.0.1", int(self.url.rsplit(":", 1)[1]))
        return self

    def __enter__(self) -> CentralServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def api(self, method: str, path: str, json_body: Any = None, token: str | None = None,
            *, json: Any = None) -> tuple[int, Any]:
        """One API call (sync, urllib): returns (status, decoded JSON body or None)."""
        body = json if json is not None else json_body
        headers = {"Content-Type": "application/json"}
        tok = self.admin_token if token is None else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=None if body is None else _dumps(body).encode())
        try:
            with urllib.request.urlopen(req, context=self.ssl_context, timeout=self.api_timeout) as resp:
                return resp.status, _loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _loads(exc.read())

    def enroll(self, name: str, kind: str = "desktop", group: str = "") -> dict[str, Any]:
        status, bundle = self.api("POST", "/api/v1/nodes", {"name": name, "kind": kind, "group": group})
        if status != 201:
            raise ServerError(f"enroll {name}: HTTP {status} {bundle}")
        return dict(bundle)

    def write_bundle(self, bundle: dict[str, Any], path: Path) -> Path:
        return write_bundle(bundle, path)

    def demo(self, node: str, token: str) -> dict[str, Any] | None:
        """A node's demo (by its log token) as the server shows it; None while it does not."""
        return next((d for d in self.node(node).get("demos_list") or [] if d.get("token") == token), None)

    def logs(self, max_pages: int = 1000, **query: str) -> list[dict[str, Any]]:
        """Every stored log line matching `query` (GET /api/v1/logs, every page), oldest first."""
        lines: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(max_pages):  # bounded paging
            page = {"limit": "1000", **query, **({"cursor": cursor} if cursor else {})}
            status, body = self.api("GET", "/api/v1/logs?" + urllib.parse.urlencode(page))
            if status != 200:
                raise ServerError(f"GET /api/v1/logs: HTTP {status} {body}")
            lines.extend(body["lines"])
            cursor = body.get("next_cursor") or ""
            if not cursor:
                return sorted(lines, key=lambda line: line["seq"])
        raise ServerError(f"more than {max_pages} pages of logs for {query}")

    def node(self, ref: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/v1/nodes/{ref}")
        if status != 200:
            raise ServerError(f"node {ref}: HTTP {status} {body}")
        return dict(body)


def write_bundle(bundle: dict[str, Any], path: Path) -> Path:
    """A bundle as a daemon reads it: a 0600 file (it holds the node's key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # also when the file was there before
        fh.write(_dumps(bundle))
    return path


def _dumps(value: Any) -> str:
    return json.dumps(value)


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")
