"""Keep-alive throughput: POST /api/v1/keepalive over many persistent HTTPS connections.

    python3 -m bench.keepalive [--conns 256] [--duration 15] [--client auto|wrk|python|both]

The load comes from a separate process: `wrk` when it is installed (C, cheap per request),
else (or also, with --client both) the small Python client in bench/http_load.py. Each request
carries an ESP32-like body, so every keep-alive is stored as metrics before the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from . import common, procstat
from .common import add_common_args, positive_float, positive_int
from .enroll import enroll_server_fleet
from .report import Report
from .workers import Worker

TARGET_RPS = 5_000
BODY = {"uptime": 86400, "free_mem": 81234, "rssi": -61, "firmware": "esp32-demo-1.4.2"}

WRK_SCRIPT = """
local tokens = {%(tokens)s}
local body = '%(body)s'
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/api/v1/keepalive",
    {["Authorization"] = "Bearer " .. tokens[(i %% #tokens) + 1], ["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d,' ..
    '"p50_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


async def warm_up(url: str, ca: Path, tokens: list[str]) -> None:
    """One keep-alive per node first: each turns online once, outside the measured window."""
    ctx = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, ssl=ctx)) as session:

        async def one(token: str) -> None:
            async with session.post(f"{url}/api/v1/keepalive", json=BODY,
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"warm-up keep-alive: HTTP {resp.status} {await resp.text()}")

        await asyncio.gather(*(one(t) for t in tokens))


def run_wrk(url: str, tokens: list[str], work: Path, conns: int, threads: int, duration: float) -> dict[str, Any]:
    script = work / "keepalive.lua"
    script.write_text(WRK_SCRIPT % {"tokens": ", ".join(json.dumps(t) for t in tokens),
                                    "body": json.dumps(BODY)})
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(script), f"{url}/api/v1/keepalive"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    found = re.search(r"^WRKJSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    raw = json.loads(found.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]}
    return {
        "requests": raw["requests"], "seconds": seconds, "non_2xx": raw["status"], "errors": errors,
        "latency": {"p50": raw["p50_us"] / 1e6, "p99": raw["p99_us"] / 1e6, "max": raw["max_us"] / 1e6},
    }


async def run_python(url: str, ca: Path, tokens_file: Path, work: Path, conns: int, procs: int,
                     duration: float) -> dict[str, Any]:
    share = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    workers = [Worker(f"http-load-{i}", "bench.http_load", [
        "--url", f"{url}/api/v1/keepalive", "--ca", str(ca), "--tokens", str(tokens_file),
        "--conns", str(n), "--duration", str(duration), "--body", json.dumps(BODY),
    ], work) for i, n in enumerate(share) if n > 0]
    try:
        for w in workers:
            await w.start()
        for w in workers:
            await w.expect("ready", timeout=90)
        for w in workers:
            await w.send("go")
        results = [await w.expect("result", timeout=duration + 60) for w in workers]
        for w in workers:
            await w.finish()
    finally:
        for w in workers:
            w.kill()
    for r in results:
        if r.get("error"):
            raise RuntimeError(f"http_load: {r['error']}")
    requests = sum(r["requests"] for r in results)
    seconds = max(r["seconds"] for r in results)
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    # Percentiles of the busiest process stand for all (their loads are equal shares).
    latency = max((r["latency"] for r in results), key=lambda lat: lat.get("count", 0))
    return {
        "requests": requests, "seconds": seconds, "non_2xx": sum(v for k, v in statuses.items() if k != "200"),
        "errors": errors, "latency": latency, "client_cpu_s": sum(r["cpu_s"] for r in results),
    }


def stored_keepalives(db_path: Path) -> int:
    return int(common.query_db(db_path, "SELECT count(*) FROM metrics_raw WHERE name = 'rssi'")[0][0])


def pick_clients(choice: str) -> list[str]:
    have_wrk = shutil.which("wrk") is not None
    if choice == "auto":
        return ["wrk" if have_wrk else "python"]
    if choice == "both":
        return (["wrk"] if have_wrk else []) + ["python"]
    if choice == "wrk" and not have_wrk:
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk), or use --client python")
    return [choice]


async def run(args: argparse.Namespace, work: Path) -> Report:
    clients = pick_clients(args.client)
    report = Report("Central server: keep-alives", params={
        "conns": args.conns, "duration_s": args.duration, "nodes": args.nodes, "clients": "+".join(clients),
    })
    # Every simulated board connects from 127.0.0.1: lift the per-address bound above them
    # (a real lab's boards have their own addresses, or share a NAT: docs/operations.md).
    # A 1 ms interval (the shortest the limits honour) allows each board 2,000 keep-alives/s: the
    # bench's few boards stand for a fleet thousands of times larger.
    server = common.bench_server(work / "central", args.whatif_ssl_buffer, report, interval=0.001,
                                 offline_after=3600,
                                 extra_args=("--max-connections-per-address", str(args.conns + 64))).start()
    completed = 0
    try:
        fleet = await enroll_server_fleet(server, work, args.nodes, prefix="esp")
        tokens = [n.token for n in fleet.nodes]
        tokens_file = work / "tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        await warm_up(server.url, server.ca_path, tokens)
        completed += len(tokens)
        for client in clients:
            before = procstat.read(server.pid)
            if client == "wrk":
                result = await asyncio.to_thread(run_wrk, server.url, tokens, work, args.conns, args.threads,
                                                 args.duration)
            else:
                result = await run_python(server.url, server.ca_path, tokens_file, work, args.conns, args.procs,
                                          args.duration)
            after = procstat.read(server.pid)
            completed += result["requests"]
            _add_result(report, client, result, before, after)
        peak = procstat.read(server.pid).peak_rss_bytes
    finally:
        server.stop()
    stored = stored_keepalives(server.db_path)
    report.add("keep-alives answered / stored", f"{completed:,} / {stored:,}", target="stored >= answered",
               ok=stored >= completed)
    report.add("server peak RSS", round(peak / 1e6, 1), "MB")
    return report


def _add_result(report: Report, client: str, r: dict[str, Any], before: procstat.ProcSample,
                after: procstat.ProcSample) -> None:
    rps = r["requests"] / r["seconds"] if r["seconds"] else 0.0
    lat = r["latency"]
    report.add(f"[{client}] requests/s", rps, "req/s", target=f">= {TARGET_RPS:,}", ok=rps >= TARGET_RPS)
    report.add(f"[{client}] requests", r["requests"])
    report.add(f"[{client}] latency p50 / p99 / max",
               f"{lat['p50'] * 1000:.1f} / {lat['p99'] * 1000:.1f} / {lat['max'] * 1000:.1f}", "ms")
    report.add(f"[{client}] non-2xx responses", r["non_2xx"], target="0", ok=r["non_2xx"] == 0)
    if r["errors"]:
        report.add(f"[{client}] socket errors", json.dumps(r["errors"]))
    report.add(f"[{client}] server CPU (all / event loop)", f"{procstat.cpu_percent(before, after):.0f} / "
               f"{procstat.main_thread_percent(before, after):.0f}", "% of one core")
    report.add(f"[{client}] event loop waiting for a CPU", round(procstat.main_wait_percent(before, after), 1),
               "% of the time")
    report.add(f"[{client}] machine CPU pressure (PSI some)",
               round(procstat.machine_stall_percent(before, after), 1), "% of the time")
    if "client_cpu_s" in r and r["seconds"]:
        report.add(f"[{client}] client CPU", round(100 * r["client_cpu_s"] / r["seconds"], 1), "% of one core")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser("keepalive", __doc__, nodes=100, nodes_are="enrolled boards whose tokens are used")
    p.add_argument("--conns", type=positive_int, default=256, help="concurrent keep-alive connections (256)")
    p.add_argument("--duration", type=positive_float, default=15.0, help="seconds of load per client (15)")
    p.add_argument("--client", choices=("auto", "wrk", "python", "both"), default="auto",
                   help="load generator: wrk if installed (auto), wrk, python, or both in turn")
    p.add_argument("--threads", type=positive_int, default=1, help="wrk threads (1: leave a core to the server)")
    common.add_procs(p, 1, "Python load processes")
    common.add_whatif_ssl_buffer(p)
    add_common_args(p)
    args = p.parse_args(argv)
    if args.procs > args.conns:
        p.error("--procs: more processes than connections")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pick_clients(args.client)  # refuse a missing wrk before starting anything
    return common.run_bench(args, "keepalive", run)


if __name__ == "__main__":
    raise SystemExit(main())
