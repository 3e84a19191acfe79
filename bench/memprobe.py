"""Where a server's memory goes: snapshots taken inside dvic-central on a signal, compared offline.

The server runs as `bench.whatif_server` with DVIC_BENCH_MEMPROBE=DIR (and DVIC_BENCH_MEMPROBE_TRACE=FRAMES
to trace Python's allocations from the first probe on). Each SIGUSR2 writes DIR/probe-K.json: RSS, the C heap as glibc
counts it (mallinfo2: what OpenSSL and uvloop allocate is only there), the memory tracemalloc
traced, and the live objects by type (count and sys.getsizeof); with tracing on, DIR/probe-K.trace
too (a tracemalloc snapshot). `python3 -m bench.memprobe A B --per N` prints B - A per connection:
objects by type, then the allocations grouped by traceback.

`python3 -m bench.memprobe --tls N` measures OpenSSL alone, in this process: N mutual-TLS
handshakes over memory BIOs (as uvloop's and asyncio's TLS layers do them) against the server's
own context (`central.pki`), the C heap per server connection kept, for the settings it varies,
and the mode OpenSSL has on that context (read through libssl).
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
import tempfile
import tracemalloc
from collections.abc import Callable
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


SSL_CTRL_MODE = 33  # SSL_CTX_get_mode is a macro over SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, 0, NULL)
SSL_MODE_RELEASE_BUFFERS = 0x10


def ssl_ctx_mode(context: ssl.SSLContext) -> int | None:
    """OpenSSL's mode bits on `context` (SSL_CTX_get_mode), or None when they cannot be read safely.

    CPython gives no handle on its SSL_CTX; it is the first field after the object header. That
    pointer is trusted only when OpenSSL, asked through it, returns the verify mode and options
    Python reports for the same context."""
    try:
        libssl = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
        libssl.SSL_CTX_ctrl.restype = ctypes.c_long
        libssl.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        libssl.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        libssl.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        libssl.SSL_CTX_get_options.restype = ctypes.c_uint64
        libssl.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or libssl.SSL_CTX_get_options(pointer) != int(context.options):
        return None
    if libssl.SSL_CTX_get_verify_mode(pointer) != _openssl_verify_mode(context):
        return None
    return int(libssl.SSL_CTX_ctrl(pointer, SSL_CTRL_MODE, 0, None))


def _openssl_verify_mode(context: ssl.SSLContext) -> int:
    # SSL_VERIFY_NONE 0, PEER 1, FAIL_IF_NO_PEER_CERT 2 (CERT_REQUIRED sets both)
    return {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[context.verify_mode]


_Pair = tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]


def _move(source: _Pair, target: _Pair) -> None:
    data = source[2].read()
    if data:
        target[1].write(data)


def _drain(side: _Pair) -> None:
    while True:
        try:
            side[0].read(65536)
        except ssl.SSLWantReadError:
            return


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, request: bytes) -> tuple[_Pair, _Pair]:
    """One connection over memory BIOs: handshake, `request` to the server, a short answer back."""
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = (server.wrap_bio(s_in, s_out, server_side=True), s_in, s_out)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = (client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1"), c_in, c_out)
    done = {id(s): False, id(c): False}
    for _ in range(10):
        for side in (c, s):
            if not done[id(side)]:
                try:
                    side[0].do_handshake()
                    done[id(side)] = True
                except ssl.SSLWantReadError:
                    pass
        _move(c, s)
        _move(s, c)
        if all(done.values()):
            break
    c[0].write(request)
    _move(c, s)
    _drain(s)
    s[0].write(b"HTTP/1.1 101 Switching Protocols\r\n" + b"x" * 120 + b"\r\n\r\n")
    _move(s, c)
    _drain(c)
    return s, c


def tls_per_connection(count: int, server: ssl.SSLContext, client: ssl.SSLContext,
                       request: bytes = b"GET / HTTP/1.1\r\n" + b"h" * 300 + b"\r\n\r\n") -> float:
    """C heap bytes each server-side connection keeps after `count` handshakes (clients freed)."""
    gc.collect()
    before = c_heap().get("in_use", 0)
    kept = [_handshake(server, client, request)[0] for _ in range(count)]
    gc.collect()
    held = c_heap().get("in_use", 0) - before
    del kept  # measured while alive
    return held / count


def tls_report(count: int) -> None:
    """OpenSSL's share of a node connection, and what changes it (see the module doc)."""
    from central.pki import CertificateAuthority

    with tempfile.TemporaryDirectory() as tmp:
        ca = CertificateAuthority(Path(tmp))
        node = ca.issue_node("00000000-0000-4000-8000-000000000000")
        (Path(tmp) / "node.crt").write_text(node.cert_pem)
        (Path(tmp) / "node.key").write_text(node.key_pem)

        def server(tune: Callable[[ssl.SSLContext], None] = lambda _c: None) -> ssl.SSLContext:
            context = ca.server_ssl_context(["127.0.0.1"])
            tune(context)
            return context

        def client(with_cert: bool = True, tls12: bool = False) -> ssl.SSLContext:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cafile=str(ca.cert_path))
            if with_cert:
                context.load_cert_chain(Path(tmp) / "node.crt", Path(tmp) / "node.key")
            if tls12:
                context.maximum_version = ssl.TLSVersion.TLSv1_2
            return context

        mode = ssl_ctx_mode(server())
        shown = "unreadable" if mode is None else f"{mode:#x}, SSL_MODE_RELEASE_BUFFERS " + (
            "set" if mode & SSL_MODE_RELEASE_BUFFERS else "NOT set")
        print(f"{ssl.OPENSSL_VERSION}; the server context's mode: {shown}")
        print(f"C heap kept per server connection, {count} connections:")
        rows: list[tuple[str, float]] = [
            ("as the server runs (TLS 1.3, node certificate)", tls_per_connection(count, server(), client())),
            ("no client certificate", tls_per_connection(count, server(), client(with_cert=False))),
            ("TLS 1.2", tls_per_connection(count, server(), client(tls12=True))),
            ("no session tickets (num_tickets = 0)",
             tls_per_connection(count, server(lambda c: setattr(c, "num_tickets", 0)), client())),
            ("after one 60 KB write from the node", tls_per_connection(
                count, server(), client(), request=b"GET / HTTP/1.1\r\n" + b"h" * 60_000 + b"\r\n\r\n")),
        ]
        for name, size in rows:
            print(f"  {size / 1024:7.1f} KiB  {name}")
        fresh = []
        context = server()
        gc.collect()
        start = c_heap().get("in_use", 0)
        for _ in range(count):
            fresh.append(context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True))
        gc.collect()
        print(f"  {(c_heap().get('in_use', 0) - start) / count / 1024:7.1f} KiB  an SSL object and its two"
              " memory BIOs before the handshake")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.memprobe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, nargs="?", help="a probe's path without its suffix (DIR/probe-0)")
    p.add_argument("after", type=Path, nargs="?")
    p.add_argument("--per", type=int, default=1, help="divide by this many connections")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--tls", type=int, metavar="N", help="measure OpenSSL's part over N in-process handshakes instead")
    args = p.parse_args(argv)
    if args.tls is not None:
        if args.tls < 1:
            p.error("--tls: give a number of connections, 1 or more")
        tls_report(args.tls)
        return 0
    if args.before is None or args.after is None:
        p.error("give two probes (DIR/probe-0 DIR/probe-1), or --tls N")
    compare(args.before, args.after, max(1, args.per), args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
