"""Real node traffic for the client tests: protocol nodes (tests/support/fake_node.py) on the real server.

A test builds the fleet it wants through the server's own paths: enrolled and never connected
("new"), connected ("online", with facts, metrics, demos, logs), connected then gone ("offline"),
failed by the node's own `failed` event, and many nodes at once over keep-alives (as ESP32 boards
report), enrolled through the API as bench/enroll.py does.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.enroll import NodeCreds, enroll_fleet
from tests.support.fake_node import FakeNode
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

# Markup, an OSC 52 clipboard write and a screen clear: shown literally, the escapes removed.
HOSTILE = "[link=http://x]x[/link] [/b] \x1b]52;c;aGk=\x07 \x1b[2J end"
HOSTILE_SHOWN = "[link=http://x]x[/link] [/b]   end"
DEMO_TOKEN = "a1b2c3d4a1b2c3d4"


def metrics(cpu: float = 12.5, mem: float = 50.0, disk: float = 25.0, temp: float = 48.3,
            ts: float | None = None) -> dict[str, Any]:
    return {"type": "metrics", "ts": time.time() if ts is None else ts, "cpu": {"total": cpu, "per_core": [cpu, cpu]},
            "load": [0.5, 0.4, 0.3], "mem": {"total": 4096000000, "available": 2048000000, "percent": mem},
            "disks": [{"mount": "/", "total": 32000000000, "used": 8000000000, "percent": disk}],
            "temps": [{"name": "cpu-thermal", "celsius": temp}], "uptime": 12345.0, "procs": 143}


def demo(name: str = "robot-arm", state: str = "alive", token: str = DEMO_TOKEN, pid: int = 1234) -> dict[str, Any]:
    now = time.time()
    return {"type": "demo", "token": token, "name": name, "pid": pid, "state": state,
            "started_at": now - 600, "exited_at": now if state == "exited" else None,
            "header": {"exe": "/usr/bin/python3", "argv": ["robot.py"], "user": "demo", "host": "pi"}}


@asynccontextmanager
async def greeted(bundle: dict[str, Any], **hello: Any) -> AsyncIterator[FakeNode]:
    """Connects an enrolled node over mutual TLS and says hello (`hello`: its facts, daemon_version),
    nothing more: for server tests that count or script every frame the node sends."""
    async with FakeNode(bundle) as node:
        await node.connect()
        await node.hello(**hello)
        yield node


@asynccontextmanager
async def connected(bundle: dict[str, Any], *, daemon_version: str = "test-0", **facts: Any) -> AsyncIterator[FakeNode]:
    """Connects an enrolled node over mutual TLS, says hello as a Raspberry Pi (resuming its sequence
    numbers), keeps reading as a daemon does and sends one metrics sample (cpu 12.5 %, mem 50 %)."""
    async with greeted(bundle, os="Debian GNU/Linux 12", kernel="6.1.0", arch="aarch64", ips=["10.0.0.42"],
                       macs=["dc:a6:32:00:00:01"], boot_time=time.time() - 3600, daemon_version=daemon_version,
                       **facts) as node:
        node.seq = int(node.welcome.get("last_seq") or 0)
        node.keep_reading()  # as a daemon: the server's pings are answered whatever the test does
        await node.send(metrics())
        yield node


@asynccontextmanager
async def online_node(server: CentralServer, name: str, kind: str = "raspberry", group: str = "hall-a",
                      **facts: Any) -> AsyncIterator[FakeNode]:
    """Enrolls `name` and connects it (see `connected`)."""
    async with connected(server.enroll(name, kind=kind, group=group), **facts) as node:
        yield node


async def offline_node(server: CentralServer, name: str, kind: str = "desktop", group: str = "") -> dict[str, Any]:
    """Enrolls `name`, connects it once and hangs up: the server shows it offline (it sends no
    keep-alives, so it is offline as soon as its socket closes). Returns its bundle."""
    bundle = server.enroll(name, kind=kind, group=group)
    async with connected(bundle):
        pass
    await async_wait_for(lambda: server.node(name)["state"] == "offline", what=f"{name} offline")
    return bundle


async def report_failed(node: FakeNode, reason: str) -> None:
    """The node says it failed (a `failed` event, docs/protocol.md section 2): its state is `failed`."""
    await node.send({"type": "event", "kind": "failed", "message": reason, "data": {}})


async def send_history(node: FakeNode, minutes: int = 14, every: float = 20.0) -> None:
    """Backdated samples (the server stores each at its own `ts`), so charts have a shape."""
    now = time.time()
    count = int(minutes * 60 / every)
    for i in range(count, 0, -1):
        phase = i / 6.0
        await node.send(metrics(cpu=40 + 35 * math.sin(phase), mem=45 + 10 * math.sin(phase / 3),
                                disk=25 + i % 3, temp=50 + 8 * math.cos(phase), ts=now - i * every))


class KeepAliveFleet:
    """Many nodes at once: enrolled through the API (bench/enroll.py), each reporting with
    `POST /api/v1/keepalive` as an ESP32 board does: no websocket per node, so hundreds of nodes
    come online and change their figures in a second or two. The figures a keep-alive carries
    (cpu, temp) are the ones the fleet table shows."""

    def __init__(self, server: CentralServer, creds_dir: Path) -> None:
        self.server = server
        self.creds_dir = creds_dir
        self.nodes: list[NodeCreds] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KeepAliveFleet:
        connector = aiohttp.TCPConnector(limit=16, ssl=ssl.create_default_context(cafile=str(self.server.ca_path)))
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def enroll(self, count: int, prefix: str) -> list[NodeCreds]:
        """Enrolls PREFIX-00000 ... (group PREFIX, kind raspberry), sorted by name."""
        self.creds_dir.mkdir(parents=True, exist_ok=True)
        fleet = await enroll_fleet(self.server.url, self.server.admin_token, self.server.ca_path, count,
                                   self.creds_dir, prefix=prefix, concurrency=16)
        assert len(fleet.nodes) == count, f"enrolled {len(fleet.nodes)} of {count}"
        self.nodes += fleet.nodes
        return fleet.nodes

    async def report(self, nodes: list[NodeCreds], **figures: float) -> None:
        """One keep-alive from each node carrying `figures` (e.g. cpu=55.0); all must be taken."""
        session = self._session
        assert session is not None

        async def one(node: NodeCreds) -> None:
            async with session.post(node.keepalive_url, json=figures,
                                    headers={"Authorization": f"Bearer {node.token}"}) as resp:
                assert resp.status == 200, f"{node.name}: keep-alive answered {resp.status} {await resp.text()}"

        await asyncio.gather(*(one(n) for n in nodes))
