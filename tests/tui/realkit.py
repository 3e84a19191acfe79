"""Real node traffic for the console and CLI tests: scripted nodes on the real central server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.support.fake_node import FakeNode
from tests.support.server import CentralServer

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
async def connected(bundle: dict[str, Any], **facts: Any) -> AsyncIterator[FakeNode]:
    """Connects an enrolled node over mutual TLS, says hello (resuming its sequence numbers)."""
    async with FakeNode(bundle) as node:
        await node.connect()
        welcome = await node.hello(os="Debian GNU/Linux 12", kernel="6.1.0", arch="aarch64",
                                   ips=["10.0.0.42"], macs=["dc:a6:32:00:00:01"],
                                   boot_time=time.time() - 3600, **facts)
        node.seq = int(welcome.get("last_seq") or 0)
        await node.send(metrics())
        yield node


@asynccontextmanager
async def online_node(server: CentralServer, name: str, kind: str = "raspberry", group: str = "hall-a",
                      **facts: Any) -> AsyncIterator[FakeNode]:
    """Enrolls `name` and connects it (see `connected`)."""
    async with connected(server.enroll(name, kind=kind, group=group), **facts) as node:
        yield node


async def send_history(node: FakeNode, minutes: int = 14, every: float = 20.0) -> None:
    """Backdated samples (the server stores each at its own `ts`), so charts have a shape."""
    import math

    now = time.time()
    count = int(minutes * 60 / every)
    for i in range(count, 0, -1):
        phase = i / 6.0
        await node.send(metrics(cpu=40 + 35 * math.sin(phase), mem=45 + 10 * math.sin(phase / 3),
                                disk=25 + i % 3, temp=50 + 8 * math.cos(phase), ts=now - i * every))
