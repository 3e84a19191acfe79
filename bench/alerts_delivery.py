"""Notification delivery: 500 nodes going offline together, and the time from submit to receiver.

    python3 -m bench.alerts_delivery [--nodes 500] [--sweeps 5] [--singles 20]

The server's own pieces on a fresh database with the server's schema: central's writer and the
notification dispatcher (central/alerts/dispatcher.py) at its default settings, two webhook
channels on real HTTP receivers (aiohttp on 127.0.0.1, in a thread of their own) and two routes,
`hall-a` (any severity) -> `hall` and `*` (critical) -> `pager`.

- burst: `--nodes` offline notices of hall-a, submitted as the engine would notice them over
  `--sweeps` sweeps `--sweep-every` seconds apart; counts the messages each receiver got (the
  target: one per route) and the subjects they list, the time each `submit` took (a DB commit:
  the engine never waits longer), and from the last submit to each message's arrival.
- singles: `--singles` alerts one at a time (the next once the previous arrived): time from
  `submit` to the receiver, at the default quiet time (1.5 s: how long a lone alert waits for
  company) and with a 10 ms quiet time (what delivery itself costs: commit, claim, POST).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from central import db
from central.alerts.channels.spec import parse_channel
from central.alerts.dispatcher import Dispatcher
from central.alerts.model import Alert, Notice
from central.config import Config, Notify
from central.writer import Writer
from tests.support.database import started_writer

from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .report import Report, latency_summary


class Receiver:
    """A webhook receiver on its own thread and loop: records (arrival time, body) per path."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[tuple[float, dict[str, object]]]] = {}
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrivals.setdefault(request.match_info["name"], []).append((time.time(), body))
        return web.Response(text="ok")

    def count(self, name: str) -> int:
        return len(self.arrivals.get(name, []))

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def offline(node: int, group: str = "hall-a") -> Notice:
    now = time.time()
    alert = Alert(id=node, rule="node_offline", subject=f"node:pi-{node}", node=f"pi-{node}", group=group,
                  kind="pi", severity="critical", state="firing", summary=f"pi-{node} offline for 16 s", started=now)
    return Notice(kind="firing", alert=alert, at=now)


async def wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def open_dispatcher(data_dir: Path, settings: Notify) -> tuple[Writer, Dispatcher]:
    path = data_dir / db.DB_FILE  # data_dir made by main (no blocking calls in the loop)
    writer = await started_writer(path, Config.commit_interval)
    read_db = await db.connect(path)
    sink = Dispatcher(writer, read_db, settings)
    await sink.start()
    return writer, sink


async def close_dispatcher(writer: Writer, sink: Dispatcher) -> None:
    await sink.close()
    await sink.read_db.close()
    await writer.close()


