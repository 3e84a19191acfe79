"""What routing through another replica adds (issue 18 step 5): `dvic run NODE -- true` through the
API and a shell keystroke's echo, the operator on the node's own replica (r1) and on another (r2),
in alternating rounds so both see the same load.

Everything is real: a throw-away PostgreSQL cluster (tests/support/postgres.py), two `dvic-central`
replicas on it sharing one data dir (tests/support/replicas.py), one real node daemon connected
to r1. The measuring loops are bench.remote's (the one-server figures of docs/performance.md).

    python3 -m bench.routing [--rounds 5] [--runs 40] [--keystrokes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from tests.support.daemon import enrolled_daemon, wait_connected
from tests.support.postgres import shared_cluster
from tests.support.replicas import Replicas, toward_fields
from tests.support.server import CentralServer
from tests.support.wait import wait_for

from .common import add_common_args, positive_int, work_dir
from .remote import api_round_trips, fmt, percentiles, remote_echo

NODE = "bench-routed"


def seen_connected(server: CentralServer) -> bool:
    """The daemon dials r1 only: connected as r2 sees it is r1's session."""
    return bool(server.node(NODE).get("connected"))


async def measure(servers: dict[str, CentralServer], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {side: {"run": [], "key": []} for side in servers}
    for round_no in range(args.rounds):
        for side, server in servers.items():
            samples[side]["run"] += await api_round_trips(server, NODE, args.runs)
            samples[side]["key"] += await remote_echo(server, NODE, args.keystrokes)
        print(f"round {round_no + 1}/{args.rounds} done, load {os.getloadavg()[0]:.1f}", flush=True)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.routing", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds (r1 then r2 each)")
    p.add_argument("--runs", type=positive_int, default=40, help="`run NODE -- true` per side per round")
    p.add_argument("--keystrokes", type=positive_int, default=100, help="keystrokes per side per round")
    add_common_args(p)
    args = p.parse_args(argv)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load before: {load_before}")
    with work_dir(args.work_dir, args.keep, "routing") as work:
        with Replicas(work / "data", shared_cluster().fresh_database(), count=2) as (r1, r2):
            _, daemon = enrolled_daemon(r1, work / NODE, name=NODE, bundle_overrides=toward_fields(r1))
            with daemon:
                wait_connected(r1, NODE, daemon)
                wait_for(lambda: seen_connected(r2), 30, "r2 to see the node on r1", interval=0.1)
                samples = asyncio.run(measure({"direct (r1)": r1, "routed (r2 via r1)": r2}, args))
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for side, got in samples.items():
        figures[side] = {what: percentiles(values) for what, values in got.items()}
        print(f"{side}: dvic run -- true (API + stream): {fmt(figures[side]['run'])}")
        print(f"{side}: keystroke to echo:               {fmt(figures[side]['key'])}")
    direct, routed = figures["direct (r1)"], figures["routed (r2 via r1)"]
    for what, label in (("run", "command"), ("key", "keystroke")):
        print(f"added by routing, {label}: p50 {routed[what]['p50'] - direct[what]['p50']:+.1f} ms, "
              f"p99 {routed[what]['p99'] - direct[what]['p99']:+.1f} ms")
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load_before, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
