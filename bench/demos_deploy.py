"""Deploying a demo release to a fleet of real daemons (issue 14): time to all healthy, server RSS peak.

    python3 -m bench.demos_deploy [--nodes 100] [--size 50] [--batch K] [--python PY]

Everything is a real process on 127.0.0.1: dvic-central (bench/server.py), --nodes node daemons
(node_script/dvic_node.py, each enrolled with its own bundle, state dir and log dir, in group
`bench`), and on each node the demo the daemon starts through its shim. The release is a tar.gz of
--size MiB (a payload of random bytes, so gzip cannot shrink it, plus dvic-demo.toml and a small
Python program that prints a line and sleeps); it is published through POST /api/v1/demos/releases
(streamed from the file) and deployed with POST /api/v1/deployments {"all": true}. Each daemon
downloads it over its own mutual-TLS connection, checks its sha256, unpacks it (fsynced), starts
the demo and reports `healthy` (3 s alive: the release has no heartbeat_s).

Figures: the time from the deploy request to the deployment `done` with every node healthy (target
< 60 s), each node's time to healthy (p50/p90/max), the server's RSS peak over publish and deploy
(target < 400 MB: releases are streamed from disk, never held in memory) and its CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.daemon import Fleet
from tests.support.demos import kill_demos as kill_node_demos
from tests.support.server import CentralServer
from tests.support.wait import wait_for

from . import procstat
from .common import add_common_args, bench_server, positive_float, positive_int, run_bench
from .daemon_rig import RIG_FAILURES, RigError, enroll
from .report import Report, latency_summary

TARGET_S = 60.0
TARGET_RSS_MB = 400.0
MB = 1024 * 1024
# Per node, the time between the first poll that saw one state and the first that saw the next
# (polled every 0.25 s: a state shorter than that may be missed).
PHASES = {"download": ("downloading", "verifying"), "verify": ("verifying", "installing"),
          "unpack": ("installing", "starting"), "start to healthy": ("starting", "healthy")}
DEMO = "import time\nprint('bench demo up', flush=True)\nwhile True:\n    time.sleep(3600)\n"


def build_release(path: Path, size_mib: float, python: str) -> Path:
    """dvic-demo.toml + app.py + a payload of `size_mib` MiB of random bytes, as a tar.gz."""
    manifest = (f'name = "bench-demo"\nversion = "1.0.0"\nrun = ["{python}", "app.py"]\n'
                'start_timeout_s = 120\nstop_grace_s = 2\n')
    payload = path.with_name("payload.bin")
    rng = random.Random(14)
    with payload.open("wb") as out:
        left = int(size_mib * MB)
        while left > 0:
            chunk = rng.randbytes(min(left, MB))
            out.write(chunk)
            left -= len(chunk)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in (("dvic-demo.toml", manifest.encode()), ("app.py", DEMO.encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, _bytes(data))
        tar.add(payload, arcname="payload.bin")
    payload.unlink()
    return path


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def publish(server: CentralServer, archive: Path) -> dict[str, Any]:
    with archive.open("rb") as body:
        req = urllib.request.Request(server.url + "/api/v1/demos/releases", method="POST", data=body, headers={
            "Authorization": f"Bearer {server.admin_token}", "Content-Type": "application/gzip",
            "Content-Length": str(archive.stat().st_size)})
        try:
            with urllib.request.urlopen(req, context=server.ssl_context, timeout=600) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RigError(f"publish: HTTP {exc.code} {exc.read()[:300]!r}") from None


class RssSampler(threading.Thread):
    """The server's RSS every 50 ms until stopped (its peak is the figure)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.tracker = procstat.PeakTracker(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.tracker.sample()


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / procstat.CLOCK_TICKS


def fleet_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += procstat.read(pid).cpu_s
        except ProcessLookupError:
            pass
    return total


def kill_demos(root: Path) -> None:
    """End the demos every node of the fleet started (they outlive their daemons by design)."""
    for state in root.glob("node-*/state"):
        kill_node_demos(state)


