"""Demo release archives for tests (issue 14): real tar.gz files built member by member, and the
raw-body upload of `POST /api/v1/demos/releases`."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .server import CentralServer


def toml_of(manifest: dict[str, Any]) -> str:
    """A dvic-demo.toml for `manifest` (top-level keys first, then one table per dict value)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in manifest.items() if not isinstance(v, dict)]
    for key, value in manifest.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in value.items())
    return "\n".join(lines) + "\n"


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def add_member(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tar.addfile(info)


def archive(path: Path, manifest: dict[str, Any] | str | None, files: dict[str, bytes] | None = None,
            extra: Any = None) -> Path:
    """A tar.gz with dvic-demo.toml (a dict is written as TOML, a str as is) and `files`; `extra(tar)`
    may add hostile members."""
    with tarfile.open(path, "w:gz") as tar:
        if manifest is not None:
            text = manifest if isinstance(manifest, str) else toml_of(manifest)
            add_file(tar, "dvic-demo.toml", text.encode())
        for name, data in (files or {}).items():
            add_file(tar, name, data, 0o755 if name.endswith((".py", ".sh")) else 0o644)
        if extra is not None:
            extra(tar)
    return path


def publish(server: CentralServer, data: bytes, token: str | None = None, chunked: bool = False,
            **query: str) -> tuple[int, Any]:
    """POST the raw archive (`chunked`: without a Content-Length, 64 KiB a chunk); (status, decoded body)."""
    qs = ("?" + urllib.parse.urlencode(query)) if query else ""
    body: Any = (data[i:i + 65536] for i in range(0, len(data), 65536)) if chunked else data
    req = urllib.request.Request(server.url + "/api/v1/demos/releases" + qs, method="POST", data=body, headers={
        "Authorization": f"Bearer {server.admin_token if token is None else token}",
        "Content-Type": "application/gzip"})
    try:
        with urllib.request.urlopen(req, context=server.ssl_context, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None
