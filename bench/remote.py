"""Remote-control benchmarks: `dvic run` round trip, shell keystroke-to-echo, `run --all` on N daemons.

Everything is a real process on 127.0.0.1: dvic-central and node daemons (tests/support)
(node_script/dvic_node.py, each with its own enrolled bundle, state dir and log dir) and, for the
CLI figures, `dvic run` itself: the console script next to the interpreter (`.venv/bin/dvic`), a
fresh process each time, as an operator types it. Its bytecode is cached (in the work dir, not the
repo) as after any install, even when PYTHONDONTWRITEBYTECODE is set here. Nothing is timed inside
tests; this prints figures.

    python3 -m bench.remote [--runs 100] [--cli-runs 30] [--keystrokes 200] [--nodes 200]
                            [--cli-also /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pty
import pwd
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from dvic_core.constants import RUN_FINAL
from tests.support.daemon import Fleet
from tests.support.server import REPO, CentralServer
from tui.api import calls
from tui.api.aio import AsyncClient
from tui.api.config import Settings

from .common import add_common_args, bench_server, positive_float, positive_int, work_dir
from .daemon_rig import NodeRig, RigError, enroll
from .procstat import machine_cpu_stall_s

ECHO_TIMEOUT = 5.0  # one keystroke's echo; far above any plausible figure, only guards a hang
# Issue 4: `dvic run NODE -- true` round trip on loopback, in ms.
RUN_TARGET_P50_MS = 50.0
RUN_TARGET_P99_MS = 150.0


@dataclass
class Figures:
    """Latencies in milliseconds (p50/p99/max) and the fleet timings in seconds."""
    date: str = ""
    load_before: str = ""
    api_run_ms: dict[str, float] = field(default_factory=dict)
    cli_run_ms: dict[str, float] = field(default_factory=dict)
    cli_run_cpu_ms: dict[str, float] = field(default_factory=dict)  # user + system CPU of each process
    cli_cpu_pressure: float = 0.0  # % of the CLI phase in which some task waited for a CPU (PSI some)
    cli_command: str = ""
    also_python: str = ""  # --cli-also: the same `dvic run` path on another interpreter
    also_run_ms: dict[str, float] = field(default_factory=dict)
    also_run_cpu_ms: dict[str, float] = field(default_factory=dict)
    python_start_ms: dict[str, float] = field(default_factory=dict)
    cli_imports_ms: dict[str, float] = field(default_factory=dict)
    shell_echo_ms: dict[str, float] = field(default_factory=dict)
    local_pty_echo_ms: dict[str, float] = field(default_factory=dict)
    fleet_nodes: int = 0
    fleet_start_s: float = 0.0
    fleet_api_s: list[float] = field(default_factory=list)
    fleet_cli_s: list[float] = field(default_factory=list)
    fleet_exited: list[int] = field(default_factory=list)
    fleet_cli_failures: list[str] = field(default_factory=list)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p99/max in ms (nearest rank), and the sample count."""
    if not samples_s:
        return {}
    ordered = sorted(samples_s)

    def rank(p: float) -> float:
        return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1] * 1000

    return {"n": len(ordered), "p50": rank(50), "p99": rank(99), "max": ordered[-1] * 1000}


def fmt(stats: dict[str, float]) -> str:
    if not stats:
        return "not measured"
    return f"p50 {stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms, max {stats['max']:.1f} ms ({int(stats['n'])} samples)"


def verdict(stats: dict[str, float]) -> str:
    """PASS/FAIL against issue 4's round-trip targets."""
    if not stats:
        return "not measured"
    ok = stats["p50"] < RUN_TARGET_P50_MS and stats["p99"] < RUN_TARGET_P99_MS
    return f"{'PASS' if ok else 'FAIL'} (target p50 < {RUN_TARGET_P50_MS:.0f} ms, p99 < {RUN_TARGET_P99_MS:.0f} ms)"


def settings_of(server: CentralServer) -> Settings:
    return Settings(server=server.url, token=server.admin_token, ca=str(server.ca_path))


def dvic_command() -> list[str]:
    """The `dvic` console script of this interpreter's environment, as an operator runs it."""
    script = Path(sys.executable).parent / "dvic"
    if not script.exists():
        raise RigError(f"no `dvic` console script next to {sys.executable}: install the project (pip install -e .)")
    return [str(script)]


