"""Alert evaluation: what the server's alert engine costs per pass over the whole fleet.

    python3 -m bench.alerts_eval [--nodes 2000] [--passes 30] [--operator-rules 9] [--interval 10]

Runs the server's own AlertEngine (central/alerts/engine.py) in-process on a real SQLite database
through the real batching writer, over a Registry holding `--nodes` online nodes (each with metrics,
a Pi's throttling flags, two demos, a daemon version), with the 11 stock rules plus
`--operator-rules` operator rules (metric thresholds scoped to a group or a kind, and log patterns),
20 rules by default. Between passes every node gets a new sample (values drift; 2 % of the nodes
hover around a threshold, so alerts start and clear as in a real fleet), as the node sessions
would. Measured with the process's CPU time (the writer's thread included):
- a steady pass: CPU per pass and the share of one core at one pass every `--interval` seconds
  (target: under 5 % for 2,000 nodes x 20 rules every 10 s, issue 15);
- a hall going dark: a quarter of the nodes offline at once, the pass that opens their alerts
  (one commit) and the one that resolves them;
- a node's event (the pass an offline node's state change wakes: one node only);
- log rules: CPU per log line counted (the stock ERROR rate plus the operator patterns).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from central import db, store
from central.alerts.engine import AlertEngine
from central.alerts.model import Notice
from central.bus import Bus
from central.registry import NodeState, Registry
from central.writer import Writer
from tests.support.database import started_writer

from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .report import Report

GROUPS = ("hall-a", "hall-b", "hall-c", "lab", "entrance")
KINDS = ("raspberry", "desktop")
TARGET_SHARE = 5.0  # % of one core


class CountingSink:
    def __init__(self) -> None:
        self.notices = 0

    def persist(self, conn: sqlite3.Connection, notices: Sequence[Notice]) -> object:
        return len(notices)

    def committed(self, persisted: object) -> None:
        self.notices += persisted if isinstance(persisted, int) else 0


def operator_rules(count: int) -> list[dict[str, Any]]:
    """Metric thresholds scoped to groups and kinds, and (one in four) log patterns."""
    out: list[dict[str, Any]] = []
    for i in range(count):
        if i % 4 == 3:
            out.append({"name": f"log-{i}", "type": "log", "pattern": r"usb \d+-\d+: reset|timeout after \d+ ms",
                        "rate": 20, "scope": {"group": GROUPS[i % len(GROUPS)]}})
        else:
            metric = ("cpu", "load1", "swap")[i % 3]
            scope = {"group": GROUPS[i % len(GROUPS)]} if i % 2 else {"kind": KINDS[i % 2]}
            out.append({"name": f"rule-{i}", "type": "metric", "metric": metric, "threshold": 90, "clear": 80,
                        "for": "1m", "scope": scope})
    return out


def sample(node: NodeState, rng: random.Random, hover: bool) -> dict[str, float]:
    """New metric values for a node (a drift; a hovering node crosses the disk threshold back and forth)."""
    return {
        "cpu": rng.uniform(5, 60), "mem": rng.uniform(30, 80), "swap": rng.uniform(0, 20),
        "disk": rng.uniform(86, 94) if hover else rng.uniform(20, 70), "temp": rng.uniform(40, 70),
        "load1": rng.uniform(0.1, 2.0),
    }


async def build(work: Path, nodes: int, rules: int) -> tuple[Writer, Registry, AlertEngine, CountingSink]:
    path = work / db.DB_FILE
    writer = await started_writer(path)
    registry = Registry(writer, Bus(), offline_after=15, keepalive_interval=5)
    now = time.time()
    rng = random.Random(15)
    for i in range(nodes):
        node = NodeState(id=str(uuid.uuid4()), name=f"node-{i:05}", kind=KINDS[i % 2], group=GROUPS[i % len(GROUPS)],
                         created_at=now, cert_fp=f"fp{i}", token_hash=f"tok{i}", liveness="online", state_since=now,
                         last_seen=now, daemon_version="0.1.0", clock_skew=rng.uniform(-1, 1))
        node.sample = {"ts": now, "throttled": "0x0"}
        node.metrics = sample(node, rng, False)
        for d in range(2):
            token = f"{i:08x}{d:08x}"
            node.demos[token] = {"token": token, "name": f"demo-{d}", "pid": 100 + d, "state": "alive",
                                 "started_at": now - 600, "exited_at": None, "header": {}, "last_heartbeat": now}
        registry.add(node)
    await writer.submit(lambda c: [store.create_node(n.id, n.name, n.kind, n.group, now, n.cert_fp, "", n.token_hash)(c)
                                   for n in registry.all()])
    sink = CountingSink()
    engine = AlertEngine(writer, registry, registry.bus, interval=10, startup_grace_s=0, release=lambda: "0.1.0",
                         sink=sink)
    await engine.load(await db.connect(path))
    for spec in operator_rules(rules):
        await engine.add_rule(spec, "bench")
    return writer, registry, engine, sink


class LoopTurns:
    """The longest the event loop kept another task waiting while this block ran (a task taking a
    turn as often as it can and noting the gaps)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _turns(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._turns())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def measure(args: argparse.Namespace, work: Path) -> Report:
    report = Report("alert evaluation (central/alerts/engine.py)")
    writer, registry, engine, sink = await build(work, args.nodes, args.operator_rules)
    rules = sum(1 for r in engine.rules.values() if r.enabled)
    report.params.update(nodes=args.nodes, rules=rules, passes=args.passes, interval=f"{args.interval:g} s")
    nodes = registry.all()
    rng = random.Random(1)
    hovering = set(rng.sample(range(len(nodes)), max(1, len(nodes) // 50)))
    try:
        await engine.evaluate()  # warm-up: caches, first alerts
        cpu: list[float] = []
        held: list[float] = []
        for _ in range(args.passes):
            for i, node in enumerate(nodes):  # what the node sessions do between passes (not timed)
                registry.set_metrics(node, {"ts": time.time(), "throttled": "0x0"}, sample(node, rng, i in hovering))
            started = time.process_time()
            async with LoopTurns() as turns:
                await engine.evaluate()
            cpu.append(time.process_time() - started)
            held.append(turns.longest)
        steady = sorted(cpu)[len(cpu) // 2]
        share = steady / args.interval * 100
        report.add("CPU per full pass (median)", steady * 1000, "ms")
        report.add("CPU per full pass (max)", max(cpu) * 1000, "ms")
        report.add(f"share of one core at one pass every {args.interval:g} s", share, "%",
                   target=f"< {TARGET_SHARE:g} %", ok=share < TARGET_SHARE)
        report.add("per node and rule", steady / (len(nodes) * rules) * 1e6, "µs")
        report.add("longest the event loop waited during a pass (max)", max(held) * 1000, "ms")
        report.add("alerts open after the passes (hovering disks)", len(engine.open_alerts()))

        dark = nodes[: len(nodes) // 4]
        commits = writer.commits
        for node in dark:
            node.liveness, node.state_since = "offline", time.time()
        started = time.process_time()
        await engine.evaluate()
        report.add(f"pass opening {len(dark)} node_offline alerts", (time.process_time() - started) * 1000, "ms")
        report.add("  commits for it", writer.commits - commits, target="1", ok=writer.commits - commits == 1)
        for node in dark:
            node.liveness = "online"
        started = time.process_time()
        await engine.evaluate()
        report.add(f"pass resolving {len(dark)} alerts", (time.process_time() - started) * 1000, "ms")

        one = nodes[-1]
        started = time.process_time()
        for _ in range(100):
            await engine.evaluate([one.id])
        report.add("pass woken by one node's event", (time.process_time() - started) * 10, "ms")

        lines = [{"seq": i, "ts": 0.0, "source": "demo" if i % 2 else "system", "unit": f"u{i % 4}", "demo": "",
                  "level": ("INFO", "WARNING", "ERROR")[i % 3], "msg": f"line {i}: usb 1-{i % 7}: reset done" * 2}
                 for i in range(100)]
        batches = 200
        started = time.process_time()
        for b in range(batches):
            engine.observe_logs(nodes[b % len(nodes)], lines)
        per_line = (time.process_time() - started) / (batches * len(lines))
        report.add("log rules: CPU per line", per_line * 1e6, "µs")
        report.add("  share of one core at 10,000 lines/s", per_line * 10_000 * 100, "%")
        report.add("notices handed to the sink", sink.notices)
        report.note("in-process: the engine, the real writer (its thread's CPU included) and a real SQLite file; "
                    "node sessions' work between passes is not timed")
    finally:
        await writer.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("alerts_eval", __doc__, nodes=2000, nodes_are="nodes in the registry")
    p.add_argument("--passes", type=positive_int, default=30, help="timed full passes (30)")
    p.add_argument("--operator-rules", type=int, default=9, help="operator rules beside the 11 stock ones (9)")
    p.add_argument("--interval", type=positive_float, default=10.0,
                   help="seconds between passes, for the share of a core (10, the server's default)")
    add_common_args(p)
    return run_bench(p.parse_args(argv), "alerts", measure)


if __name__ == "__main__":
    raise SystemExit(main())
