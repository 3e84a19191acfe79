"""Keep-alive load generator: many persistent HTTPS connections, each posting back to back.

A small HTTP/1.1 client on asyncio protocols (one request in flight per connection, like a
board does), because a general-purpose client spends more CPU per request than the server.
Run by bench/keepalive.py (stdin/stdout protocol of bench/workers.py), never by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from .report import latency_summary
from .workers import emit, wait_for_go

MAX_SAMPLES = 2_000_000


class Stats:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def record(self, status: int, seconds: float) -> None:
        self.statuses[status] += 1
        if len(self.latencies) < MAX_SAMPLES:
            self.latencies.append(seconds)


class KeepAliveConnection(asyncio.Protocol):
    """Sends the next request as soon as the previous response is complete, until stopped."""

    def __init__(self, requests: list[bytes], offset: int, stats: Stats) -> None:
        self.requests = requests
        self.next = offset
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.running = False
        self.idle = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def start(self) -> None:
        self.running = True
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        request = self.requests[self.next % len(self.requests)]
        self.next += 1
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        length = 0
        for header in head.split("\r\n")[1:]:
            name, _, value = header.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[:end + 4 + length]
        try:
            status = int(head[9:12])
        except ValueError:
            self.stats.errors["bad response"] += 1
            status = 0
        self.stats.record(status, time.perf_counter() - self.sent_at)
        if self.running:
            self._send()
        elif not self.idle.done():
            self.idle.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.running:
            self.stats.errors[f"connection lost: {exc!r}"[:80]] += 1
        self.running = False
        if not self.idle.done():
            self.idle.set_result(None)

    def stop(self) -> None:
        self.running = False


def build_requests(url: str, tokens: list[str], body: bytes) -> list[bytes]:
    parts = urlsplit(url)
    return [
        (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        for token in tokens
    ]


async def main(args: argparse.Namespace, tokens: list[str]) -> int:
    parts = urlsplit(args.url)
    ctx = ssl.create_default_context(cafile=args.ca) if parts.scheme == "https" else None
    stats = Stats()
    requests = build_requests(args.url, tokens, args.body.encode())
    loop = asyncio.get_running_loop()

    async def open_one(i: int) -> KeepAliveConnection:
        _, proto = await loop.create_connection(
            lambda: KeepAliveConnection(requests, i, stats), parts.hostname, parts.port, ssl=ctx,
        )
        return proto

    conns = await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(args.conns))), 60)
    emit("ready", conns=len(conns))
    if not await wait_for_go(args.duration + 120):
        emit("result", error="no go from the parent")
        return 1
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for conn in conns:
        conn.start()
    await asyncio.sleep(args.duration)  # the load runs in the protocols meanwhile
    for conn in conns:
        conn.stop()
    seconds = time.perf_counter() - started
    done = sum(stats.statuses.values())
    # Responses still in flight are waited for (not counted in the rate) so the server sees no resets.
    await asyncio.wait([c.idle for c in conns], timeout=10)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    emit("result", requests=done, seconds=seconds, statuses={str(k): v for k, v in stats.statuses.items()},
         errors=dict(stats.errors), latency=latency_summary(stats.latencies),
         cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime))
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--tokens", required=True, help="JSON list of node tokens, used in turn")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--body", default="{}")
    return p.parse_args()


if __name__ == "__main__":
    options = parse_args()
    raise SystemExit(asyncio.run(main(options, json.loads(Path(options.tokens).read_text()))))
