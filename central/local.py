"""The server running from a data dir, as seen from the same machine: where it listens, and its API as admin.

`dvic-central serve` writes LISTEN_FILE there while it runs; `dvic-central node ...` (cli.py) and
`dvic-central up` (devstack.py) find it with `running_server` and call it with the admin token and
the CA of the same data dir, through the client library's standard-library transport (tui/api/sync.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from tui.api.config import Settings
from tui.api.core import ENROLL_TIMEOUT_S, Request
from tui.api.errors import ApiError, ConfigError
from tui.api.sync import SyncClient

from .services import ADMIN_TOKEN_FILE

LISTEN_FILE = "listen.json"
T = TypeVar("T")


def running_server(data_dir: Path) -> dict[str, Any] | None:
    """listen.json of a server that is still alive, else None."""
    try:
        info: dict[str, Any] = json.loads((data_dir / LISTEN_FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info


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