async def burst(work: Path, settings: Notify, receiver: Receiver, nodes: int, sweeps: int, sweep_every: float,
                report: Report) -> None:
    writer, sink = await open_dispatcher(work, settings)
    try:
        for name in ("hall", "pager"):
            await sink.add_channel(parse_channel(name, "webhook", {"url": f"http://127.0.0.1:{receiver.port}/{name}"}),
                                   "bench")
        await sink.add_route("hall-a", "*", "hall", "bench")
        await sink.add_route("*", "critical", "pager", "bench")
        submits: list[float] = []
        per_sweep = -(-nodes // sweeps)
        for sweep in range(sweeps):
            started = time.perf_counter()
            await sink.submit([offline(n) for n in range(sweep * per_sweep, min(nodes, (sweep + 1) * per_sweep))])
            submits.append(time.perf_counter() - started)
            if sweep < sweeps - 1:
                await asyncio.sleep(sweep_every)
        last_submit = time.time()
        await wait_until(lambda: receiver.count("hall") and receiver.count("pager"), settings.group_window + 30)
        await asyncio.sleep(settings.group_window)  # anything more that would (wrongly) follow
        counts = {name: receiver.count(name) for name in ("hall", "pager")}
        report.add("burst: messages at the receivers (hall / pager)", f"{counts['hall']} / {counts['pager']}",
                   target="1 / 1 (one per route)", ok=counts == {"hall": 1, "pager": 1})
        listed = [int(body["count"]) for name in ("hall", "pager")  # type: ignore[call-overload]
                  for _, body in receiver.arrivals.get(name, [])]
        report.add("burst: subjects in those messages", " / ".join(map(str, listed)),
                   target=f"{nodes} each", ok=listed == [nodes, nodes])
        report.add("burst: submit() per sweep, max", max(submits) * 1000, "ms")
        arrivals = [t - last_submit for name in ("hall", "pager") for t, _ in receiver.arrivals.get(name, [])]
        report.add("burst: last submit -> message at the receiver", max(arrivals) if arrivals else float("nan"), "s",
                   target=f"<= group quiet ({settings.group_quiet:g} s) + delivery")
    finally:
        await close_dispatcher(writer, sink)


async def singles(work: Path, settings: Notify, receiver: Receiver, count: int, label: str, report: Report) -> None:
    quiet = settings.group_quiet
    writer, sink = await open_dispatcher(work, settings)
    name = f"single-{label}"
    try:
        await sink.add_channel(parse_channel(name, "webhook", {"url": f"http://127.0.0.1:{receiver.port}/{name}"}),
                               "bench")
        latencies = []
        for i in range(count):
            submitted = time.time()
            await sink.submit([offline(10_000 + i, group="hall-b")])
            await wait_until(lambda i=i: receiver.count(name) > i, quiet + 30)  # type: ignore[misc]
            latencies.append(receiver.arrivals[name][i][0] - submitted)
        summary = latency_summary(latencies)
        report.add(f"one alert, quiet {quiet:g} s: submit -> receiver p50", summary["p50"], "s")
        report.add(f"one alert, quiet {quiet:g} s: submit -> receiver max", summary["max"], "s")
    finally:
        await close_dispatcher(writer, sink)


def measure(args: argparse.Namespace, work: Path) -> Report:
    settings = Notify(group_window=args.window, group_quiet=args.quiet)
    report = Report("Notifications: grouping and delivery", params={
        "nodes": args.nodes, "sweeps": f"{args.sweeps}, {args.sweep_every:g} s apart", "singles": args.singles,
        "group window": settings.group_window, "group quiet": settings.group_quiet,
    })
    for name in ("burst", "singles", "singles-short"):
        (work / name).mkdir()
    receiver = Receiver()
    try:
        asyncio.run(burst(work / "burst", settings, receiver, args.nodes, args.sweeps, args.sweep_every, report))
        asyncio.run(singles(work / "singles", settings, receiver, args.singles, "default", report))
        asyncio.run(singles(work / "singles-short", replace(settings, group_quiet=0.01), receiver, args.singles,
                            "short", report))
    finally:
        receiver.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("alerts_delivery", __doc__, nodes=500, nodes_are="nodes going offline together")
    p.add_argument("--sweeps", type=positive_int, default=5, help="sweeps of the engine that notice them (5)")
    p.add_argument("--sweep-every", type=positive_float, default=1.0,
                   help="seconds between sweeps (1: the server's presence sweep)")
    p.add_argument("--singles", type=positive_int, default=20, help="lone alerts timed one by one (20)")
    p.add_argument("--window", type=positive_float, default=Notify.group_window,
                   help=f"--notify-group-window ({Notify.group_window:g})")
    p.add_argument("--quiet", type=positive_float, default=Notify.group_quiet,
                   help=f"--notify-group-quiet ({Notify.group_quiet:g})")
    add_common_args(p)
    return run_bench(p.parse_args(argv), "alerts-delivery", measure, run=None)


if __name__ == "__main__":
    raise SystemExit(main())
