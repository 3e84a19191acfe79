"""Console benchmark: the real `dvic` console on a real terminal (PTY) watching a live simulated fleet.

    python3 -m bench.console [--nodes 2000] [--interval 5] [--measure 30] [--keys 40]

Starts a real server, enrolls N nodes and runs them from bench.fleet_worker processes (a metrics
sample every --interval seconds each, so the console receives N/interval node updates a second).
Then starts the console (`DvicApp`, Textual's normal Linux driver) in a child process whose
terminal is a PTY of the given size, drained by this process like a terminal emulator would.
Prints:
- start-up: from spawning the console process to its fleet table holding every node;
- CPU of the console process while it follows the live fleet (no keys pressed), % of one core;
- input latency: a cursor key written to the PTY -> the table's cursor moved and the screen
  refreshed (stamped by the console after the refresh that shows it), p50/p90/max.
Figures only: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import json
import os
import pty
import signal
import struct
import sys
import termios
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import procstat
from .common import add_common_args, add_procs, parser, positive_float, positive_int, run_bench
from .report import Report, latency_summary

# The console's child process runs this module too: what only the bench's side needs (aiohttp
# among it) is imported there, so the child's start-up is the console's own.
if TYPE_CHECKING:
    from tests.support.server import CentralServer

REPO = Path(__file__).resolve().parent.parent

TARGET_CPU_PERCENT = 25.0
TARGET_LATENCY_MS = 100.0
TARGET_START_S = 1.5
KEYS = ("\x1b[B", "\x1b[A")  # down, up: the cursor moves every time and stays near the top


# -- the console's side (child process) -------------------------------------------------------------

def child_main(args: argparse.Namespace) -> int:
    """Runs the console on this process's terminal and writes stamps to --stamps (JSON lines)."""
    from textual import events
    from textual.message import Message
    from textual.screen import Screen
    from textual.widgets import DataTable

    import tui.console.app
    from tui.api.config import Settings
    from tui.console.app import DvicApp
    from tui.console.messages import Connected

    stamps = open(args.stamps, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed on exit

    def stamp(event: str, **data: Any) -> None:
        stamps.write(json.dumps({"event": event, "t": time.time(), **data}) + "\n")

    stamp("imported")  # Python started and the console's modules are loaded

    def gc_probe(phase: str, info: dict[str, Any]) -> None:
        # Collections run inside whatever code allocates: a long one stalls the event loop.
        nonlocal gc_started
        if phase == "start":
            gc_started = time.perf_counter()
        else:
            stamp("gc", ms=(time.perf_counter() - gc_started) * 1000, gen=info.get("generation"))

    gc_started = 0.0
    gc.callbacks.append(gc_probe)

    class BenchConsole(DvicApp):
        """The console with probes: first full table, each cursor move once it is on screen, and
        what may hold a key up (node-update passes and their repaint, garbage collections)."""

        CSS_PATH = str(Path(tui.console.app.__file__).with_name("app.tcss"))  # relative paths follow the subclass
        _first_shown = _full_shown = False

        def on_mount(self) -> None:
            stamp("mount")  # Textual calls DvicApp.on_mount as well (handlers run for each class)

        def on_ready(self) -> None:
            self._probe = self.set_interval(0.005, self._check_table)

        async def _on_message(self, message: Message) -> None:
            if not isinstance(message, Connected):
                await super()._on_message(message)
                return
            stamp("snapshot", nodes=len(message.nodes))  # connected, subscribed, the node list read
            await super()._on_message(message)
            stamp("rows")  # the fleet's rows built

        async def on_event(self, event: events.Event) -> None:
            if isinstance(event, events.Key):
                stamp("key_in")  # the key reached the app: the wait before it is the event loop's
            await super().on_event(event)

        def _flush_nodes(self, tick: bool = True) -> None:
            started = time.time()
            super()._flush_nodes(tick)
            stamp("flush", start=started, ms=(time.time() - started) * 1000)
            self.call_after_refresh(lambda: stamp("flush_painted", start=started))

        def _check_table(self) -> None:
            fleet = self.fleet_screen()
            if fleet is None or not fleet.is_mounted:
                return
            table = fleet.query_one(DataTable)
            if table.row_count >= args.expect:
                self._probe.stop()
                self.watch(table, "cursor_coordinate", self._moved, init=False)

        def _display(self, screen: Screen[Any], renderable: Any) -> None:
            """Stamps the first frame written with rows in the fleet table, and the first with all."""
            super()._display(screen, renderable)
            if renderable is None or self._full_shown or self._batch_count:
                return
            fleet = self.fleet_screen()
            if fleet is None or not fleet.is_mounted or screen is not fleet:
                return
            rows = fleet.query_one(DataTable).row_count
            if rows and not self._first_shown:
                self._first_shown = True
                stamp("first_rows", rows=rows)
            if rows >= args.expect:
                self._full_shown = True
                stamp("table", rows=rows)

        def _moved(self) -> None:
            self.call_after_refresh(stamp, "key")

    settings = Settings(args.server, args.token, args.ca)
    profiler = None
    if args.profile and args.profile.endswith((".txt", ".html", ".pyisession")):
        from pyinstrument import Profiler  # a sampling profiler: pip install pyinstrument

        profiler = Profiler(interval=0.001)
        profiler.start()
    elif args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        BenchConsole(settings).run()
    finally:
        gc.callbacks.remove(gc_probe)
        stamps.close()
        if profiler is None:
            pass
        elif args.profile.endswith(".html"):
            profiler.stop()
            Path(args.profile).write_text(profiler.output_html(), encoding="utf-8")
        elif args.profile.endswith(".txt"):
            profiler.stop()
            Path(args.profile).write_text(profiler.output_text(unicode=True, show_all=False), encoding="utf-8")
        elif args.profile.endswith(".pyisession"):
            profiler.stop()
            profiler.last_session.save(args.profile)  # render later: pyinstrument --load FILE
        else:
            profiler.disable()
            profiler.dump_stats(args.profile)
    return 0


# -- the bench's side -------------------------------------------------------------------------------

class ConsoleProcess:
    """The console in a child process on a PTY; the master side is drained like a terminal would."""

    def __init__(self, cols: int, rows: int, argv: list[str]) -> None:
        self.cols, self.rows, self.argv = cols, rows, argv
        self.tail = b""  # the last bytes drawn: what the terminal shows when something goes wrong
        self.master = -1
        self.proc: asyncio.subprocess.Process | None = None
        self.output_bytes = 0

    async def start(self) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(self.cols), "LINES": str(self.rows),
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env = {k: v for k, v in env.items() if not k.startswith("DVIC_")}
        # Textual's driver draws on stderr: all three go to the terminal, as in a real session.
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, start_new_session=True)
        finally:
            os.close(slave)
        self.master = master
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._drain)

    def _drain(self) -> None:
        try:
            data = os.read(self.master, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self.output_bytes += len(data)
        self.tail = (self.tail + data)[-4000:]

    def press(self, key: str) -> None:
        os.write(self.master, key.encode())

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError):
                self.press("q")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        if self.master >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = -1


