"""Ingest benchmark load: a few nodes send pre-encoded 500-line batches as fast as acks allow.

Run by bench/ingest.py (stdin/stdout protocol of bench/workers.py), never by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections import deque
from pathlib import Path

import aiohttp

from .enroll import NodeCreds, load_fleet
from .loglines import batch
from .workers import emit, wait_for_go
from .wsnode import connect_node


def encode_frames(node: NodeCreds, lines: int, size: int, base_ts: float) -> tuple[list[str], list[int]]:
    """The node's whole load as ready-to-send `logs` frames, and the last seq of each frame."""
    frames: list[str] = []
    last: list[int] = []
    for first in range(1, lines + 1, size):
        count = min(size, lines - first + 1)
        frames.append(json.dumps({"type": "logs", "lines": batch(node.index, first, count, base_ts)},
                                 separators=(",", ":")))
        last.append(first + count - 1)
    return frames, last


async def pump(ws: aiohttp.ClientWebSocketResponse, frames: list[str], last: list[int], window: int,
               ack_timeout: float) -> tuple[int, int]:
    """Send every frame keeping at most `window` unacknowledged; returns (highest ack, acks received)."""
    inflight: deque[int] = deque()
    next_frame = 0
    acked = 0
    acks = 0
    # Each pass sends or reads at least one frame, so this bound is never the one that stops us.
    for _ in range(4 * len(frames) + 10):
        if next_frame >= len(frames) and not inflight:
            break
        while next_frame < len(frames) and len(inflight) < window:
            await ws.send_str(frames[next_frame])
            inflight.append(last[next_frame])
            next_frame += 1
        msg = await ws.receive(timeout=ack_timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"connection ended ({msg.type!r}, close code {ws.close_code})")
        reply = json.loads(msg.data)
        if reply.get("type") == "ack":
            acks += 1
            acked = max(acked, int(reply["seq"]))
            while inflight and inflight[0] <= acked:
                inflight.popleft()
        elif reply.get("type") == "error":
            raise ConnectionError(f"server error: {reply}")
    return acked, acks


async def main(args: argparse.Namespace) -> int:
    fleet = load_fleet(Path(args.fleet))
    encode_started = time.monotonic()
    loads = [encode_frames(n, args.lines_per_node, args.batch, args.base_ts) for n in fleet.nodes]
    encode_s = time.monotonic() - encode_started
    async with aiohttp.ClientSession() as session:
        conns = await asyncio.gather(*(connect_node(session, fleet.ca_path, n) for n in fleet.nodes))
        emit("ready", nodes=len(conns), frames=sum(len(f) for f, _ in loads), encode_s=encode_s)
        if not await wait_for_go(args.timeout):
            emit("result", error="no go from the parent")
            return 1
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        outcome: list[tuple[int, int]] | None = None
        error = ""
        try:
            outcome = await asyncio.wait_for(asyncio.gather(*(
                pump(ws, frames, last, args.window, args.ack_timeout)
                for (ws, _), (frames, last) in zip(conns, loads, strict=True)
            )), args.timeout)
        except (ConnectionError, TimeoutError, aiohttp.ClientError) as exc:
            error = repr(exc)
        seconds = time.monotonic() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(ws.close() for ws, _ in conns), return_exceptions=True)
    emit("result", seconds=seconds, error=error,
         acked=[a for a, _ in outcome] if outcome else [], acks=sum(n for _, n in outcome) if outcome else 0,
         cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime))
    return 0 if outcome else 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fleet", required=True)
    p.add_argument("--lines-per-node", type=int, required=True)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--base-ts", type=float, required=True)
    p.add_argument("--ack-timeout", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=600.0)
    return p.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