def run(root: Path, args: argparse.Namespace, report: Report) -> None:
    server = bench_server(root / "central", extra_args=("--demo-install-timeout", "600"))
    fleet = Fleet(args.python, how="source", timings=())  # the daemons' own timings, each in its own group
    try:
        server.start()
        bundles = []
        for i in range(args.nodes):
            home = root / f"node-{i:04d}"
            home.mkdir(parents=True)
            bundles.append(home / "bundle.json")
        with ThreadPoolExecutor(8) as pool:  # enrollment makes a key and certificate per node
            list(pool.map(lambda i, path: enroll(server, f"bench-{i:04d}", path), range(args.nodes), bundles))
        fleet.start(bundles)

        def online() -> bool:
            if fleet.dead():
                raise RigError(f"{len(fleet.dead())} daemon(s) exited; see {root}/node-*/daemon.log")
            _, body = server.api("GET", "/api/v1/nodes")
            return sum(1 for n in body["nodes"] if n.get("connected")) == args.nodes

        wait_for(online, args.timeout, f"{args.nodes} daemons online", interval=0.5)
        archive = build_release(root / "bench-demo.tar.gz", args.size, args.python)
        sampler = RssSampler(server.pid)
        sampler.start()
        before = procstat.read(server.pid)
        t0 = time.perf_counter()
        published = publish(server, archive)
        report.add("publish (upload, hash, check)", time.perf_counter() - t0, "s")
        daemon_pids = [d.pid for d in fleet.daemons]
        daemons_before, machine_before, server_before = fleet_cpu_s(daemon_pids), machine_busy_s(), \
            procstat.read(server.pid)
        body: dict[str, Any] = {"demo": "bench-demo", "version": "1.0.0", "all": True}
        if args.batch:
            body["batch"] = args.batch
        start_wall = time.time()
        t0 = time.perf_counter()
        status, dep = server.api("POST", "/api/v1/deployments", body)
        if status != 201:
            raise RigError(f"deploy: HTTP {status} {dep}")

        first_seen: dict[str, dict[str, float]] = {}  # node -> state -> seconds after the request

        def ended() -> dict[str, Any] | None:
            _, doc = server.api("GET", f"/api/v1/deployments/{dep['id']}")
            now = time.perf_counter() - t0
            for n in doc["nodes"]:
                first_seen.setdefault(n["node"], {}).setdefault(n["state"], now)
            return doc if doc["state"] != "rolling" else None

        final = wait_for(ended, args.timeout, "the deployment to end", interval=0.25)
        elapsed = time.perf_counter() - t0
        after = procstat.read(server.pid)
        daemons_cpu = fleet_cpu_s(daemon_pids) - daemons_before
        machine_cpu = machine_busy_s() - machine_before
        server_cpu = after.cpu_s - server_before.cpu_s
        sampler.done.set()
        sampler.join()
        healthy = [n for n in final["nodes"] if n["state"] == "healthy"]
        report.add("release size", published["size"] / MB, "MiB")
        report.add("deployment state", final["state"])
        report.add("nodes healthy", f"{len(healthy)}/{args.nodes}")
        ok = final["state"] == "done" and len(healthy) == args.nodes
        report.add("deploy to all healthy", elapsed, "s", target=f"< {TARGET_S:g} s", ok=ok and elapsed < TARGET_S)
        per_node = latency_summary([n["updated_at"] - start_wall for n in healthy])
        report.add("node healthy after (p50/p90/max)",
                   f"{per_node['p50']:.1f} / {per_node['p90']:.1f} / {per_node['max']:.1f}", "s")
        for phase, (start, end) in PHASES.items():
            spans = [seen[end] - seen[start] for seen in first_seen.values() if start in seen and end in seen]
            if spans:
                summary = latency_summary(spans)
                report.add(f"  {phase} (p50/max)", f"{summary['p50']:.1f} / {summary['max']:.1f}", "s")
        peak_mb = sampler.tracker.peak_rss_bytes / MB
        report.add("server RSS peak", peak_mb, "MB", target=f"< {TARGET_RSS_MB:g} MB", ok=peak_mb < TARGET_RSS_MB)
        report.add("server CPU (publish + deploy)", procstat.cpu_percent(before, after), "% of a core")
        report.add("CPU during the deploy: server", server_cpu, "s")
        report.add("CPU during the deploy: daemons", daemons_cpu, "s")
        report.add("CPU during the deploy: other processes", machine_cpu - server_cpu - daemons_cpu, "s")
        report.note(f"the machine had {elapsed * (os.cpu_count() or 1):.0f} CPU-seconds during the deploy; "
                    "other processes' share is work this benchmark did not start (a shared machine)")
        report.add("bytes served to nodes", args.nodes * published["size"] / MB, "MiB")
        if not ok:
            states: dict[str, int] = {}
            for n in final["nodes"]:
                states[n["state"]] = states.get(n["state"], 0) + 1
            report.note(f"not all healthy: {states}; {final.get('message')}")
    finally:
        fleet.stop()
        kill_demos(root)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.demos_deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=positive_int, default=100, help="daemons to deploy to (default 100)")
    parser.add_argument("--size", type=positive_float, default=50.0, help="release size in MiB (default 50)")
    parser.add_argument("--batch", type=positive_int, help="canary batch size (default: all at once)")
    parser.add_argument("--python", default=sys.executable, help="the daemons' interpreter")
    parser.add_argument("--timeout", type=positive_float, default=600.0, help="seconds for each phase")
    add_common_args(parser)
    args = parser.parse_args(argv)
    return run_bench(args, "demos-deploy", measure, run=None, fails=RIG_FAILURES)


def measure(args: argparse.Namespace, root: Path) -> Report:
    report = Report("demo deploy to a fleet of real daemons",
                    params={"nodes": args.nodes, "size": f"{args.size:g} MiB", "batch": args.batch or "all"})
    run(root, args, report)
    return report


if __name__ == "__main__":
    sys.exit(main())