def cli_env(server: CentralServer, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "DVIC_SERVER": server.url, "DVIC_TOKEN": server.admin_token, "DVIC_CA": str(server.ca_path),
            "PYTHONPYCACHEPREFIX": str(pycache)}


def timed_process(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[
        subprocess.CompletedProcess[str], float, float]:
    """Runs one process to its end: the result, its wall-clock seconds and its CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# -- 1. dvic run NODE -- true -------------------------------------------------------------------
async def run_to_end(api: AsyncClient, targets: dict[str, Any], argv: list[str]) -> tuple[list[dict[str, Any]], float]:
    """Start a command and follow its stream to `done`: the final runs and the seconds to `done`."""
    t0 = time.perf_counter()
    started = await api.send(calls.run_command(targets, argv=argv))
    runs = {r["run_id"]: r for r in started.get("runs", [])}
    async for event in api.command_stream(started["id"]):
        # runs that ended before the stream opened are only in its first `command` message
        updates = event.get("runs", []) if event.get("type") == "command" else [event]
        for run in updates:
            if run.get("type", "state") == "state" and run.get("run_id") in runs:
                runs[run["run_id"]] = run
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + 10
    while any(r.get("state") not in RUN_FINAL for r in runs.values()) and time.monotonic() < deadline:
        # A stream that opens while the last runs finish can send `done` without their final
        # `state` (reported to the server's owner): read them from the stored command, which the
        # group-commit writer may store a moment after `done` (polled, bounded; not timed).
        stored = (await api.send(calls.command(started["id"]))).get("runs", [])
        runs = {r.get("run_id") or r["id"]: r for r in stored}
        await asyncio.sleep(0.05)
    return list(runs.values()), elapsed


async def api_round_trips(server: CentralServer, node: str, count: int) -> list[float]:
    samples: list[float] = []
    async with AsyncClient(settings_of(server)) as api:
        await run_to_end(api, {"nodes": [node]}, ["true"])  # warm-up: TLS session, imports on the node
        for _ in range(count):
            runs, elapsed = await run_to_end(api, {"nodes": [node]}, ["true"])
            samples.append(elapsed)
            if len(runs) != 1 or runs[0].get("state") != "exited" or runs[0].get("code") != 0:
                raise RigError(f"`true` did not exit 0: {runs}")
    return samples


def cli_round_trips(server: CentralServer, node: str, count: int, pycache: Path, also: str | None,
                    figures: Figures) -> None:
    """`dvic run NODE -- true` as a fresh process each time, plus its start-up shares: a bare
    `python3 -c pass`, then `python3 -c 'import tui.cli, tui.cmds.run'` (the run path's imports).
    With `also`, the same run path on that interpreter too, in the same loop (same conditions)."""
    env = cli_env(server, pycache)
    argv = [*dvic_command(), "run", node, "--", "true"]
    figures.cli_command = " ".join(argv)
    # `dvic run` needs only the standard library: any Python >= 3.11 runs it from the repo.
    launch = f"import sys; sys.path.insert(0, {str(REPO)!r}); from tui.cli import main; sys.exit(main())"
    also_argv = [also, "-c", launch, "run", node, "--", "true"] if also else []
    figures.also_python = also or ""
    for warm_argv in filter(None, (argv, also_argv)):  # writes the bytecode caches, as a first run would
        warm, _, _ = timed_process(warm_argv, env)
        if warm.returncode != 0:
            raise RigError(f"`{' '.join(warm_argv[:1])} ... run {node} -- true` exited {warm.returncode}: "
                           f"{warm.stderr.strip()}")
    timed_process([sys.executable, "-c", "import tui.cli, tui.cmds.run"], env)
    samples: dict[str, list[float]] = {k: [] for k in ("runs", "cpu", "bare", "imports", "also", "also_cpu")}
    stall0, t0 = machine_cpu_stall_s(), time.monotonic()
    for _ in range(count):
        for share, code in (("bare", "pass"), ("imports", "import tui.cli, tui.cmds.run")):
            done, wall, _ = timed_process([sys.executable, "-c", code], env)
            if done.returncode != 0:
                raise RigError(f"python3 -c {code!r} exited {done.returncode}: {done.stderr.strip()}")
            samples[share].append(wall)
        for key, cmd in (("runs", argv), ("also", also_argv)):
            if not cmd:
                continue
            done, wall, cpu_s = timed_process(cmd, env)
            if done.returncode != 0:
                raise RigError(f"`dvic run {node} -- true` exited {done.returncode}: {done.stderr.strip()}")
            samples[key].append(wall)
            samples["cpu" if key == "runs" else "also_cpu"].append(cpu_s)
    elapsed = time.monotonic() - t0
    figures.cli_cpu_pressure = 100.0 * (machine_cpu_stall_s() - stall0) / elapsed if elapsed > 0 else 0.0
    figures.cli_run_ms, figures.cli_run_cpu_ms = percentiles(samples["runs"]), percentiles(samples["cpu"])
    figures.python_start_ms, figures.cli_imports_ms = percentiles(samples["bare"]), percentiles(samples["imports"])
    figures.also_run_ms, figures.also_run_cpu_ms = percentiles(samples["also"]), percentiles(samples["also_cpu"])


# -- 2. keystroke to echo -----------------------------------------------------------------------
# Each keystroke is a printable byte then a backspace erasing it, so the line never grows; each is
# timed from the send to the first output that holds its echo.
KEYS: list[tuple[bytes, bytes]] = [(b"x", b"x"), (b"\x7f", b"\x08")]
READY = b"printf 'RE%sDY\\n' A\n"  # the output says READY; the echoed input does not


async def remote_echo(server: CentralServer, node: str, count: int) -> list[float]:
    samples: list[float] = []
    async with AsyncClient(settings_of(server)) as api:
        ws = await api.shell(node, 80, 24)
        try:
            buf = bytearray()

            async def until(marker: bytes, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while marker not in buf:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RigError(f"shell: no {marker!r} within {timeout:.0f} s (got {bytes(buf[-200:])!r})")
                    msg = await ws.receive(timeout=left)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        buf.extend(msg.data)
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        doc = json.loads(msg.data)
                        if doc.get("type") == "exit":
                            raise RigError(f"the shell ended: {doc}")
                    else:
                        raise RigError(f"shell websocket closed ({ws.close_code})")

            async def quiet(period: float, limit: float) -> None:
                # the prompt may be written after READY: wait until output pauses (bounded)
                deadline = time.monotonic() + limit
                while time.monotonic() < deadline:
                    try:
                        msg = await ws.receive(timeout=period)
                    except TimeoutError:
                        return
                    if msg.type != aiohttp.WSMsgType.BINARY and msg.type != aiohttp.WSMsgType.TEXT:
                        raise RigError(f"shell websocket closed ({ws.close_code})")

            await ws.send_bytes(READY)
            await until(b"READY", 30)
            await quiet(0.3, 10)
            for i in range(count):
                key, echo = KEYS[i % 2]
                buf.clear()
                t0 = time.perf_counter()
                await ws.send_bytes(key)
                await until(echo, ECHO_TIMEOUT)
                samples.append(time.perf_counter() - t0)
            await ws.send_bytes(b"exit\n")
        finally:
            await ws.close()
    return samples


@contextmanager
def local_shell(shell: str) -> Iterator[int]:
    """The same login shell on a local PTY, in its own session; yields the master fd."""
    master, slave = pty.openpty()
    account = pwd.getpwuid(os.getuid())
    env = {"HOME": account.pw_dir, "USER": account.pw_name, "SHELL": shell, "TERM": "xterm-256color",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen([shell, "-l"], stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=account.pw_dir, start_new_session=True)
    os.close(slave)
    try:
        yield master
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        os.close(master)


def local_echo(shell: str, count: int) -> list[float]:
    samples: list[float] = []
    with local_shell(shell) as fd:
        buf = bytearray()

        def until(marker: bytes, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while marker not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RigError(f"local pty: no {marker!r} within {timeout:.0f} s (got {bytes(buf[-200:])!r})")
                ready, _, _ = select.select([fd], [], [], left)
                if ready:
                    buf.extend(os.read(fd, 65536))

        os.write(fd, READY)
        until(b"READY", 30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and select.select([fd], [], [], 0.3)[0]:
            os.read(fd, 65536)  # drain the prompt until output pauses (bounded)
        for i in range(count):
            key, echo = KEYS[i % 2]
            buf.clear()
            t0 = time.perf_counter()
            os.write(fd, key)
            until(echo, ECHO_TIMEOUT)
            samples.append(time.perf_counter() - t0)
    return samples


# -- 3. run --all on N daemons ------------------------------------------------------------------
async def connected_count(api: AsyncClient) -> int:
    return sum(1 for n in await api.send(calls.nodes()) if n.get("connected"))


async def fleet_phase(root: Path, count: int, repeats: int, python: str, online_timeout: float,
                      pycache: Path, figures: Figures) -> None:
    server = bench_server(root / "central")
    fleet = Fleet(python, how="source", timings=())  # N daemons, each in its own process group
    try:
        server.start()
        bundles = []
        for i in range(count):
            home = root / f"node-{i:04d}"
            home.mkdir(parents=True)
            bundles.append(home / "bundle.json")
        names = [f"fleet-{i:04d}" for i in range(count)]
        with ThreadPoolExecutor(8) as pool:  # enrollment makes a key and certificate per node
            list(pool.map(lambda name, path: enroll(server, name, path), names, bundles))
        t0 = time.perf_counter()
        fleet.start(bundles)
        async with AsyncClient(settings_of(server)) as api:
            deadline = time.monotonic() + online_timeout
            online = 0
            while online < count:
                if fleet.dead():
                    raise RigError(f"{len(fleet.dead())} daemon(s) exited; see {root}/node-*/daemon.log")
                if time.monotonic() > deadline:
                    raise RigError(f"only {online} of {count} daemons online after {online_timeout:.0f} s")
                online = await connected_count(api)
                await asyncio.sleep(0.5)  # poll interval of the online check, not a synchronisation
            figures.fleet_start_s = time.perf_counter() - t0
            figures.fleet_nodes = count
            print(f"fleet: {count} daemons online in {figures.fleet_start_s:.1f} s")
            await run_to_end(api, {"all": True}, ["true"])  # warm-up: every daemon's first exec
            for _ in range(repeats):
                runs, elapsed = await run_to_end(api, {"all": True}, ["uname", "-a"])
                figures.fleet_api_s.append(elapsed)
                exited = sum(1 for r in runs if r.get("state") == "exited" and r.get("code") == 0)
                figures.fleet_exited.append(exited)
                if exited != count:
                    states = sorted({str(r.get("state")) for r in runs if r.get("state") in RUN_FINAL})
                    print(f"  warning: {exited}/{count} exited 0 (states seen: {states})")
                print(f"  run --all -- uname -a (API): {figures.fleet_api_s[-1]:.2f} s, {exited}/{count} exited 0")
        env = cli_env(server, pycache)
        await asyncio.to_thread(timed_process, [*dvic_command(), "--help"], env)  # bytecode caches of every module
        for _ in range(repeats):
            done, wall, _ = await asyncio.to_thread(
                timed_process, [*dvic_command(), "run", "--all", "--yes", "--", "uname", "-a"], env, 120)
            figures.fleet_cli_s.append(wall)
            if done.returncode != 0:  # counted, not fatal: the figures of the other runs still hold
                figures.fleet_cli_failures.append(done.stderr.strip().splitlines()[-1:][0] if done.stderr.strip()
                                                  else f"exit {done.returncode}")
                print(f"  warning: `dvic run --all` exited {done.returncode}: {figures.fleet_cli_failures[-1]}")
            lines = done.stdout.count("\n")
            print(f"  run --all -- uname -a (CLI process): {figures.fleet_cli_s[-1]:.2f} s, {lines} output lines")
    finally:
        fleet.stop()
        server.stop()


# -- main ---------------------------------------------------------------------------------------
async def single_node_phase(work: Path, args: argparse.Namespace, figures: Figures) -> None:
    (work / "single").mkdir()
    rig = NodeRig(work / "single", python=args.python)
    try:
        rig.start_server()
        await asyncio.to_thread(rig.start_daemon)
        if args.runs:
            figures.api_run_ms = percentiles(await api_round_trips(rig.server, "bench-node", args.runs))
            print(f"dvic run NODE -- true, API + command stream: {fmt(figures.api_run_ms)}")
            print(f"  {verdict(figures.api_run_ms)}")
        if args.cli_runs:
            await asyncio.to_thread(cli_round_trips, rig.server, "bench-node", args.cli_runs, work / "pycache",
                                    args.cli_also, figures)
            print(f"dvic run NODE -- true, fresh `dvic` process: {fmt(figures.cli_run_ms)}")
            print(f"  {verdict(figures.cli_run_ms)}")
            print(f"  CPU per process (user + system):           {fmt(figures.cli_run_cpu_ms)}")
            print(f"  start-up share, bare `python3 -c pass`:    {fmt(figures.python_start_ms)}")
            print(f"  start-up share, `import tui.cli, tui.cmds.run`: {fmt(figures.cli_imports_ms)}")
            if args.cli_also:
                print(f"  what-if, the same run path on {args.cli_also}: {fmt(figures.also_run_ms)}; "
                      f"CPU p50 {figures.also_run_cpu_ms['p50']:.1f} ms")
            print(f"  machine CPU pressure during these runs (PSI some): {figures.cli_cpu_pressure:.0f} %")
        if args.keystrokes:
            shell = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
            figures.shell_echo_ms = percentiles(await remote_echo(rig.server, "bench-node", args.keystrokes))
            figures.local_pty_echo_ms = percentiles(await asyncio.to_thread(local_echo, shell, args.keystrokes))
            print(f"keystroke to echo via server + daemon ({shell}): {fmt(figures.shell_echo_ms)}")
            print(f"keystroke to echo on a local PTY ({shell}):       {fmt(figures.local_pty_echo_ms)}")
            added50 = figures.shell_echo_ms["p50"] - figures.local_pty_echo_ms["p50"]
            added99 = figures.shell_echo_ms["p99"] - figures.local_pty_echo_ms["p99"]
            print(f"  added by server + daemon: p50 {added50:.1f} ms, p99 {added99:.1f} ms (target < 10 ms at p99)")
    finally:
        await asyncio.to_thread(rig.close)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.remote", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100, help="`run NODE -- true` through the API (0: skip)")
    p.add_argument("--cli-runs", type=int, default=30, help="the same as CLI processes (0: skip)")
    p.add_argument("--keystrokes", type=int, default=200, help="keystrokes timed, remote and local (0: skip)")
    p.add_argument("--nodes", type=int, default=200, help="daemons for `run --all` (0: skip)")
    p.add_argument("--repeats", type=positive_int, default=3, help="`run --all` timings (API and CLI each)")
    p.add_argument("--online-timeout", type=positive_float, default=300.0,
                   help="seconds for all N daemons to connect")
    p.add_argument("--python", default=sys.executable, help="interpreter of the daemons")
    p.add_argument("--cli-also", metavar="PYTHON",
                   help="also time `dvic run` on this interpreter (>= 3.11; the run path is standard library only)")
    add_common_args(p)
    args = p.parse_args(argv)
    if shutil.which(args.python) is None:
        p.error(f"--python {args.python}: no such executable")
    if args.cli_also is not None and shutil.which(args.cli_also) is None:
        p.error(f"--cli-also {args.cli_also}: no such executable")
    for name in ("runs", "cli_runs", "keystrokes", "nodes"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = Figures(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      load_before=" ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"{figures.date}, {os.cpu_count()} CPUs, load average before: {figures.load_before}")
    with work_dir(args.work_dir, args.keep, "remote") as work:
        if args.runs or args.cli_runs or args.keystrokes:
            asyncio.run(single_node_phase(work, args, figures))
        if args.nodes:
            asyncio.run(fleet_phase(work / "fleet", args.nodes, args.repeats, args.python,
                                    args.online_timeout, work / "pycache", figures))
    if figures.fleet_api_s:
        print(f"run --all -- uname -a on {figures.fleet_nodes} daemons: API best {min(figures.fleet_api_s):.2f} s, "
              f"worst {max(figures.fleet_api_s):.2f} s; CLI best {min(figures.fleet_cli_s):.2f} s (target < 3 s)")
    if args.json:
        args.json.write_text(json.dumps(asdict(figures), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
