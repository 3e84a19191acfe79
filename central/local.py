"""The server running from a data dir, as seen from the same machine: where it listens, and its API as admin.

`dvic-central serve` writes LISTEN_FILE there while it runs (`announce`); `dvic-central node ...`
(cli.py) and `dvic-central up` (devstack.py) find it with `running_server` and call it with the
admin token and the CA of the same data dir, through the client library's standard-library
transport (tui/api/sync.py).

Replicas sharing one data dir (`serve --replica NAME`) also write their own `listen-NAME.json`;
LISTEN_FILE then names the replica that started last, and each removes only the files that
still name it when it stops, so a command on a replica's host finds a replica still running there.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, TypeVar

from tui.api.config import Settings
from tui.api.core import ENROLL_TIMEOUT_S, Request
from tui.api.errors import ApiError, ConfigError
from tui.api.sync import SyncClient

from .datadir import data_dir_lock
from .pki import write_private
from .services import ADMIN_TOKEN_FILE

LISTEN_FILE = "listen.json"
REPLICA_LISTEN_FILES = "listen-*.json"  # listen-NAME.json per named replica
T = TypeVar("T")


def listen_files(replica: str) -> list[str]:
    """The files a server announces itself in: LISTEN_FILE, and its own one for a named replica."""
    return [LISTEN_FILE, *([f"listen-{replica}.json"] if replica else [])]


def announce(data_dir: Path, replica: str, info: dict[str, Any]) -> None:
    """Write this server's listen files (each whole: a reader never sees half of one)."""
    text = json.dumps({**info, "host": socket.gethostname()}) + "\n"
    with data_dir_lock(data_dir):
        for name in listen_files(replica):
            write_private(data_dir / name, text, mode=0o644, sync=False)


def withdraw(data_dir: Path, replica: str, info: dict[str, Any]) -> None:
    """On stop: remove the listen files that still name this server (another replica sharing the
    data dir may have written LISTEN_FILE since: it stays)."""
    mine = {**info, "host": socket.gethostname()}
    with data_dir_lock(data_dir):
        for name in listen_files(replica):
            if _read(data_dir / name) == mine:
                (data_dir / name).unlink()


def running_server(data_dir: Path) -> dict[str, Any] | None:
    """The listen file of a server still alive on this host: listen.json, else a replica's
    listen-NAME.json; None when there is none."""
    for path in [data_dir / LISTEN_FILE, *sorted(data_dir.glob(REPLICA_LISTEN_FILES))]:
        info = _read(path)
        if info is not None and _alive_here(info):
            return info
    return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _alive_here(info: dict[str, Any]) -> bool:
    # The pid of a server on another host (a shared data dir) says nothing here.
    if info.get("host", socket.gethostname()) != socket.gethostname():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def admin_call(data_dir: Path, info: dict[str, Any], req: Request[T]) -> T:
    """Send `req` (tui/api/calls.py) to the running server as admin; a refusal ends the command."""
    url = str(info["url"])
    ca = data_dir / "ca.pem"
    settings = Settings(url, (data_dir / ADMIN_TOKEN_FILE).read_text().strip(),
                        str(ca) if url.startswith("https://") else None)
    try:
        with SyncClient(settings, timeout=ENROLL_TIMEOUT_S) as api:
            return api.send(req)
    except ApiError as exc:
        where = f" ({exc.status} {exc.code})" if exc.status else ""
        raise SystemExit(f"error: {exc.message}{where}") from None
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def call_running(data_dir: Path, req: Request[T], not_running: str) -> T:
    """`admin_call` on the server running from `data_dir`; `not_running` ends the command when none is."""
    info = running_server(data_dir)
    if info is None:
        raise SystemExit(not_running)
    return admin_call(data_dir, info, req)