def read_stamps(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict):
                out.append(doc)
    return out


async def wait_stamps(path: Path, event: str, count: int, timeout: float, console: ConsoleProcess) -> list[float]:
    """The times of the first `count` stamps of `event`, polled until they are there or `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got: list[float] = []
    while loop.time() < deadline:
        got = [float(s["t"]) for s in read_stamps(path) if s.get("event") == event]
        if len(got) >= count:
            return got[:count]
        if console.proc is not None and console.proc.returncode is not None:
            break
        await asyncio.sleep(0.02)
    return got


SLOW_KEY_MS = 50.0


def explain_latency(report: Report, stamps: list[dict[str, Any]], keys: list[tuple[float, float]],
                    started: float) -> None:
    """Where a slow key's time went: waiting for the event loop (a node-update pass, its repaint, a
    garbage collection) or the key's own handling and repaint. Only stamps after `started` count."""
    def after(event: str) -> list[dict[str, Any]]:
        return [s for s in stamps if s.get("event") == event and float(s["t"]) >= started]

    flushes = after("flush")
    painted = {float(s["start"]): float(s["t"]) for s in after("flush_painted")}
    windows = [(float(f["start"]), painted.get(float(f["start"]), float(f["t"]))) for f in flushes]
    if flushes:
        compute = latency_summary([float(f["ms"]) for f in flushes])
        whole = latency_summary([(b - a) * 1000 for a, b in windows])
        report.add("node-update pass: apply p50 / max", f"{compute['p50']:.1f} / {compute['max']:.1f}", "ms")
        report.add("node-update pass: apply + repaint p50 / max", f"{whole['p50']:.1f} / {whole['max']:.1f}", "ms")
    pauses = [(float(g["t"]) - float(g["ms"]) / 1000, float(g["t"]), int(g.get("gen") or 0)) for g in after("gc")]
    if pauses:
        longest = max(pauses, key=lambda p: p[1] - p[0])
        report.add("garbage collections: count / longest (generation)",
                   f"{len(pauses)} / {(longest[1] - longest[0]) * 1000:.1f} ({longest[2]})", "ms")
    arrived = sorted(float(s["t"]) for s in after("key_in"))
    waits = []
    for sent_at, shown_at in keys:
        seen = next((t for t in arrived if sent_at <= t <= shown_at), None)
        if seen is not None:
            waits.append(((seen - sent_at) * 1000, (shown_at - seen) * 1000))
    if waits:
        queued = latency_summary([w for w, _ in waits])
        handled = latency_summary([h for _, h in waits])
        report.add("  key waiting for the event loop p50 / max", f"{queued['p50']:.1f} / {queued['max']:.1f}", "ms")
        report.add("  key handled and repainted p50 / max", f"{handled['p50']:.1f} / {handled['max']:.1f}", "ms")
    slow = [(a, b) for a, b in keys if (b - a) * 1000 >= SLOW_KEY_MS]
    if slow:
        def overlaps(spans: list[tuple[float, float]], a: float, b: float) -> bool:
            return any(x < b and y > a for x, y in spans)
        in_flush = sum(overlaps(windows, a, b) for a, b in slow)
        in_gc = sum(overlaps([(x, y) for x, y, _ in pauses], a, b) for a, b in slow)
        report.add(f"  keys >= {SLOW_KEY_MS:.0f} ms: count / during a node-update pass / during a GC",
                   f"{len(slow)} / {in_flush} / {in_gc}")


