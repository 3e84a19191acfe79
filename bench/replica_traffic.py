"""Bus traffic between replicas per node: NOTIFYs and bytes a second on dvic_events and dvic_logs.

    python3 -m bench.replica_traffic [--nodes 1000] [--interval 10] [--lines-per-s 0.2] [--duration 30]

Starts a throw-away PostgreSQL cluster and two real replicas (r1, r2) sharing it, enrolls the
nodes, runs them against r1 from --procs processes (bench/fleet_worker.py: a metrics sample every
--interval, --lines-per-s log lines each), puts an operator's stream on r2 wanting every node's
lines (so lines travel on dvic_logs; without it they do not), and LISTENs on both channels from a
separate session of its own, counting the notifications and their payload bytes in the steady
part of the run (after --warmup).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from central.cli import run_event_loop
from tests.support.postgres import shared_cluster
from tests.support.replicas import Replicas, StreamClient

from .common import add_common_args, non_negative_int, parser, positive_float, positive_int, run_bench
from .enroll import enroll_server_fleet, save_fleet
from .report import Report
from .workers import Worker

CHANNELS = ("dvic_events", "dvic_logs")


class Counter:
    """Notifications and payload bytes per channel, counted while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.notifies = dict.fromkeys(CHANNELS, 0)
        self.bytes = dict.fromkeys(CHANNELS, 0)

    def __call__(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if self.on:
            self.notifies[channel] += 1
            self.bytes[channel] += len(payload.encode())


async def run(args: argparse.Namespace, work: Path) -> Report:
    import asyncpg

    report = Report("Replicas: bus traffic per node", params={
        "nodes": args.nodes, "interval_s": args.interval, "lines_per_s": args.lines_per_s,
        "duration_s": args.duration, "procs": args.procs})
    url = shared_cluster().fresh_database()
    replicas = Replicas(work / "data", url, count=2, interval=args.interval,
                        extra_args=("--max-connections", str(max(10_000, args.nodes + 100))))
    r1, r2 = replicas.start()
    workers: list[Worker] = []
    listener = await asyncpg.connect(url)
    counter = Counter()
    try:
        for channel in CHANNELS:
            await listener.add_listener(channel, counter)
        fleet = await enroll_server_fleet(r1, work, args.nodes, prefix="sim", concurrency=32)
        fleet_file = work / "fleet.json"
        save_fleet(fleet, fleet_file)
        workers = [Worker(f"fleet-worker-{i}", "bench.fleet_worker", [
            "--fleet", str(fleet_file), "--start", str(first), "--count", str(count),
            *_node_options(args)], work) for i, (first, count) in enumerate(_slices(args.nodes, args.procs))]
        async with StreamClient(r2, logs=["*"]) as stream:
            for w in workers:
                await w.start()
            ready = [await w.expect("ready", timeout=600) for w in workers]
            report.add("nodes connected to r1", sum(r["connected"] for r in ready))
            for w in workers:
                await w.send("go")
            await asyncio.sleep(args.warmup)
            counter.on = True
            started = time.monotonic()
            await asyncio.sleep(args.duration - args.warmup)
            counter.on = False
            seconds = time.monotonic() - started
            for w in workers:
                await w.expect("result", timeout=args.duration + 120)
                await w.finish()
            workers = []
            lines_on_r2 = sum(len(f["lines"]) for f in stream.of_type("logs"))
        _add(report, counter, seconds, args.nodes)
        report.add("log lines shown on r2's stream (whole run)", lines_on_r2)
    finally:
        for w in workers:
            w.kill()
        await listener.close()
        replicas.stop()
    return report


def _slices(nodes: int, procs: int) -> list[tuple[int, int]]:
    """(first node, how many) for each of `procs` load processes."""
    bounds = [nodes * i // procs for i in range(procs + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(procs)]


def _node_options(args: argparse.Namespace) -> list[str]:
    return ["--lines-per-s", str(args.lines_per_s), "--interval", str(args.interval),
            "--duration", str(args.duration), "--warmup", str(args.warmup)]


def _add(report: Report, counter: Counter, seconds: float, nodes: int) -> None:
    for channel in CHANNELS:
        per_s, bytes_per_s = counter.notifies[channel] / seconds, counter.bytes[channel] / seconds
        report.add(f"{channel}: NOTIFYs/s", round(per_s, 1))
        report.add(f"{channel}: bytes/s", round(bytes_per_s))
        report.add(f"{channel}: bytes/s per node", round(bytes_per_s / nodes, 1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("replica_traffic", __doc__, nodes=1000)
    p.add_argument("--interval", type=positive_float, default=10.0, help="metrics interval per node, seconds (10)")
    p.add_argument("--lines-per-s", type=float, default=0.2)
    p.add_argument("--duration", type=positive_float, default=30.0)
    p.add_argument("--warmup", type=non_negative_int, default=5)
    p.add_argument("--procs", type=positive_int, default=2)
    add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(args, "replica_traffic", run, run=run_event_loop)


if __name__ == "__main__":
    raise SystemExit(main())
