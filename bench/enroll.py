"""Enrolls many simulated nodes through the real API, concurrently, and saves their credentials."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from tests.support.server import CentralServer


@dataclass(frozen=True)
class NodeCreds:
    index: int
    node_id: str
    name: str
    ws_url: str
    keepalive_url: str
    token: str
    pem_path: str  # client certificate followed by its private key (0600)


@dataclass(frozen=True)
class Fleet:
    ca_path: str
    nodes: list[NodeCreds]
    seconds: float  # wall time of the whole enrollment

    @property
    def rate(self) -> float:
        return len(self.nodes) / self.seconds if self.seconds > 0 else 0.0


class EnrollError(RuntimeError):
    pass


async def enroll_server_fleet(server: CentralServer, work: Path, count: int, **options: Any) -> Fleet:
    """enroll_fleet on `server`, the nodes' credentials in `work`/nodes (made here)."""
    creds = work / "nodes"
    creds.mkdir()
    return await enroll_fleet(server.url, server.admin_token, server.ca_path, count, creds, **options)


async def enroll_fleet(url: str, admin_token: str, ca_path: Path, count: int, out_dir: Path, *,
                       prefix: str = "bench", concurrency: int = 32, timeout: float = 600.0) -> Fleet:
    """Enroll `count` nodes named PREFIX-00000...; every call is a real POST /api/v1/nodes.

    `out_dir` must exist: each node's certificate and key are written there.
    """
    ctx = ssl.create_default_context(cafile=str(ca_path))
    headers = {"Authorization": f"Bearer {admin_token}"}
    width = max(5, len(str(count)))
    results: list[NodeCreds | None] = [None] * count
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ctx)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one_worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                name = f"{prefix}-{i:0{width}d}"
                async with session.post(f"{url}/api/v1/nodes",
                                        json={"name": name, "kind": "raspberry", "group": prefix}) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status != 201:
                        raise EnrollError(f"enrolling {name}: HTTP {resp.status} {body}")
                results[i] = _save(i, body, out_dir)

        workers = [asyncio.create_task(one_worker()) for _ in range(min(concurrency, count))]
        try:
            await asyncio.wait_for(asyncio.gather(*workers), timeout)
        finally:
            for task in workers:
                task.cancel()
    seconds = time.monotonic() - started
    nodes = [n for n in results if n is not None]
    return Fleet(str(ca_path), nodes, seconds)


def _save(index: int, bundle: dict[str, Any], out_dir: Path) -> NodeCreds:
    pem = out_dir / f"{bundle['name']}.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(bundle["cert_pem"] + bundle["key_pem"])
    return NodeCreds(index, bundle["node_id"], bundle["name"], bundle["ws_url"], bundle["keepalive_url"],
                     bundle["token"], str(pem))


def save_fleet(fleet: Fleet, path: Path) -> None:
    doc = {"ca_path": fleet.ca_path, "seconds": fleet.seconds, "nodes": [asdict(n) for n in fleet.nodes]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds node tokens
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)


def load_fleet(path: Path) -> Fleet:
    doc = json.loads(path.read_text())
    return Fleet(doc["ca_path"], [NodeCreds(**n) for n in doc["nodes"]], float(doc["seconds"]))


def node_ssl_context(ca_path: str, node: NodeCreds) -> ssl.SSLContext:
    """Trust only the server's CA and present this node's client certificate (mutual TLS)."""
    ctx = ssl.create_default_context(cafile=ca_path)
    ctx.load_cert_chain(node.pem_path)
    return ctx
