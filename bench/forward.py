"""What a feature area's API call costs when the operator lands on a replica that does not lead the
feature areas (issue 18; central/cluster/forward.py): the call goes on to the leader over HTTPS and
its answer comes back. Measured on the leader directly and through the other replica, in
alternating rounds so both see the same load: a read (`GET /api/v1/rules`), a write and its undo
(`POST /api/v1/silences`, `DELETE /api/v1/silences/{id}`), and a release upload (streamed).

Everything is real: a throw-away PostgreSQL cluster (tests/support/postgres.py), two `dvic-central`
replicas on it sharing one data dir (tests/support/replicas.py). The client keeps its HTTPS
connection open, as `dvic` and the console do.

    python3 -m bench.forward [--rounds 5] [--calls 100] [--upload-mib 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import ssl
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from central.cluster.leader import holders
from tests.support.postgres import shared_cluster
from tests.support.replicas import Replicas
from tests.support.server import CentralServer
from tests.support.wait import wait_for

from .common import add_common_args, positive_int, work_dir
from .remote import fmt, percentiles


async def leader_name(url: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(url)
        try:
            held = await holders(conn, ["features"])
        finally:
            await conn.close()
        if "features" in held:
            return held["features"]
        await asyncio.sleep(0.2)
    raise SystemExit("no replica took the features lock within 30 s")


def release_bytes(mib: int, version: str) -> bytes:
    """A release archive of about `mib` MiB (random bytes do not compress)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in (("dvic-demo.toml", f'name = "bench"\nversion = "{version}"\nrun = ["true"]\n'.encode()),
                           ("blob.bin", os.urandom(mib * 1024 * 1024))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


ANSWERED: dict[str, set[str]] = {}  # url -> who answered (X-Dvic-Answered-By: forwarded; "" directly)


async def timed(http: aiohttp.ClientSession, method: str, url: str, token: str, **kw: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kw) as resp:
        body = await resp.json()
        if resp.status >= 300:
            raise SystemExit(f"{method} {url}: HTTP {resp.status} {body}")
        ANSWERED.setdefault(url.split("/api/")[0], set()).add(resp.headers.get("X-Dvic-Answered-By", ""))
    return time.perf_counter() - started, body


async def measure(servers: dict[str, CentralServer], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {side: {"read": [], "write": [], "upload": []} for side in servers}
    any_server = next(iter(servers.values()))
    context = ssl.create_default_context(cafile=str(any_server.ca_path))
    token = any_server.admin_token
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        for round_no in range(args.rounds):
            for side, server in servers.items():
                for _ in range(args.calls):
                    took, _ = await timed(http, "GET", server.url + "/api/v1/rules", token)
                    samples[side]["read"].append(took)
                for _ in range(args.calls // 2):
                    took, silence = await timed(http, "POST", server.url + "/api/v1/silences", token,
                                                json={"group": "bench", "for": "1h", "note": "bench"})
                    took_undo, _ = await timed(http, "DELETE", f"{server.url}/api/v1/silences/{silence['id']}", token)
                    samples[side]["write"] += [took, took_undo]
                data = release_bytes(args.upload_mib, f"1.{round_no}.{len(samples[side]['upload'])}-{side[:1]}")
                took, _ = await timed(http, "POST", server.url + "/api/v1/demos/releases", token, data=data)
                samples[side]["upload"].append(took)
            print(f"round {round_no + 1}/{args.rounds} done, load {loads()}", flush=True)
    return samples


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m bench.forward", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds (leader, then the other)")
    p.add_argument("--calls", type=positive_int, default=100, help="reads (and as many writes) per side per round")
    p.add_argument("--upload-mib", type=positive_int, default=16, help="size of the release uploaded per round")
    add_common_args(p)
    return p


def loads() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace) -> tuple[dict[str, CentralServer], dict[str, dict[str, list[float]]]]:
    """Two replicas: the samples of the leader called directly and of the other one forwarding."""
    with work_dir(args.work_dir, args.keep, "forward") as work:
        url = shared_cluster().fresh_database()
        with Replicas(work / "data", url, count=2, extra_args=("--max-release-bytes", str(1 << 30))) as (r1, r2):
            name = asyncio.run(leader_name(url))
            leader, other = (r1, r2) if name == "r1" else (r2, r1)
            wait_for(lambda: other.api("GET", "/api/v1/rules")[0] == 200, 30, "the other replica to forward",
                     interval=0.1)
            sides = {f"direct ({leader.name})": leader, f"forwarded ({other.name} to {leader.name})": other}
            return sides, asyncio.run(measure(sides, args))


def report(sides: dict[str, CentralServer], samples: dict[str, dict[str, list[float]]],
           upload_mib: int) -> dict[str, dict[str, dict[str, float]]]:
    figures = {side: {what: percentiles(values) for what, values in got.items()} for side, got in samples.items()}
    for side, server in sides.items():
        rates = [upload_mib / s for s in samples[side]["upload"]]
        print(f"{side}: GET /api/v1/rules:           {fmt(figures[side]['read'])}\n"
              f"{side}: POST/DELETE a silence:       {fmt(figures[side]['write'])}\n"
              f"{side}: {upload_mib} MiB release upload: {fmt(figures[side]['upload'])}, "
              f"{min(rates):.0f}-{max(rates):.0f} MiB/s\n"
              f"{side}: answered by {sorted(ANSWERED.get(server.url, set()))} ('': the replica called)")
    direct, forwarded = (figures[s] for s in sides)
    for what in ("read", "write", "upload"):
        print(f"added by forwarding, {what}: p50 {forwarded[what]['p50'] - direct[what]['p50']:+.1f} ms, "
              f"p99 {forwarded[what]['p99'] - direct[what]['p99']:+.1f} ms")
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    load_before = loads()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load before: {load_before}")
    figures = report(*run(args), args.upload_mib)
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load_before, "figures": figures}, indent=2))
    print(f"load after: {loads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
