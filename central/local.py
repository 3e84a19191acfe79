"""The server running from a data dir, as seen from the same machine: where it listens, and its API as admin.

`dvic-central serve` writes LISTEN_FILE there while it runs; `dvic-central node ...` (cli.py) and
`dvic-central up` (devstack.py) find it with `running_server` and call it with the admin token and
the CA of the same data dir.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .services import ADMIN_TOKEN_FILE

LISTEN_FILE = "listen.json"


def running_server(data_dir: Path) -> dict[str, Any] | None:
    """listen.json of a server that is still alive, else None."""
    try:
        info: dict[str, Any] = json.loads((data_dir / LISTEN_FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info


def api_call(data_dir: Path, info: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    """Call the running server's API as admin (token and CA from the data dir)."""
    token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    ctx = ssl.create_default_context(cafile=str(data_dir / "ca.pem")) if info["url"].startswith("https") else None
    req = urllib.request.Request(
        info["url"] + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())["error"]
            raise SystemExit(f"error: {err['message']} ({exc.code} {err['code']})") from None
        except (ValueError, KeyError):
            raise SystemExit(f"error: HTTP {exc.code} from the server") from None