async def time_node_list(server: CentralServer) -> float:
    """How long the loaded server takes to list every node: the part of start-up that is not the console's."""
    import aiohttp

    best = float("inf")
    connector = aiohttp.TCPConnector(ssl=server.ssl_context)
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for _ in range(2):
            started = time.monotonic()
            async with session.get(f"{server.url}/api/v1/nodes") as resp:
                await resp.read()
            best = min(best, time.monotonic() - started)
    return best


async def run(args: argparse.Namespace, work: Path) -> Report:
    from .common import bench_server
    from .enroll import enroll_server_fleet, save_fleet
    from .workers import Worker

    report = Report("Operator console: live fleet on a real terminal", params={
        "nodes": args.nodes, "interval_s": args.interval, "terminal": f"{args.cols}x{args.rows}",
        "measure_s": args.measure, "keys": args.keys,
    })
    server = bench_server(work / "central").start()
    workers: list[Worker] = []
    console: ConsoleProcess | None = None
    try:
        fleet = await enroll_server_fleet(server, work, args.nodes, prefix="sim", concurrency=32)
        fleet_file = work / "fleet.json"
        save_fleet(fleet, fleet_file)
        # Long enough for the settle time, start-up, the CPU window and the key presses.
        duration = args.settle + 30 + args.measure + args.keys * args.key_gap + 30
        share = [args.nodes // args.procs + (1 if i < args.nodes % args.procs else 0) for i in range(args.procs)]
        first = 0
        for i, count in enumerate(share):
            workers.append(Worker(f"console-fleet-{i}", "bench.fleet_worker", [
                "--fleet", str(fleet_file), "--start", str(first), "--count", str(count),
                "--lines-per-s", "0.01", "--interval", str(args.interval), "--duration", str(duration),
                "--warmup", "0",
            ], work))
            first += count
        for w in workers:
            await w.start()
        ready = [await w.expect("ready", timeout=600) for w in workers]
        connected = sum(r["connected"] for r in ready)
        report.add("simulated nodes connected", f"{connected:,} of {args.nodes:,}", target="all",
                   ok=connected == args.nodes)
        for w in workers:
            await w.send("go")
        await asyncio.sleep(args.settle)  # every node has sent metrics: the stream is at its steady rate
        report.add("node updates offered to the console", round(connected / args.interval), "updates/s")

        report.add("server's answer to GET /api/v1/nodes (2 tries, best)",
                   round(await time_node_list(server), 2), "s")
        stamps = work / "stamps.jsonl"
        argv = [sys.executable, "-m", "bench.console", "--child", "--server", server.url, "--token",
                server.admin_token, "--ca", str(server.ca_path), "--expect", str(connected), "--stamps", str(stamps)]
        if args.profile:
            argv += ["--profile", args.profile]
        console = ConsoleProcess(args.cols, args.rows, argv)
        spawned = time.time()
        await console.start()
        assert console.proc is not None
        table = await wait_stamps(stamps, "table", 1, 60, console)
        if not table:
            shown = console.tail.decode("utf-8", "replace")[-1500:]
            report.note(f"the console did not show the full table within 60 s; its terminal ended with: {shown!r}")
            return report
        first = (await wait_stamps(stamps, "first_rows", 1, 1, console) or table)[0]  # the same frame if all at once
        report.add("start-up to the first paint of the fleet with rows", round(first - spawned, 2), "s",
                   target=f"< {TARGET_START_S} s", ok=first - spawned < TARGET_START_S)
        imported = await wait_stamps(stamps, "imported", 1, 1, console)
        phases = {s["event"]: float(s["t"]) for s in read_stamps(stamps) if s.get("event") in ("mount", "snapshot", "rows")}
        if imported and len(phases) == 3:
            report.add("  Python start and imports", round(imported[0] - spawned, 2), "s")
            report.add("  app set-up (imports done -> mounted)", round(phases["mount"] - imported[0], 2), "s")
            report.add("  connect, subscribe, receive the fleet", round(phases["snapshot"] - phases["mount"], 2), "s")
            report.add("  first rows built", round(phases["rows"] - phases["snapshot"], 2), "s")
            report.add("  until painted", round(first - phases["rows"], 2), "s")
        report.add(f"start-up to the full table ({connected:,} rows) painted", round(table[0] - spawned, 2), "s")

        await asyncio.sleep(3.0)  # past the start-up burst
        before = procstat.read(console.proc.pid)
        before_t = time.time()
        drained_before = console.output_bytes
        await asyncio.sleep(args.measure)
        after = procstat.read(console.proc.pid)
        cpu = procstat.cpu_percent(before, after)
        report.add("console CPU, following the live fleet", round(cpu, 1), "% of one core",
                   target=f"<= {TARGET_CPU_PERCENT:.0f} %", ok=cpu <= TARGET_CPU_PERCENT)
        report.add("console CPU, event loop thread", round(procstat.main_thread_percent(before, after), 1),
                   "% of one core")
        report.add("console waiting for a CPU", round(procstat.main_wait_percent(before, after), 1), "% of the time")
        report.add("terminal output", round((console.output_bytes - drained_before) / args.measure / 1024, 1),
                   "KiB/s")
        report.add("  terminal output before that (start-up, first paints)", round(drained_before / 1024, 1), "KiB")
        report.add("console RSS", round(after.rss_bytes / 1e6, 1), "MB")

        sent: list[float] = []
        for i in range(args.keys):
            sent.append(time.time())
            console.press(KEYS[i % 2])
            got = await wait_stamps(stamps, "key", i + 1, 5, console)
            if len(got) <= i:
                report.note(f"key {i + 1}: no screen update within 5 s")
                break
            await asyncio.sleep(args.key_gap)
        moved = await wait_stamps(stamps, "key", len(sent), 1, console)
        lat = latency_summary([(b - a) * 1000 for a, b in zip(sent, moved, strict=False)])
        report.add("input latency key -> screen p50 / p90 / max",
                   f"{lat['p50']:.1f} / {lat['p90']:.1f} / {lat['max']:.1f}", "ms",
                   target=f"< {TARGET_LATENCY_MS:.0f} ms", ok=lat["max"] < TARGET_LATENCY_MS)
        report.add("  key presses timed", int(lat["count"]))
        explain_latency(report, read_stamps(stamps), list(zip(sent, moved, strict=False)), started=before_t)
        server_cpu = procstat.read(server.pid)
        report.add("server RSS at the end", round(server_cpu.rss_bytes / 1e6, 1), "MB")
    finally:
        if console is not None:
            await console.stop()
        for w in workers:
            w.kill()
        server.stop()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("console", __doc__, nodes=2000, interval=True)
    p.add_argument("--measure", type=positive_float, default=30.0, help="seconds of the CPU window (30)")
    p.add_argument("--keys", type=positive_int, default=40, help="cursor keys pressed, one at a time (40)")
    p.add_argument("--key-gap", type=positive_float, default=0.3, help="seconds between key presses (0.3)")
    p.add_argument("--settle", type=positive_float, default=None,
                   help="seconds of live load before the console starts (default: 1.5 x --interval)")
    p.add_argument("--cols", type=positive_int, default=160, help="terminal columns (160)")
    p.add_argument("--rows", type=positive_int, default=48, help="terminal rows (48)")
    add_procs(p, 2)
    p.add_argument("--profile", metavar="FILE",
                   help="profile the console process into FILE: pyinstrument if FILE ends with .txt, "
                        ".html or .pyisession (pip install pyinstrument), else a cProfile (read it with python3 -m pstats)")
    add_common_args(p)
    # The console's own process (started by the bench, not by hand).
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stamps", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.procs > args.nodes:
        p.error("--procs: more processes than nodes")
    if args.settle is None:
        args.settle = 1.5 * args.interval
    if args.profile:
        args.profile = os.path.abspath(args.profile)  # the console runs in the repository root
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    return run_bench(args, "console", run)


if __name__ == "__main__":
    raise SystemExit(main())
