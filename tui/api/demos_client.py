"""Demo releases and deployments in the operator API (issue 14; docs/demos.md).

`DemosClient` extends `RemoteClient` (same settings, pinning and errors). A release is uploaded
from a file, streamed (never read whole into memory); `pack_directory` makes the tar.gz of a
directory the way the server expects it (dvic-demo.toml at the root).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from tui.api.client import Json, _list, _params, _seg
from tui.api.remote_client import RemoteClient

# An upload may take long on a slow link: no overall deadline, but a stall of this long ends it.
UPLOAD_STALL_S = 120.0
SKIPPED = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}


def pack_directory(directory: Path, out: Path) -> Path:
    """`directory` as a tar.gz at `out`: its content at the archive's root (no leading folder);
    version-control and cache folders left out; symlinks kept as links (the server checks them)."""
    with tarfile.open(out, "w:gz") as tar:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
            for name in dirs + sorted(files):
                path = Path(root) / name
                tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return out


def temp_archive() -> Path:
    fd, name = tempfile.mkstemp(prefix="dvic-demo-", suffix=".tar.gz")
    os.close(fd)
    return Path(name)


class DemosClient(RemoteClient):
    """`RemoteClient` plus demo releases and deployments."""

    async def publish_demo(self, archive: Path, name: str | None = None, version: str | None = None) -> Json:
        import json

        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=UPLOAD_STALL_S)
        with archive.open("rb") as body:
            _, raw = await self.exchange("POST", "/demos/releases", params=_params(name=name, version=version),
                                         data=body, headers={"Content-Type": "application/gzip"}, timeout=timeout)
        doc = json.loads(raw)
        return doc if isinstance(doc, dict) else {}

    async def demos(self) -> list[Json]:
        return _list(await self.request("GET", "/demos"), "demos")

    async def demo_releases(self, name: str) -> list[Json]:
        return _list(await self.request("GET", f"/demos/{_seg(name)}/releases"), "releases")

    async def demo_status(self, name: str | None = None) -> list[Json]:
        return _list(await self.request("GET", "/demos/status", _params(demo=name)), "status")

    async def deploy(self, demo: str, version: str, target: Json, batch: int | None = None) -> Json:
        body: Json = {"demo": demo, "version": version, **target}
        if batch is not None:
            body["batch"] = batch
        return await self.request("POST", "/deployments", body=body)

    async def undeploy(self, demo: str, target: Json) -> Json:
        return await self.request("POST", "/deployments/undeploy", body={"demo": demo, **target})

    async def rollback(self, demo: str, target: Json) -> Json:
        return await self.request("POST", "/deployments/rollback", body={"demo": demo, **target})

    async def deployments(self, demo: str | None = None, limit: int | None = None) -> list[Json]:
        return _list(await self.request("GET", "/deployments", _params(demo=demo, limit=limit)), "deployments")

    async def deployment(self, deployment_id: str) -> Json:
        return await self.request("GET", f"/deployments/{_seg(deployment_id)}")
