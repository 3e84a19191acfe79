"""Between replicas: PostgreSQL LISTEN/NOTIFY against NATS, for the traffic replicas would carry.

    python3 -m bench.bus_compare [--rounds 2] [--seconds 4] [--rates 10000,20000,40000]

Starts a throw-away PostgreSQL cluster (initdb in the work dir, pg_ctl, 127.0.0.1, a free port;
run as the `postgres` user when started as root) and a nats-server (127.0.0.1, free ports, no
JetStream), then measures between two processes, "replica A publishes, replica B receives":
- logs: live log lines from 2,000 nodes, gathered for 20 ms as the stream gathers them, at
  `--rates` lines/s and unthrottled; one NOTIFY is under 8,000 bytes, so PostgreSQL gets each
  20 ms batch cut into chunks of at most 7,900 bytes (all of a batch's NOTIFYs in one statement,
  one transaction); NATS gets one message per batch. Lines/s delivered, latency p50/p99 (each
  line counted, from its batch's publish to B's callback);
- rpc: request-reply of 200-byte messages, one at a time (a command, a shell's keystroke): p50/p99;
- shell: 4 KiB frames (base64 in a NOTIFY, raw bytes in NATS) at 1 MiB/s, latency; and unthrottled;
- presence: 6,000 "node X is now on replica A" changes in one burst (every node of a dead replica
  reconnecting at once; the issue allows 30 s), gathered 100 a transaction: time to all, p50/p99;
- PostgreSQL only: commits/s of one-row INSERT transactions (4 connections) alone, each with a
  NOTIFY in it (NOTIFY takes a database-wide lock from commit to end), and beside a NOTIFY load of
  10,000 lines/s from another process;
- a stuck listener: PostgreSQL's queue usage (pg_notification_queue_usage) while a LISTENing
  session sits in an open transaction, against NATS's slow-consumer cut-off of a subscriber that
  stopped reading its socket (the server's /varz);
- reconnect: the server restarted in the middle of a 200 changes/s presence stream; messages lost
  and the longest gap at B.
Rounds alternate which bus goes first, so both see the same machine load; each figure is the
median over rounds, with the mean 1-minute load average of its measurements beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import pwd
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .report import Report, latency_summary

PG_BIN = Path(os.environ.get("DVIC_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "dvic"
BUSES = ("postgres", "nats")
NODES = 2000
TICK_S = 0.02  # the stream gathers lines for 20 ms (central/stream.py)
PG_CHUNK = 7900  # NOTIFY refuses payloads of 8,000 bytes or more
NATS_CHUNK = 1_000_000  # under nats-server's default max_payload (1 MiB)
WARMUP_S = 0.5
SHELL_FRAME = 4096
PRESENCE_GROUP = 100
LOG_LINE = ('{"node":"%s","seq":%d,"ts":%.3f,"level":20,"source":"demo","demo":"cam",'
            '"text":"frame %d processed in 12.3 ms, queue depth 4, fps 29.97"}')


# ---- the two servers ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def process_cpu(pid: int, reaped: bool = False) -> float:
    """User + system CPU seconds of a process (with `reaped`, plus its waited-for children's); 0 if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    ticks = sum(int(f) for f in fields[11:15 if reaped else 13])  # utime stime [cutime cstime]
    return ticks / os.sysconf("SC_CLK_TCK")


def children_of(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                out.append(int(entry.name))
    return out


class Postgres:
    """A throw-away cluster in a temp dir of its own (the work dir's parents may be closed to the
    cluster's user), as an unprivileged user when we are root (initdb refuses root)."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="dvic-bench-pg-"))
        self.data = self.home / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else ""

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        argv = [str(PG_BIN / cmd[0]), *cmd[1:]]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.home, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.home}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "server.log"), "-o", opts, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)

    def cpu_seconds(self) -> float:
        """CPU used so far by the postmaster, its live backends and those it has reaped."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        total = process_cpu(postmaster, reaped=True)
        for pid in children_of(postmaster):
            total += process_cpu(pid)
        return total

    def version(self) -> str:
        out = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.split()[2]  # postgres (PostgreSQL) 15.18 (Debian ...)


class Nats:
    """nats-server on 127.0.0.1 (clients and monitoring), core NATS only."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.monitor = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def init(self) -> None:
        self.home.mkdir()
        (self.home / "nats.conf").write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.monitor}\n")

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.proc = subprocess.Popen([binary, "-c", str(self.home / "nats.conf"),
                                      "-l", str(self.home / "server.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 15)
        wait_port(self.monitor, 15)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return process_cpu(self.proc.pid)

    def varz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/varz", timeout=5) as resp:
            return dict(json.load(resp))

    def version(self) -> str:
        return str(self.varz().get("version", "?"))


# ---- the two clients, seen the same way by the measures -----------------------------------------

class Client:
    """One replica's bus connection: publish text messages on a channel, call back on each received."""

    binary = False  # may carry raw bytes (NATS) or only text (NOTIFY)
    chunk = PG_CHUNK

    async def publish(self, channel: str, payloads: list[str] | list[bytes]) -> None:
        raise NotImplementedError

    async def subscribe(self, channel: str, on: Callable[[str | bytes], None]) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


class PgClient(Client):
    """asyncpg: LISTEN through add_listener, NOTIFY through pg_notify; a batch is one statement."""

    def __init__(self, url: str, reconnect: bool = False) -> None:
        self.url = url
        self.conn: Any = None
        self.reconnect = reconnect
        self.listening: dict[str, Callable[[str | bytes], None]] = {}
        self.watch: asyncio.Task[None] | None = None

    async def open(self) -> PgClient:
        import asyncpg  # not a project dependency (yet): imported in the child processes only
        self.conn = await asyncpg.connect(self.url)
        for channel, on in self.listening.items():
            await self._listen(channel, on)
        if self.reconnect and self.watch is None:
            self.watch = asyncio.create_task(self._watch())
        return self

    async def _listen(self, channel: str, on: Callable[[str | bytes], None]) -> None:
        await self.conn.add_listener(channel, lambda _c, _pid, _ch, payload: on(payload))

    async def _watch(self) -> None:
        """asyncpg does not reconnect: a replica would have to, and LISTEN again (what is sent meanwhile is lost)."""
        while True:
            await asyncio.sleep(0.05)
            if self.conn.is_closed():
                await self._reopen()

    async def _reopen(self) -> None:
        while True:
            try:
                await self.open()
                return
            except Exception:  # the server still starting (CannotConnectNow) or not listening yet
                await asyncio.sleep(0.25)

    async def publish(self, channel: str, payloads: list[str] | list[bytes]) -> None:
        try:
            await self.conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", channel, payloads)
        except Exception:
            if not self.reconnect:
                raise
            self.conn.terminate()
            await self._reopen()
            raise LostMessages(len(payloads)) from None

    async def subscribe(self, channel: str, on: Callable[[str | bytes], None]) -> None:
        self.listening[channel] = on
        await self._listen(channel, on)

    async def close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        if self.conn is not None:
            await self.conn.close()


class NatsClient(Client):
    """nats-py, core NATS (at most once): it reconnects by itself and buffers what is published meanwhile."""

    binary = True
    chunk = NATS_CHUNK

    def __init__(self, url: str, reconnect: bool = False) -> None:
        self.url = url
        self.nc: Any = None

    async def open(self) -> NatsClient:
        import nats  # not a project dependency (yet): imported in the child processes only

        async def quiet(_exc: Exception) -> None:  # slow consumer and disconnect reports are counted elsewhere
            return None

        self.nc = await nats.connect(self.url, reconnect_time_wait=0.25, max_reconnect_attempts=-1,
                                     error_cb=quiet)
        return self

    async def publish(self, channel: str, payloads: list[str] | list[bytes]) -> None:
        for p in payloads:
            await self.nc.publish(channel, p if isinstance(p, bytes) else p.encode())

    async def subscribe(self, channel: str, on: Callable[[str | bytes], None]) -> None:
        async def handler(msg: Any) -> None:
            on(msg.data)
        await self.nc.subscribe(channel, cb=handler)
        await self.nc.flush()

    async def flush(self) -> None:
        await self.nc.flush(timeout=30)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.drain()


class LostMessages(Exception):
    """A publish that failed while the bus was away: these messages never left replica A."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} messages lost")
        self.count = count


async def connect(bus: str, url: str, reconnect: bool = False) -> Client:
    if bus == "postgres":
        return await PgClient(url, reconnect).open()
    return await NatsClient(url, reconnect).open()


def text(payload: str | bytes) -> str:
    return payload.decode() if isinstance(payload, bytes) else payload


# ---- what replica A sends and replica B receives ---------------------------------------------

def node_ids() -> list[str]:
    rng = random.Random(18)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(NODES)]


def pack_lines(lines: list[str], sent_at: float, limit: int) -> list[str]:
    """Lines as messages of at most `limit` bytes, each `{"t": sent_at, "lines": [...]}`."""
    head, tail = f'{{"t":{sent_at:.6f},"lines":[', "]}"
    out: list[str] = []
    chunk: list[str] = []
    size = len(head) + len(tail)
    for line in lines:
        extra = len(line) + (1 if chunk else 0)
        if chunk and size + extra > limit:
            out.append(head + ",".join(chunk) + tail)
            chunk, size, extra = [], len(head) + len(tail), len(line)
        chunk.append(line)
        size += extra
    if chunk:
        out.append(head + ",".join(chunk) + tail)
    return out


async def paced(rate: float, seconds: float, step: Callable[[int], Awaitable[int]]) -> tuple[int, float]:
    """Calls step(due) every 20 ms with the count due at `rate`/s (rate 0: 200 a call, unthrottled) for
    `seconds`; step returns how many it sent. Returns (sent, elapsed)."""
    start = time.monotonic()
    sent = 0
    next_tick = start
    while (now := time.monotonic()) - start < seconds:
        due = int(rate * (now - start)) - sent if rate else 200
        if due > 0:
            sent += await step(due)
        if rate:
            next_tick += TICK_S
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        else:
            await asyncio.sleep(0)
    return sent, time.monotonic() - start


async def send_logs(client: Client, p: dict[str, Any]) -> dict[str, Any]:
    nodes = node_ids()
    counter = {"i": 0, "messages": 0, "bytes": 0}

    async def step(due: int) -> int:
        i, now = counter["i"], time.time()
        lines = [LOG_LINE % (nodes[k % NODES], k // NODES + 1, now, k) for k in range(i, i + due)]
        messages = pack_lines(lines, now, client.chunk)
        await client.publish("dvic_logs", messages)
        counter["i"] += due
        counter["messages"] += len(messages)
        counter["bytes"] += sum(map(len, messages))
        return due

    sent, elapsed = await paced(p["rate"], p["seconds"], step)
    await client.publish("dvic_logs", [f"END {sent}"])
    await client.flush()
    return {"sent": sent, "elapsed": elapsed, "messages": counter["messages"], "bytes": counter["bytes"]}


async def receive_logs(client: Client, p: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    latencies: list[float] = []
    seen = {"lines": 0, "first": 0.0, "last": 0.0}
    done = asyncio.Event()

    def on(payload: str | bytes) -> None:
        now = time.time()
        body = text(payload)
        if body.startswith("END "):
            done.set()
            return
        batch = json.loads(body)
        count = len(batch["lines"])
        seen["first"] = seen["first"] or batch["t"]
        seen["lines"] += count
        seen["last"] = now
        if batch["t"] - seen["first"] >= WARMUP_S:
            latencies.extend([(now - batch["t"]) * 1000] * count)

    await client.subscribe("dvic_logs", on)
    ready()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), p["seconds"] + 60)
    span = seen["last"] - seen["first"]
    return {"lines": seen["lines"], "rate": seen["lines"] / span if span > 0 else 0.0,
            "latency": latency_summary(latencies)}


async def send_rpc(client: Client, p: dict[str, Any]) -> dict[str, Any]:
    waiting: dict[int, asyncio.Future[float]] = {}

    def on(payload: str | bytes) -> None:
        request_id = int(text(payload).split(" ", 1)[0])
        if (fut := waiting.pop(request_id, None)) is not None and not fut.done():
            fut.set_result(time.perf_counter())

    await client.subscribe("dvic_reply_a", on)
    body = "x" * 180
    rtts: list[float] = []
    for i in range(p["requests"] + 50):
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        waiting[i] = fut
        start = time.perf_counter()
        await client.publish("dvic_req_b", [f"dvic_reply_a {i} {body}"])  # nats-py sends it at once
        end = await asyncio.wait_for(fut, 10)
        if i >= 50:  # the first ones warm the connections and prepared statements
            rtts.append((end - start) * 1000)
    await client.publish("dvic_req_b", ["END"])
    await client.flush()
    return {"latency": latency_summary(rtts)}


async def answer_rpc(client: Client, p: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    await client.subscribe("dvic_req_b", lambda payload: queue.put_nowait(text(payload)))
    ready()
    answered = 0
    end = time.monotonic() + 120
    while time.monotonic() < end:
        request = await asyncio.wait_for(queue.get(), 60)
        if request == "END":
            break
        reply, rest = request.split(" ", 1)
        await client.publish(reply, [rest])
        answered += 1
    return {"answered": answered}


async def send_shell(client: Client, p: dict[str, Any]) -> dict[str, Any]:
    data = os.urandom(SHELL_FRAME)
    encoded = data if client.binary else base64.b64encode(data)
    seq = {"n": 0}

    async def step(due: int) -> int:
        for _ in range(due):
            head = b"%.6f %d\n" % (time.time(), seq["n"])
            frame = head + encoded
            await client.publish("dvic_shell", [frame] if client.binary else [frame.decode()])
            seq["n"] += 1
        return due

    rate = p["bytes_per_s"] / SHELL_FRAME if p["bytes_per_s"] else 0
    sent, elapsed = await paced(rate, p["seconds"], step)
    await client.publish("dvic_shell", [b"END" if client.binary else "END"])
    await client.flush()
    return {"frames": sent, "elapsed": elapsed}


async def receive_shell(client: Client, p: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    latencies: list[float] = []
    seen = {"bytes": 0, "first": 0.0, "last": 0.0}
    done = asyncio.Event()

    def on(payload: str | bytes) -> None:
        now = time.time()
        raw = payload if isinstance(payload, bytes) else payload.encode()
        if raw == b"END":
            done.set()
            return
        head, body = raw.split(b"\n", 1)
        data = body if isinstance(payload, bytes) else base64.b64decode(body)
        sent_at = float(head.split(b" ", 1)[0])
        seen["first"] = seen["first"] or sent_at
        seen["bytes"] += len(data)
        seen["last"] = now
        if sent_at - seen["first"] >= WARMUP_S:
            latencies.append((now - sent_at) * 1000)

    await client.subscribe("dvic_shell", on)
    ready()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), p["seconds"] + 60)
    span = seen["last"] - seen["first"]
    return {"bytes": seen["bytes"], "mib_per_s": seen["bytes"] / span / 2**20 if span > 0 else 0.0,
            "latency": latency_summary(latencies)}


async def send_presence(client: Client, p: dict[str, Any]) -> dict[str, Any]:
    nodes = node_ids() * (p["changes"] // NODES + 1)
    lost = 0
    counter = {"i": 0}

    async def step(due: int) -> int:
        nonlocal lost
        done = 0
        while done < due and counter["i"] < p["changes"]:
            group = min(PRESENCE_GROUP, due - done, p["changes"] - counter["i"])
            now = time.time()
            changes = [f'{{"node":"{nodes[k]}","replica":"a","state":"online","t":{now:.6f},"i":{k}}}'
                       for k in range(counter["i"], counter["i"] + group)]
            try:
                await client.publish("dvic_presence", changes)
            except LostMessages as exc:
                lost += exc.count
            counter["i"] += group
            done += group
        return done

    if p["rate"]:
        sent, elapsed = await paced(p["rate"], p["changes"] / p["rate"], step)
    else:
        start = time.monotonic()
        sent = await step(p["changes"])
        elapsed = time.monotonic() - start
    await client.publish("dvic_presence", ["END"])
    await client.flush()
    return {"sent": sent - lost, "lost_at_a": lost, "elapsed": elapsed}


async def receive_presence(client: Client, p: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    latencies: list[float] = []
    arrivals: list[float] = []
    first = {"t": 0.0}
    done = asyncio.Event()

    def on(payload: str | bytes) -> None:
        now = time.time()
        body = text(payload)
        if body == "END":
            done.set()
            return
        change = json.loads(body)
        first["t"] = first["t"] or change["t"]
        arrivals.append(now)
        latencies.append((now - change["t"]) * 1000)

    await client.subscribe("dvic_presence", on)
    ready()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), p.get("deadline", 120))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {"received": len(arrivals), "all_after": (arrivals[-1] - first["t"]) if arrivals else 0.0,
            "latency": latency_summary(latencies), "longest_gap": max(gaps, default=0.0)}


async def write_load(url: str, p: dict[str, Any]) -> dict[str, Any]:
    """One-row INSERT transactions on several connections, each one statement (and one round trip);
    with `notify`, the same statement also NOTIFYs (the row's id), as a write that tells the replicas."""
    import asyncpg
    conns = [await asyncpg.connect(url) for _ in range(p["conns"])]
    plain = "INSERT INTO bench_writes (node, seq, text) VALUES ($1, $2, $3)"
    notifying = (f"WITH w AS ({plain} RETURNING id) "
                 "SELECT pg_notify('dvic_writes', w.id::text) FROM w")
    listener = await asyncpg.connect(url)
    await listener.add_listener("dvic_writes", lambda *_: None)
    end = time.monotonic() + p["seconds"]
    commits = [0]

    async def writer(conn: Any, k: int) -> None:
        sql = notifying if p["notify"] else plain
        while time.monotonic() < end:
            await conn.execute(sql, f"node-{k}", commits[0], "frame processed in 12.3 ms, queue depth 4")
            commits[0] += 1

    start = time.monotonic()
    await asyncio.gather(*(writer(c, k) for k, c in enumerate(conns)))
    elapsed = time.monotonic() - start
    for c in [*conns, listener]:
        await c.close()
    return {"commits_per_s": commits[0] / elapsed}


async def stuck_listener(url: str, p: dict[str, Any], ready: Callable[[], None]) -> dict[str, Any]:
    """LISTENs, then sits in an open transaction: PostgreSQL cannot clean its queue past this session."""
    import asyncpg
    conn = await asyncpg.connect(url)
    await conn.execute("LISTEN dvic_logs")
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT 1")
    ready()
    await asyncio.sleep(p["hold_s"])  # held as long as the sender runs: the measure's input
    usage = float(await conn.fetchval("SELECT pg_notification_queue_usage()"))
    await tx.rollback()
    await conn.close()
    return {"usage": usage}


# ---- running them in child processes ----------------------------------------------------------

SENDERS = {"logs": send_logs, "rpc": send_rpc, "shell": send_shell, "presence": send_presence}
RECEIVERS = {"logs": receive_logs, "rpc": answer_rpc, "shell": receive_shell, "presence": receive_presence}


def child(role: str, bus: str, url: str, scenario: str, p: dict[str, Any], ready: EventType | None,
          out: Any) -> None:
    """A replica's process: one measure's sender or receiver on its own connection and event loop."""
    async def run() -> dict[str, Any]:
        if role == "writes":
            return await write_load(url, p)
        if role == "stuck":
            assert ready is not None
            return await stuck_listener(url, p, ready.set)
        client = await connect(bus, url, reconnect=p.get("reconnect", False))
        start = time.process_time()
        try:
            if role == "send":
                result = await SENDERS[scenario](client, p)
            else:
                assert ready is not None
                result = await RECEIVERS[scenario](client, p, ready.set)
            return {**result, "cpu_s": time.process_time() - start}
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    try:
        out.put((role, asyncio.run(run())))
    except BaseException as exc:
        out.put((role, {"error": f"{type(exc).__name__}: {exc}"}))
        raise


@dataclass
class Pair:
    """Replica B (receiver) started and subscribed, then replica A (sender), plus any extra processes."""

    bus: str
    url: str
    scenario: str
    params: dict[str, Any]
    extra: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # ("writes" | "stuck", params)

    def run(self, during: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = []
        for role, params in [*self.extra, ("receive", self.params)]:
            if role == "writes":
                continue
            ready = ctx.Event()
            proc = ctx.Process(target=child, args=(role, self.bus, self.url, self.scenario, params, ready, out))
            proc.start()
            procs.append(proc)
            if not ready.wait(60):
                raise RuntimeError(f"{self.bus} {role} not ready in 60 s")
        for role, params in [("send", self.params), *[(r, q) for r, q in self.extra if r == "writes"]]:
            proc = ctx.Process(target=child, args=(role, self.bus, self.url, self.scenario, params, None, out))
            proc.start()
            procs.append(proc)
        if during is not None:
            during()
        results: dict[str, dict[str, Any]] = {}
        for _ in procs:
            role, result = out.get(timeout=300)
            if "error" in result:
                raise RuntimeError(f"{self.bus} {self.scenario} {role}: {result['error']}")
            results[role] = result
        for proc in procs:
            proc.join(30)
        return results


# ---- the measures, interleaved --------------------------------------------------------------

@dataclass
class Tally:
    """Values of one figure per bus over the rounds, with the load average when each was taken."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    loads: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, name: str, bus: str, value: float, load: float) -> None:
        self.values.setdefault((name, bus), []).append(value)
        self.loads.setdefault((name, bus), []).append(load)

    def median(self, name: str, bus: str) -> float:
        return statistics.median(self.values[(name, bus)])

    def load(self, name: str, bus: str) -> float:
        return statistics.mean(self.loads[(name, bus)])


def rounds_of(args: argparse.Namespace) -> Iterator[tuple[int, tuple[str, ...]]]:
    for r in range(args.rounds):
        yield r, BUSES if r % 2 == 0 else BUSES[::-1]


def measure_logs(args: argparse.Namespace, servers: dict[str, Any], urls: dict[str, str], tally: Tally) -> None:
    for rate in [*args.rates, 0]:
        label = f"{rate:,} lines/s" if rate else "unthrottled"
        for _, order in rounds_of(args):
            for bus in order:
                load = os.getloadavg()[0]
                cpu_before = servers[bus].cpu_seconds()
                got = Pair(bus, urls[bus], "logs", {"rate": rate, "seconds": args.seconds}).run()
                sent, recv = got["send"], got["receive"]
                # CPU shares over the sender's run (% of one core): the bus server's, A's and B's
                share = 100 / sent["elapsed"]
                tally.add(f"logs {label}: server CPU", bus, (servers[bus].cpu_seconds() - cpu_before) * share, load)
                tally.add(f"logs {label}: replica A CPU", bus, sent["cpu_s"] * share, load)
                tally.add(f"logs {label}: replica B CPU", bus, recv["cpu_s"] * share, load)
                tally.add(f"logs {label}: delivered", bus, recv["rate"], load)
                tally.add(f"logs {label}: lost", bus, sent["sent"] - recv["lines"], load)
                tally.add(f"logs {label}: messages/s", bus, sent["messages"] / sent["elapsed"], load)
                tally.add(f"logs {label}: p50", bus, recv["latency"]["p50"], load)
                tally.add(f"logs {label}: p99", bus, recv["latency"]["p99"], load)


def measure_rpc_shell_presence(args: argparse.Namespace, urls: dict[str, str], tally: Tally) -> None:
    for _, order in rounds_of(args):
        for bus in order:
            load = os.getloadavg()[0]
            got = Pair(bus, urls[bus], "rpc", {"requests": args.requests}).run()
            tally.add("rpc: p50", bus, got["send"]["latency"]["p50"], load)
            tally.add("rpc: p99", bus, got["send"]["latency"]["p99"], load)
    for bytes_per_s, label in ((2**20, "1 MiB/s"), (0, "unthrottled")):
        for _, order in rounds_of(args):
            for bus in order:
                load = os.getloadavg()[0]
                got = Pair(bus, urls[bus], "shell", {"bytes_per_s": bytes_per_s, "seconds": args.seconds}).run()
                tally.add(f"shell {label}: MiB/s", bus, got["receive"]["mib_per_s"], load)
                tally.add(f"shell {label}: p50", bus, got["receive"]["latency"]["p50"], load)
                tally.add(f"shell {label}: p99", bus, got["receive"]["latency"]["p99"], load)
    for _, order in rounds_of(args):
        for bus in order:
            load = os.getloadavg()[0]
            got = Pair(bus, urls[bus], "presence", {"changes": args.presence, "rate": 0}).run()
            recv = got["receive"]
            tally.add("presence burst: all received after", bus, recv["all_after"] * 1000, load)
            tally.add("presence burst: lost", bus, args.presence - recv["received"], load)
            tally.add("presence burst: p99", bus, recv["latency"]["p99"], load)


def measure_writes(args: argparse.Namespace, urls: dict[str, str], tally: Tally) -> None:
    """PostgreSQL's write rate alone, with a NOTIFY in each write, and beside a NOTIFY load (interleaved)."""
    url = urls["postgres"]
    writes = {"conns": 4, "seconds": args.seconds}
    for r in range(args.rounds):
        cases = ["alone", "notify in each", "beside NOTIFY load"]
        for case in cases if r % 2 == 0 else cases[::-1]:
            load = os.getloadavg()[0]
            ctx = multiprocessing.get_context("spawn")
            if case == "beside NOTIFY load":
                got = Pair("postgres", url, "logs", {"rate": args.rates[0], "seconds": args.seconds},
                           extra=[("writes", {**writes, "notify": False})]).run()
                result = got["writes"]
            else:
                out = ctx.Queue()
                proc = ctx.Process(target=child, args=("writes", "postgres", url, "", {
                    **writes, "notify": case == "notify in each"}, None, out))
                proc.start()
                result = out.get(timeout=120)[1]
                proc.join(30)
            tally.add(f"writes {case}", "postgres", result["commits_per_s"], load)


def measure_stuck(args: argparse.Namespace, servers: dict[str, Any], urls: dict[str, str],
                  report: Report) -> None:
    """A listener that stops taking messages: PostgreSQL keeps them for it, NATS cuts it off."""
    rate, seconds = args.rates[0], args.stuck_seconds
    load = os.getloadavg()[0]
    before = pg_queue_usage(urls["postgres"])
    got = Pair("postgres", urls["postgres"], "logs", {"rate": rate, "seconds": seconds},
               extra=[("stuck", {"hold_s": seconds + 5})]).run()
    after = got["stuck"]["usage"]  # read before the stuck session let go, after the sender ended
    per_s = (after - before) / got["send"]["elapsed"]
    full_h = (1 - after) / per_s / 3600 if per_s > 0 else float("inf")
    report.add(f"postgres stuck listener: queue usage after {seconds:.0f} s at {rate:,} lines/s",
               after * 100, f"% of the queue (load {load:.2f}); full in {full_h:.1f} h at that rate, "
               "then every NOTIFY fails at commit")
    report.add("postgres stuck listener: lines to the other listener", got["receive"]["lines"],
               f"of {got['send']['sent']:,} sent")
    load = os.getloadavg()[0]
    nats: Nats = servers["nats"]
    before_slow = int(nats.varz().get("slow_consumers", 0))
    with stalled_nats_subscriber(nats.port) as _sock:
        cut: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            start = time.monotonic()
            while not stop.wait(0.1):
                if int(nats.varz().get("slow_consumers", 0)) > before_slow:
                    cut.append(time.monotonic() - start)
                    return

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        got = Pair("nats", urls["nats"], "logs", {"rate": rate, "seconds": seconds}).run()
        stop.set()
        watcher.join(5)
    report.add("nats stalled subscriber: cut off as slow consumer after",
               cut[0] if cut else float("nan"),
               f"s (load {load:.2f}; {'not within ' + str(seconds) + ' s' if not cut else 'then its messages drop'})")
    report.add("nats stalled subscriber: lines to the other subscriber", got["receive"]["lines"],
               f"of {got['send']['sent']:,} sent")


@contextlib.contextmanager
def stalled_nats_subscriber(port: int) -> Iterator[socket.socket]:
    """A NATS client that subscribes to the log lines and then never reads its socket again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(5)
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB dvic_logs 1\r\nPING\r\n')
    seen = b""
    while b"PONG" not in seen:
        seen += sock.recv(4096)
    try:
        yield sock
    finally:
        sock.close()


def pg_queue_usage(url: str) -> float:
    async def query() -> float:
        import asyncpg
        conn = await asyncpg.connect(url)
        try:
            return float(await conn.fetchval("SELECT pg_notification_queue_usage()"))
        finally:
            await conn.close()
    return asyncio.run(query())


def pg_payload_limit(url: str) -> str:
    async def query() -> str:
        import asyncpg
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SELECT pg_notify('dvic_limit', $1)", "x" * 7999)
            try:
                await conn.execute("SELECT pg_notify('dvic_limit', $1)", "x" * 8000)
            except asyncpg.PostgresError as exc:
                return f"7,999 bytes accepted; 8,000 refused: {exc}"
            return "8,000 bytes accepted"
        finally:
            await conn.close()
    return asyncio.run(query())


def measure_reconnect(args: argparse.Namespace, servers: dict[str, Any], urls: dict[str, str],
                      report: Report) -> None:
    """The bus server restarted (down 1 s) in the middle of a presence stream at 200 changes/s."""
    for bus in BUSES:
        server = servers[bus]
        load = os.getloadavg()[0]

        def outage(server: Any = server) -> None:
            time.sleep(2.0)  # the outage is the measure's input, not a wait for something
            server.stop()
            time.sleep(1.0)
            server.start()

        got = Pair(bus, urls[bus], "presence", {"changes": 1200, "rate": 200, "reconnect": True,
                                                "deadline": 60}).run(during=outage)
        sent, recv = got["send"], got["receive"]
        report.add(f"{bus} restart (1 s down) mid-stream: lost", 1200 - recv["received"],
                   f"of 1,200 (never sent by A: {sent['lost_at_a']:,}; load {load:.2f})")
        report.add(f"{bus} restart: longest gap at B", recv["longest_gap"], "s")


def put(report: Report, tally: Tally, name: str, unit: str, *, lower_is_better: bool | None) -> None:
    """One figure per bus, and how many times better NATS did (below 1: PostgreSQL did better; no
    ratio when lower_is_better is None)."""
    for bus in BUSES:
        if (name, bus) in tally.values:
            report.add(f"{name} [{bus}]", tally.median(name, bus), f"{unit} (load {tally.load(name, bus):.2f})")
    if lower_is_better is not None and all((name, bus) in tally.values for bus in BUSES):
        pg, nats = tally.median(name, "postgres"), tally.median(name, "nats")
        if pg > 0 and nats > 0:
            ratio = pg / nats if lower_is_better else nats / pg
            report.add(f"{name}: NATS better by", ratio, "x")


def measure(args: argparse.Namespace, work: Path) -> Report:
    report = Report("Between replicas: PostgreSQL LISTEN/NOTIFY vs NATS")
    pg, nats = Postgres(), Nats(work / "nats")
    report.params["postgres dir"] = str(pg.home)
    try:
        pg.init()
        nats.init()
        pg.start()
    except BaseException:
        pg.remove()
        raise
    servers: dict[str, Any] = {"postgres": pg, "nats": nats}
    urls = {"postgres": pg.url, "nats": nats.url}
    try:
        nats.start()
        try:
            report.params.update(rounds=args.rounds, seconds=args.seconds, postgres=pg.version(),
                                 nats_server=nats.version())
            asyncio.run(create_table(pg.url))
            tally = Tally()
            measure_logs(args, servers, urls, tally)
            measure_rpc_shell_presence(args, urls, tally)
            measure_writes(args, urls, tally)
            report_tally(args, report, tally)
            report.add("NOTIFY payload limit", pg_payload_limit(pg.url))
            if args.stuck_seconds:
                measure_stuck(args, servers, urls, report)
            if args.reconnect:
                measure_reconnect(args, servers, urls, report)
        finally:
            nats.stop()
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        if args.keep:
            print(f"PostgreSQL cluster kept: {pg.home}")
        else:
            pg.remove()
    return report


def report_tally(args: argparse.Namespace, report: Report, tally: Tally) -> None:
    """The interleaved measures' medians, per bus, with NATS's ratio where both ran."""
    for rate in [*args.rates, 0]:
        label = f"{rate:,} lines/s" if rate else "unthrottled"
        put(report, tally, f"logs {label}: delivered", "lines/s", lower_is_better=False)
        put(report, tally, f"logs {label}: messages/s", "sent/s", lower_is_better=None)
        if rate:  # unthrottled, the publisher outruns the receiver: its latency is a queue's
            put(report, tally, f"logs {label}: p50", "ms", lower_is_better=True)
            put(report, tally, f"logs {label}: p99", "ms", lower_is_better=True)
        put(report, tally, f"logs {label}: lost", "lines", lower_is_better=None)
        for who in ("server", "replica A", "replica B"):
            put(report, tally, f"logs {label}: {who} CPU", "% of a core", lower_is_better=True)
    put(report, tally, "rpc: p50", "ms", lower_is_better=True)
    put(report, tally, "rpc: p99", "ms", lower_is_better=True)
    for label in ("1 MiB/s", "unthrottled"):
        put(report, tally, f"shell {label}: MiB/s", "MiB/s", lower_is_better=False)
        if label != "unthrottled":
            put(report, tally, f"shell {label}: p50", "ms", lower_is_better=True)
            put(report, tally, f"shell {label}: p99", "ms", lower_is_better=True)
    put(report, tally, "presence burst: all received after", "ms", lower_is_better=True)
    put(report, tally, "presence burst: p99", "ms", lower_is_better=True)
    put(report, tally, "presence burst: lost", "changes", lower_is_better=None)
    for case in ("alone", "notify in each", "beside NOTIFY load"):
        put(report, tally, f"writes {case}", "commits/s", lower_is_better=None)
    alone = tally.median("writes alone", "postgres")
    for case in ("notify in each", "beside NOTIFY load"):
        report.add(f"writes {case} / alone", tally.median(f"writes {case}", "postgres") / alone, "x")


async def create_table(url: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE bench_writes (id bigserial PRIMARY KEY, node text, seq bigint, text text)")
    await conn.close()


def rates(value: str) -> list[int]:
    out = [int(v) for v in value.split(",") if v.strip()]
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected rates >= 1 separated by commas, got {value}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("bus_compare", __doc__)
    p.add_argument("--rounds", type=positive_int, default=2, help="rounds, alternating which bus goes first (2)")
    p.add_argument("--seconds", type=positive_float, default=4.0, help="length of each throughput run (4)")
    p.add_argument("--rates", type=rates, default=[10_000, 20_000, 40_000],
                   help="log line rates to measure, lines/s; the first is also the NOTIFY load (10000,20000,40000)")
    p.add_argument("--requests", type=positive_int, default=1000, help="request-reply round trips (1000)")
    p.add_argument("--presence", type=positive_int, default=6000, help="presence changes in the burst (6000)")
    p.add_argument("--stuck-seconds", type=float, default=15.0,
                   help="length of the stuck-listener run (15; 0 skips it)")
    p.add_argument("--no-reconnect", dest="reconnect", action="store_false", help="skip the restart measure")
    add_common_args(p)
    return run_bench(p.parse_args(argv), "bus", measure, run=None)


if __name__ == "__main__":
    raise SystemExit(main())
