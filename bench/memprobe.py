"""Where a server's memory goes: snapshots taken inside dvic-central on a signal, compared offline.

The server runs as `bench.whatif_server` with DVIC_BENCH_MEMPROBE=DIR (and DVIC_BENCH_MEMPROBE_TRACE=FRAMES
to trace Python's allocations from the first probe on). Each SIGUSR2 writes DIR/probe-K.json: RSS, the C heap as glibc
counts it (mallinfo2: what OpenSSL and uvloop allocate is only there), the memory tracemalloc
traced, and the live objects by type (count and sys.getsizeof); with tracing on, DIR/probe-K.trace
too (a tracemalloc snapshot). `python3 -m bench.memprobe A B --per N` prints B - A per connection:
objects by type, then the allocations grouped by traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import ssl
import sys
import tracemalloc
from pathlib import Path
from typing import Any

PROBE_ENV = "DVIC_BENCH_MEMPROBE"
TRACE_ENV = "DVIC_BENCH_MEMPROBE_TRACE"  # FRAMES: trace Python's allocations from the first probe on


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def c_heap() -> dict[str, int]:
    """glibc's view of the heap: bytes in use (arenas + mmapped blocks) and free but kept."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {"in_use": info.uordblks + info.hblkhd, "free_kept": info.fordblks, "arena": info.arena,
            "mmapped": info.hblkhd}


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def objects_by_type() -> dict[str, list[int]]:
    """type name -> [count, bytes by sys.getsizeof] of every object the GC tracks (and what they hold
    directly that it does not: str, bytes, int values of containers are not counted here)."""
    sizes: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        kind = type(obj)
        entry = sizes.setdefault(f"{kind.__module__}.{kind.__qualname__}", [0, 0])
        entry[0] += 1
        try:
            entry[1] += sys.getsizeof(obj)
        except TypeError:
            pass
    return sizes


def tls_sessions_cached() -> int:
    """Sessions in the server-side caches of every live SSLContext (OpenSSL keeps up to 20,480)."""
    return sum(obj.session_stats().get("number", 0) for obj in gc.get_objects() if isinstance(obj, ssl.SSLContext))


def write_probe(directory: Path, trace_frames: int = 0) -> Path:
    """Write the next probe; the first one starts tracing when asked (`trace_frames`): later probes
    then see every allocation made since, without slowing the server's start-up."""
    index = len(list(directory.glob("probe-*.json")))
    base = directory / f"probe-{index}"
    if trace_frames and not tracemalloc.is_tracing():
        tracemalloc.start(trace_frames)
    gc.collect()
    info: dict[str, Any] = {"rss": _rss(), "c_heap": c_heap(), "objects": objects_by_type(),
                            "tls_sessions_cached": tls_sessions_cached()}
    if tracemalloc.is_tracing():
        info["traced"] = tracemalloc.get_traced_memory()[0]
        tracemalloc.take_snapshot().dump(str(base) + ".trace")
    Path(str(base) + ".json").write_text(json.dumps(info))
    return base


def install_from_env() -> None:
    """In the server process: SIGUSR2 writes a probe when DVIC_BENCH_MEMPROBE names a directory."""
    directory = os.environ.get(PROBE_ENV)
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get(TRACE_ENV, "0") or 0)
    signal.signal(signal.SIGUSR2, lambda _sig, _frame: write_probe(path, frames))


def _load(base: Path) -> dict[str, Any]:
    probe: dict[str, Any] = json.loads(Path(str(base) + ".json").read_text())
    return probe


