"""Deterministic, realistic log lines: the same (node, seq) always gives the same line."""

from __future__ import annotations

import json
import random
from typing import Any

LEVEL_MIX = ("INFO",) * 14 + ("DEBUG",) * 3 + ("WARNING",) * 2 + ("ERROR",)
_WORDS = (
    "calibrated servo arm camera frame queue sensor reading motor encoder temperature battery voltage "
    "retry connect socket timeout publish subscribe topic mqtt client detected object confidence "
    "latency buffer flushed wrote bytes received packet checksum mismatch recovered started stopped "
    "pid gpio pin pwm duty cycle led strip brightness audio sample rate model loaded inference fps "
    "gripper position target reached joint angle velocity limit exceeded heartbeat ok websocket "
    "config reload user request handled http status cache hit miss disk usage memory"
).split()
POOL_SIZE = 4096


def _pool(seed: int = 20261124) -> list[str]:
    rng = random.Random(seed)
    pool = []
    for _ in range(POOL_SIZE):
        words = rng.choices(_WORDS, k=rng.randint(6, 16))
        numbers = f" id={rng.randint(1, 99999)} value={rng.uniform(0, 1000):.2f}"
        pool.append(" ".join(words) + numbers)
    return pool


_POOL = _pool()


def message(node_index: int, seq: int) -> str:
    return _POOL[(node_index * 7919 + seq * 31) % POOL_SIZE]


# The pool's messages as JSON string contents (quotes left off), for LineEncoder.
_POOL_JSON = [json.dumps(text)[1:-1] for text in _POOL]


class LineEncoder:
    """A node's lines ready as JSON text: `encode(seq, ts, sent_at)` is exactly
    `json.dumps(line(node_index, seq, ts, f"{message(node_index, seq)} sent={sent_at:.6f}"),
    separators=(",", ":"))`, from parts encoded once. The load generators share the CPU with the
    server they measure: building each line's dict and encoding the frame was a fifth of their
    time per frame (bench.fleet_worker)."""

    __slots__ = ("node_index", "_fixed")

    def __init__(self, node_index: int) -> None:
        self.node_index = node_index
        fixed = {"source": "demo", "unit": f"demo-{node_index % 8}", "demo": f"{node_index:08x}{node_index % 8:08x}"}
        self._fixed = json.dumps(fixed, separators=(",", ":"))[1:-1]

    def encode(self, seq: int, ts: float, sent_at: float) -> str:
        # repr of the rounded float: how json.dumps writes a float.
        return (f'{{"seq":{seq},"ts":{round(ts, 3)!r},{self._fixed},"level":"{LEVEL_MIX[seq % len(LEVEL_MIX)]}",'
                f'"msg":"{_POOL_JSON[(self.node_index * 7919 + seq * 31) % POOL_SIZE]} sent={sent_at:.6f}"}}')


def logs_frame(encoded_lines: list[str]) -> str:
    """A `logs` frame of lines from LineEncoder.encode, as json.dumps({"type": "logs", "lines": [...]},
    separators=(",", ":")) writes it."""
    return '{"type":"logs","lines":[' + ",".join(encoded_lines) + "]}"


def line(node_index: int, seq: int, ts: float, msg: str | None = None) -> dict[str, Any]:
    """One protocol log line (docs/protocol.md, `logs`) from a demo on a simulated node."""
    return {
        "seq": seq, "ts": round(ts, 3), "source": "demo", "unit": f"demo-{node_index % 8}",
        "demo": f"{node_index:08x}{node_index % 8:08x}", "level": LEVEL_MIX[seq % len(LEVEL_MIX)],
        "msg": message(node_index, seq) if msg is None else msg,
    }


def batch(node_index: int, first_seq: int, count: int, base_ts: float) -> list[dict[str, Any]]:
    """`count` consecutive lines; ts advances 1 ms a line so the rows sort like real ones."""
    return [line(node_index, s, base_ts + s / 1000.0) for s in range(first_seq, first_seq + count)]


def metrics(ts: float, node_index: int, tick: int) -> dict[str, Any]:
    """A metrics message shaped like a Raspberry Pi's (docs/protocol.md, `metrics`)."""
    wobble = (node_index * 13 + tick * 7) % 50
    return {
        "type": "metrics", "ts": round(ts, 3),
        "cpu": {"total": 5.0 + wobble, "per_core": [5.0 + wobble, 4.0, 6.0, 3.0]},
        "load": [0.2 + wobble / 50, 0.3, 0.3],
        "mem": {"total": 4_096_000_000, "available": 2_048_000_000, "percent": 50.0 + wobble / 5},
        "swap": {"total": 0, "used": 0, "percent": 0.0},
        "disks": [{"mount": "/", "total": 32_000_000_000, "used": 8_000_000_000, "percent": 25.0}],
        "temps": [{"name": "cpu-thermal", "celsius": 45.0 + wobble / 10}],
        "throttled": "0x0", "uptime": 1000.0 + tick * 5, "procs": 140 + wobble,
        "net": {"rx_bytes": 100_000 * tick, "tx_bytes": 50_000 * tick},
    }


def hello(name: str) -> dict[str, Any]:
    return {
        "type": "hello", "protocol": 1, "daemon_version": "bench-0",
        "facts": {"hostname": name, "os": "Debian GNU/Linux 12", "kernel": "6.1.0", "arch": "aarch64",
                  "model": "simulated node", "ips": ["127.0.0.1"], "python": "3.11.2"},
    }
