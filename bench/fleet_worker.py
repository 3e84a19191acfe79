"""Fleet benchmark load: a slice of the simulated nodes, each on its own mutual-TLS websocket.

Every node says hello, sends a metrics sample every `interval` seconds and `lines-per-s` log
lines a second. `--batching daemon` sends them as node_script/dvic_node.py does (a line goes at
once while no `logs` frame awaits its ack; while one does, lines gather until that ack or for at
most COALESCE_S); `--batching interval` flushes every `batch-interval` seconds. Each line's
text ends with `sent=<unix time>` stamped just before its frame is written, so a subscriber can
measure the time from a line leaving its node to reaching it. With `--replicas` (bench/failover.py)
node i connects to the i-th of several servers and, when its connection is lost, connects to the
next one and sends again every line not yet acknowledged, as the daemon resends its spool.
Run by bench/fleet.py (stdin/stdout protocol of bench/workers.py), never by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import resource
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from central.cli import run_event_loop

from . import loglines
from .enroll import NodeCreds, load_fleet
from .workers import emit, wait_for_go
from .wsnode import NodeConnectError, connect_node

TICK_S = 0.01
FD_SPARE = 64
COALESCE_S = 0.25  # as the daemon's COALESCE_S


@dataclass(eq=False)
class SimNode:
    creds: NodeCreds
    ws: aiohttp.ClientWebSocketResponse | None = None
    seq: int = 0  # last seq sent
    acked: int = 0
    acks: int = 0
    budget: float = 0.0
    next_metrics: float = 0.0
    metrics_sent: int = 0
    frames: int = 0
    close_code: int | None = None
    reader: asyncio.Task[None] | None = field(default=None, repr=False)
    # (last seq of a frame, monotonic send time) until its ack: the server's commit latency.
    unacked: deque[tuple[int, float]] = field(default_factory=deque, repr=False)
    ack_latencies: list[float] | None = field(default=None, repr=False)
    # --batching daemon: lines made but not sent yet (their unix times), when the last frame
    # left (loop time), whether a coalescing deadline is booked, and where to report "all acked".
    held: list[float] = field(default_factory=list, repr=False)
    last_send: float = 0.0
    deadline_booked: bool = False
    all_acked: list[SimNode] | None = field(default=None, repr=False)
    # --replicas: how to connect again after a loss, and the lines sent and not yet acknowledged.
    failover: Failover | None = field(default=None, repr=False)
    unacked_lines: deque[dict[str, Any]] = field(default_factory=deque, repr=False)
    encoder: loglines.LineEncoder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.encoder = loglines.LineEncoder(self.creds.index)

    async def read(self) -> None:
        """Count acks until the connection ends (the server's pings are answered by aiohttp); with
        --replicas, connect to the next server then and go on."""
        while True:
            await self._read_one_connection()
            if self.failover is None or self.failover.stopping or not await self.failover.reconnect(self):
                return

    async def _read_one_connection(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            reply = json.loads(msg.data)
            if reply.get("type") == "ack":
                self.acks += 1
                self.acked = max(self.acked, int(reply["seq"]))
                while self.unacked_lines and self.unacked_lines[0]["seq"] <= self.acked:
                    self.unacked_lines.popleft()
                now = time.monotonic()
                while self.unacked and self.unacked[0][0] <= self.acked:
                    _, sent = self.unacked.popleft()
                    if self.ack_latencies is not None:
                        self.ack_latencies.append(now - sent)
                if not self.unacked and self.held and self.all_acked is not None:
                    self.all_acked.append(self)  # the daemon sends what it holds when the ack comes
        self.close_code = self.ws.close_code

    async def flush(self, lines_per_flush: float, spread: float) -> int:
        """Send the lines that piled up since the last flush; returns how many."""
        self.budget += lines_per_flush
        count = int(self.budget)
        if count == 0 or self.ws is None or self.ws.closed:
            return 0
        self.budget -= count
        sent_at = time.time()
        return await self._send_lines([sent_at - spread * (count - 1 - k) / count for k in range(count)], sent_at)

    def make_lines(self, lines_per_tick: float) -> None:
        """--batching daemon: this tick's new lines join the held ones."""
        self.budget += lines_per_tick
        count = int(self.budget)
        self.budget -= count
        self.held.extend([time.time()] * count)

    async def send_held(self, now: float) -> int:
        self.deadline_booked = False
        if not self.held or self.ws is None or self.ws.closed:
            return 0
        made, self.held = self.held, []
        self.last_send = now
        return await self._send_lines(made, time.time())

    async def _send_lines(self, made: list[float], sent_at: float) -> int:
        count = len(made)
        kept = self.failover is not None  # numbered even if this send fails: they go again after a reconnect
        if kept:  # --replicas keeps the lines to send again
            lines = []
            for k, made_at in enumerate(made):
                seq = self.seq + 1 + k
                text = f"{loglines.message(self.creds.index, seq)} sent={sent_at:.6f}"
                lines.append(loglines.line(self.creds.index, seq, made_at, text))
            frame = json.dumps({"type": "logs", "lines": lines}, separators=(",", ":"))
        else:  # the same text, from parts encoded once (bench/loglines.py, LineEncoder)
            encode = self.encoder.encode
            frame = loglines.logs_frame([encode(self.seq + 1 + k, made_at, sent_at) for k, made_at in enumerate(made)])
        assert self.ws is not None  # the callers send only on an open websocket
        self.unacked.append((self.seq + count, time.monotonic()))
        if kept:
            self.unacked_lines.extend(lines)
            self.seq += count
        await self.ws.send_str(frame)
        if not kept:
            self.seq += count
        self.frames += 1
        return count

    async def send_metrics(self, interval: float) -> None:
        if self.ws is None or self.ws.closed:
            return
        await self.ws.send_str(json.dumps(loglines.metrics(time.time(), self.creds.index, self.metrics_sent)))
        self.metrics_sent += 1
        self.next_metrics += interval


@dataclass(eq=False)
class Failover:
    """--replicas: the servers a node may reach; a lost node tries them in turn from the next one."""

    session: aiohttp.ClientSession
    ca_path: str
    bases: list[str]  # wss://host:port of each server
    retry_s: float = 0.5
    give_up_s: float = 120.0
    stopping: bool = False
    # (node id, seconds from the loss to the next welcome) for every reconnect, and nodes that gave up.
    reconnects: list[tuple[str, float]] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)

    def url_for(self, creds: NodeCreds, attempt: int) -> str:
        path = creds.ws_url.split("/", 3)[3]
        return f"{self.bases[(creds.index + attempt) % len(self.bases)]}/{path}"

    async def reconnect(self, node: SimNode) -> bool:
        """Connect `node` again (the next server first) and resend what was not acknowledged."""
        lost_at = time.monotonic()
        node.unacked.clear()  # their ack times would include the outage
        for attempt in range(1, 10_000):
            if self.stopping or time.monotonic() - lost_at > self.give_up_s:
                break
            creds = dataclasses.replace(node.creds, ws_url=self.url_for(node.creds, attempt))
            try:
                node.ws, _ = await connect_node(self.session, self.ca_path, creds)
            except (NodeConnectError, aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.sleep(self.retry_s)
                continue
            self.reconnects.append((node.creds.node_id, time.monotonic() - lost_at))
            if node.unacked_lines:
                lines = list(node.unacked_lines)
                node.unacked.append((lines[-1]["seq"], time.monotonic()))
                await _unless_closed(node.ws.send_str(json.dumps({"type": "logs", "lines": lines})))
            return True
        self.gave_up.append(node.creds.node_id)
        return False


async def connect_all(session: aiohttp.ClientSession, ca_path: str, nodes: list[SimNode],
                      concurrency: int) -> list[str]:
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def one(node: SimNode) -> None:
        async with gate:
            try:
                node.ws, _ = await connect_node(session, ca_path, node.creds)
            except (NodeConnectError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                errors.append(str(exc))
                return
        node.reader = asyncio.create_task(node.read())

    await asyncio.gather(*(one(n) for n in nodes))
    return errors


class Schedule:
    """The tick clock both send schedules share: nodes spread over `slots` ticks, metrics spread over
    the interval, the worst lateness of a tick, and ack latencies timed from the warm-up on."""

    def __init__(self, nodes: list[SimNode], slots: int, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.live = [n for n in nodes if n.ws is not None]
        self.by_slot: list[list[SimNode]] = [[] for _ in range(slots)]
        for i, node in enumerate(self.live):
            self.by_slot[i % slots].append(node)
        self.start = self.loop.time()
        for i, node in enumerate(self.live):  # spread, as real nodes are
            node.next_metrics = self.start + args.interval * i / max(1, len(self.live))
        self.worst = 0.0
        self.ack_latencies: list[float] = []

    async def ticks(self) -> AsyncIterator[tuple[int, float, list[SimNode]]]:
        """(tick, its start, the nodes of its slot) every TICK_S until the duration is over."""
        args, loop = self.args, self.loop
        for tick in range(int(args.duration / TICK_S) + 1):
            now = loop.time()
            if now >= self.start + args.duration:
                return
            self.worst = max(self.worst, now - (self.start + tick * TICK_S))
            if tick == int(args.warmup / TICK_S):
                for node in self.live:  # time acks only after the warm-up, like the subscriber
                    node.ack_latencies = self.ack_latencies
            yield tick, now, self.by_slot[tick % len(self.by_slot)]
            delay = self.start + (tick + 1) * TICK_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


async def drive(nodes: list[SimNode], args: argparse.Namespace) -> tuple[float, list[float]]:
    """The send schedule; returns the worst lateness of a tick (how far the loop fell behind), and
    the ack latencies of frames sent after the warm-up (filled in while acks arrive)."""
    if args.batching == "daemon":
        return await drive_like_daemon(nodes, args)
    schedule = Schedule(nodes, max(1, round(args.batch_interval / TICK_S)), args)
    per_flush = args.lines_per_s * args.batch_interval
    async for _, now, slot in schedule.ticks():
        for node in slot:
            await _unless_closed(node.flush(per_flush, args.batch_interval))
            if now >= node.next_metrics:
                await _unless_closed(node.send_metrics(args.interval))
    return schedule.worst, schedule.ack_latencies


async def drive_like_daemon(nodes: list[SimNode], args: argparse.Namespace) -> tuple[float, list[float]]:
    """--batching daemon: each node makes its lines at their own times (1 / lines-per-s apart, phases
    spread over the fleet) and sends them by the daemon's rule (node_script/dvic_node.py,
    Daemon._sender): at once while none of its frames awaits an ack; otherwise when the ack comes or
    COALESCE_S after its last frame, whichever is first. So frames grow when acks slow down."""
    slots = max(1, round(1 / args.lines_per_s / TICK_S))
    lines_per_tick = args.lines_per_s * slots * TICK_S
    schedule = Schedule(nodes, slots, args)
    all_acked: list[SimNode] = []
    for node in schedule.live:
        node.all_acked = all_acked
    deadlines: dict[int, list[SimNode]] = {}
    async for tick, now, slot in schedule.ticks():
        acked_now, all_acked[:] = list(all_acked), []
        for node in acked_now + deadlines.pop(tick, []):
            await _unless_closed(node.send_held(now))
        for node in slot:
            node.make_lines(lines_per_tick)
            if not node.unacked or now - node.last_send >= COALESCE_S:
                await _unless_closed(node.send_held(now))
            elif not node.deadline_booked:
                node.deadline_booked = True
                at = max(tick + 1, math.ceil((node.last_send + COALESCE_S - schedule.start) / TICK_S))
                deadlines.setdefault(at, []).append(node)
            if now >= node.next_metrics:
                await _unless_closed(node.send_metrics(args.interval))
    for node in schedule.live:  # what the last ticks made still goes out, as a daemon's would
        await _unless_closed(node.send_held(schedule.loop.time()))
    return schedule.worst, schedule.ack_latencies


async def _unless_closed(send: Awaitable[object]) -> None:
    try:
        await send
    except (ConnectionError, RuntimeError):
        pass  # the reader records the close; the node's lines stay counted as unsent


async def drain(nodes: list[SimNode], timeout: float) -> None:
    """Wait (bounded) until every open node has its last line acknowledged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if all(n.acked >= n.seq for n in nodes if n.ws is not None and not n.ws.closed):
            return
        await asyncio.sleep(0.05)


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file limit to `needed` (the soft one up to the hard one; the hard
    one too when the process may, e.g. as root); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            pass  # unprivileged: as far as the hard limit goes
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


async def main(args: argparse.Namespace, fleet_nodes: list[NodeCreds], ca_path: str) -> int:
    nodes = [SimNode(c) for c in fleet_nodes[args.start:args.start + args.count]]
    # One socket per node, plus the interpreter's own files.
    limit = raise_fd_limit(len(nodes) + FD_SPARE)
    if limit < len(nodes) + FD_SPARE:
        print(f"open-file limit {limit}: fewer than {len(nodes)} nodes can connect", file=sys.stderr)
    # A source address of its own (127.0.0.x): each holds ~28,000 ephemeral ports towards the
    # server's one address and port (net.ipv4.ip_local_port_range), too few for 20,000+ nodes.
    local_addr = (args.source_address, 0) if args.source_address else None
    connector = aiohttp.TCPConnector(limit=0, local_addr=local_addr)
    async with aiohttp.ClientSession(connector=connector) as session:
        failover = Failover(session, ca_path, args.replicas.split(",")) if args.replicas else None
        if failover is not None:
            for node in nodes:
                node.failover = failover
                node.creds = dataclasses.replace(node.creds, ws_url=failover.url_for(node.creds, 0))
        started = time.monotonic()
        errors = await connect_all(session, ca_path, nodes, args.connect_concurrency)
        emit("ready", connected=sum(1 for n in nodes if n.ws is not None), failed=len(errors),
             errors=errors[:5], connect_s=time.monotonic() - started)
        if not await wait_for_go(args.ready_timeout):
            emit("result", error="no go from the parent")
            return 1
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        sent_from = time.time()
        worst, ack_latencies = await drive(nodes, args)
        send_seconds = time.time() - sent_from
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        await drain(nodes, args.drain_timeout)
        if failover is not None:
            failover.stopping = True
        dropped = {n.creds.node_id: n.close_code for n in nodes if n.ws is not None and n.ws.closed}
        await asyncio.wait_for(asyncio.gather(*(n.ws.close() for n in nodes if n.ws is not None),
                                              return_exceptions=True), 30)
        readers = [n.reader for n in nodes if n.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=10)
    emit("result", send_seconds=send_seconds, worst_tick_lateness=worst,
         lines_sent=sum(n.seq for n in nodes), frames=sum(n.frames for n in nodes),
         metrics_sent=sum(n.metrics_sent for n in nodes), acks=sum(n.acks for n in nodes),
         lines_acked=sum(n.acked for n in nodes), dropped_during_run=dropped,
         sent_by_node={n.creds.node_id: n.seq for n in nodes},
         acked_by_node={n.creds.node_id: n.acked for n in nodes},
         ack_latencies_ms=[round(v * 1000, 2) for v in ack_latencies],
         cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
         reconnects=failover.reconnects if failover else [], gave_up=failover.gave_up if failover else [])
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fleet", required=True)
    p.add_argument("--start", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--lines-per-s", type=float, default=5.0)
    p.add_argument("--batch-interval", type=float, default=0.2)
    p.add_argument("--batching", choices=("daemon", "interval"), default="daemon")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument("--drain-timeout", type=float, default=15.0)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--source-address", default="", help="connect from this local address (127.0.0.x)")
    p.add_argument("--replicas", default="", help="wss://HOST:PORT,...: servers to spread over and fail over to")
    return p.parse_args()


if __name__ == "__main__":
    options = parse_args()
    fleet = load_fleet(Path(options.fleet))
    # The server's own loop choice (uvloop when installed): the load is the server's to carry,
    # the simulator should take as little of the shared CPU as it can.
    raise SystemExit(run_event_loop(main(options, fleet.nodes, fleet.ca_path)))
