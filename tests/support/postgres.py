"""A throw-away PostgreSQL cluster for the tests and benchmarks: `initdb` into a temp dir, `pg_ctl
start` on 127.0.0.1 at a free port (its unix socket in the same temp dir), stopped and removed at
the end. The distribution's server binaries are enough (`apt-get install postgresql`; the system
service is neither needed nor touched).

initdb and postgres refuse to run as root: when the tests run as root (CI), the cluster runs as the
`postgres` system user the Debian package creates (else `nobody`), which owns the temp dir.

One cluster per process (`shared_cluster`, stopped at exit); each test gets a fresh database
(`fresh_database`), copied from a template that is migrated once: CREATE DATABASE ... TEMPLATE is
much faster than running every migration again.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from .wait import wait_for

T = TypeVar("T")

SUPERUSER = "dvic"
# The environment switch of the API / end-to-end tests: `postgresql` runs their servers on the
# shared cluster (tests/support/server.py); unset or `sqlite`, on today's SQLite file.
TEST_DATABASE_ENV = "DVIC_TEST_DATABASE"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (the message says how to get them)."""


def bindir() -> Path:
    """Where initdb, pg_ctl and psql are: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        if (found / "initdb").exists():
            return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb): apt-get install postgresql")
    return Path(candidates[-1]).parent


def wanted() -> bool:
    """True when the API / end-to-end tests are asked to run on PostgreSQL (DVIC_TEST_DATABASE)."""
    return os.environ.get(TEST_DATABASE_ENV, "sqlite").lower() in ("postgresql", "postgres", "pg")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the cluster as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists for initdb")


@dataclass
class Cluster:
    """A running throw-away cluster; `url(name)` for a database in it."""

    root: Path
    port: int
    bin: Path
    user: pwd.struct_passwd | None
    template: str | None = None
    options: tuple[str, ...] = ()
    watchdog: subprocess.Popen[bytes] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              env={**os.environ, "LC_ALL": "C.UTF-8"}, check=False, **kwargs)  # type: ignore[call-overload]
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                               + self.log_tail())
        return proc  # type: ignore[no-any-return]

    def log_tail(self) -> str:
        try:
            return "\n-- server log --\n" + self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql (synchronous: usable from sync and async tests alike)."""
        return self._run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database,
                          "-c", statement]).stdout

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def fresh_database(self) -> str:
        """A new database with the server's current schema (a copy of a template migrated once)."""
        with self._lock:  # one copy at a time: a template may have no other user while it is copied
            if self.template is None:
                name = f"dvic_template_{uuid.uuid4().hex[:8]}"
                url = self.create_database(name)
                _migrate(url)
                self.template = name
            return self.create_database(template=self.template)

    def start_server(self) -> None:
        """pg_ctl start (again, on the same port: a server coming back after `stop_server`)."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                   "-o", " ".join([f"-p {self.port}", *self.options]), "start"], timeout=90)
        wait_for(lambda: _accepts(self.port), 30, "PostgreSQL to accept connections")

    def stop_server(self) -> None:
        """pg_ctl stop -m fast: the server goes away (its data stays), as in an outage."""
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
            except RuntimeError:
                pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
        if self.watchdog is not None and self.watchdog.stdin is not None:
            self.watchdog.stdin.close()  # its work is done: it exits
            self.watchdog.wait(timeout=30)
            self.watchdog = None

    def watch(self) -> None:
        """Stop and remove the cluster when this process ends, however it ends (kill -9 included):
        a child reads a pipe only this process holds, and cleans up when the pipe closes. A
        cluster left running would outlive the tests (pg_ctl starts it as a daemon)."""
        as_user = [] if self.user is None else [str(self.user.pw_uid), str(self.user.pw_gid)]
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.bin / "pg_ctl"), str(self.data), str(self.root), *as_user],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def start_cluster(settings: tuple[str, ...] = ()) -> Cluster:
    """initdb + pg_ctl start in a new temp dir; `settings` are extra `-c name=value` server options."""
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="dvic-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = Cluster(root, 0, bindir(), user)
    try:
        cluster._run([str(cluster.bin / "initdb"), "-D", str(cluster.data), "-U", SUPERUSER, "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], timeout=120)
        cluster.options = ("-c listen_addresses=127.0.0.1", f"-k {root}",
                           # Throw-away data: durability costs time here and protects nothing.
                           "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
                           "-c max_connections=300", *(f"-c {s}" for s in settings))
        for _ in range(5):  # a free port can be taken by someone else before postgres binds it
            cluster.port = _free_port()
            try:
                cluster.start_server()
                break
            except RuntimeError:
                if "could not bind" not in cluster.log_tail():
                    raise
        else:
            raise RuntimeError("PostgreSQL could not bind a free port" + cluster.log_tail())
        cluster.watch()
    except BaseException:
        cluster.stop()
        raise
    return cluster


# The watchdog (Cluster.watch): waits for EOF on stdin, then stops the cluster (as its user) and
# removes its directory. argv: pg_ctl, data dir, root dir, [uid, gid].
_WATCHDOG = """
import os, shutil, subprocess, sys
sys.stdin.buffer.read()
pg_ctl, data, root = sys.argv[1:4]
ids = [int(x) for x in sys.argv[4:6]]
if os.path.isdir(data):
    kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
    subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, **kwargs)
shutil.rmtree(root, ignore_errors=True)
"""


def _migrate(url: str) -> None:
    """The server's schema into the database at `url`, on a thread of its own (callers may be
    inside a running event loop)."""
    from central import db  # late: tests/support is importable without the server's dependencies

    _on_own_thread(lambda: db.create(url))


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one statement (`?` placeholders) on the database at `url` (synchronous)."""
    from central.dbconn import numbered

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await conn.fetch(numbered(sql), *params)]
        finally:
            await conn.close()

    return _on_own_thread(run)


def _on_own_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a new event loop on a thread of its own (the caller may be
    inside a running loop)."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(asyncio.run(make()))
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="dvic-pg-sync")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


_shared: Cluster | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> Cluster:
    """This process's cluster, started on first use and stopped when the process exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = start_cluster()
            atexit.register(_shared.stop)
        return _shared