def compare(before: Path, after: Path, per: int, top: int) -> None:
    a, b = _load(before), _load(after)
    print(f"RSS {a['rss'] / 1e6:.1f} -> {b['rss'] / 1e6:.1f} MB: {(b['rss'] - a['rss']) / per:,.0f} B each")
    heap_a, heap_b = a.get("c_heap", {}), b.get("c_heap", {})
    for key in ("in_use", "free_kept", "mmapped"):
        if key in heap_a and key in heap_b:
            print(f"C heap {key}: {(heap_b[key] - heap_a[key]) / per:,.0f} B each")
    print(f"TLS sessions cached: {a.get('tls_sessions_cached')} -> {b.get('tls_sessions_cached')}")
    if "traced" in a and "traced" in b:
        print(f"traced by tracemalloc: {(b['traced'] - a['traced']) / per:,.0f} B each")
    print("\nobjects per connection by type (count, getsizeof bytes):")
    grown = []
    for name, (count, size) in b["objects"].items():
        was = a["objects"].get(name, [0, 0])
        grown.append((size - was[1], count - was[0], name))
    for size, count, name in sorted(grown, reverse=True)[:top]:
        print(f"  {size / per:9,.0f} B {count / per:7.2f}  {name}")
    trace_a, trace_b = Path(str(before) + ".trace"), Path(str(after) + ".trace")
    if not (trace_a.exists() and trace_b.exists()):
        return
    snap_a = tracemalloc.Snapshot.load(str(trace_a))
    snap_b = tracemalloc.Snapshot.load(str(trace_b))
    print("\ntraced allocations per connection by where they were made:")
    for name, size in sorted(by_category(snap_a, snap_b).items(), key=lambda kv: -kv[1]):
        print(f"  {size / per:9,.0f} B  {name}")
    print("\nallocations per connection grouped by traceback (innermost frame first):")
    for stat in snap_b.compare_to(snap_a, "traceback")[:top]:
        if stat.size_diff <= 0:
            continue
        print(f"  {stat.size_diff / per:9,.0f} B {stat.count_diff / per:7.2f} blocks")
        for line in stat.traceback.format(limit=6, most_recent_first=True):
            print(f"      {line.strip()}")


# Where an allocation is charged: the innermost frame of its traceback in one of these files.
# Allocations made by C code the event loop calls (uvloop: its TLS read buffer, transports,
# timers) have no frame of their own; they land in "uvloop, called from the loop".
CATEGORIES = (
    ("aiohttp/_websocket/", "aiohttp websocket (reader, writer, queue)"),
    ("aiohttp/web_ws.py", "aiohttp websocket (reader, writer, queue)"),
    ("aiohttp/", "aiohttp request and connection handler"),
    ("multidict/", "aiohttp request and connection handler"),
    ("yarl/", "aiohttp request and connection handler"),
    ("/ssl.py", "ssl module (peer certificate as a dict)"),
    ("central/nodehub.py", "node session (central/nodehub.py)"),
    ("central/registry.py", "per-node state (central/registry.py)"),
    ("central/nodelimits.py", "per-node state (central/registry.py)"),
    ("central/messages.py", "per-node state (central/registry.py)"),
    ("central/strictjson.py", "per-node state (central/registry.py)"),
    ("json/", "per-node state (central/registry.py)"),
    ("central/", "rest of central/"),
    ("asyncio/", "asyncio (tasks, events, handles)"),
)


# Frames every allocation made from the event loop has beneath it.
OUTER_FRAMES = ("asyncio/runners.py", "uvloop/__init__.py", "central/cli.py", "bench/whatif_server.py")


def category(trace: tracemalloc.Traceback) -> str:
    for frame in reversed(trace):  # innermost first
        if frame.filename.endswith(OUTER_FRAMES):
            continue
        for part, name in CATEGORIES:
            if part in frame.filename:
                return name
    return "uvloop, called from the loop (TLS read buffer, transports, timers)"


def by_category(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for stat in after.compare_to(before, "traceback"):
        name = category(stat.traceback)
        sizes[name] = sizes.get(name, 0) + stat.size_diff
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.memprobe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, help="a probe's path without its suffix (DIR/probe-0)")
    p.add_argument("after", type=Path)
    p.add_argument("--per", type=int, default=1, help="divide by this many connections")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    compare(args.before, args.after, max(1, args.per), args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
