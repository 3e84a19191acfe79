"""What `--proxy-protocol-from` costs per connection (central/proxyproto.py): the real server's RSS per
idle HTTPS connection without the option, with it for connections from an address it does not
list (served as without it), and with it for connections from a listed address (a PROXY v2 header
before the TLS, as HAProxy's send-proxy-v2 sends).

    python3 -m bench.proxy_conns [--conns 3000] [--loop uvloop|asyncio]

Each connection finishes its TLS handshake and one keep-alive `GET /api/v1/health` (50 at a time:
the rate they were opened at is printed too, the client in this process being part of it), then stays
open (the server's idle and header timeouts raised past the run). The three servers run one after
the other, each fresh; the client is this process.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

from central.proxyproto import build_header
from tests.support.server import CentralServer

LISTED = "127.0.0.3"
MODES = {
    "without the option": ((), "127.0.0.1", False),
    "with it, an address not listed": (("--proxy-protocol-from", LISTED), "127.0.0.1", False),
    "with it, from the balancer (PROXY header)": (("--proxy-protocol-from", LISTED), LISTED, True),
}
CONCURRENT = 50
REQUEST = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def one(server: CentralServer, source: str, header: bool, i: int) -> asyncio.StreamWriter:
    """A connection past its handshake and one answered request."""
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if header:
        writer.write(build_header((f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000), ("127.0.0.1", port)))
    await writer.start_tls(server.ssl_context, server_hostname="127.0.0.1")
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return writer


async def hold(server: CentralServer, source: str, header: bool, count: int) -> list[asyncio.StreamWriter]:
    """`count` connections, CONCURRENT at a time (a fleet reconnecting at once)."""
    held: list[asyncio.StreamWriter] = []
    for start in range(0, count, CONCURRENT):
        held += await asyncio.gather(*(one(server, source, header, i)
                                       for i in range(start, min(count, start + CONCURRENT))))
    return held


async def measure(work: Path, name: str, options: tuple[str, ...], source: str, header: bool, count: int,
                  loop: str) -> float:
    extra = (*options, "--max-connections-per-address", str(count + 10), "--idle-timeout", "3600",
             "--header-timeout", "600", "--access-log", "off")
    with CentralServer(work / name, extra_args=extra, env={"DVIC_EVENT_LOOP": loop}) as server:
        pid = server.pid
        warm = await hold(server, source, header, 50)  # the first connections' one-time allocations
        before, started = rss_kib(pid), time.monotonic()
        held = await hold(server, source, header, count)
        took, after = time.monotonic() - started, rss_kib(pid)
        for writer in held + warm:
            writer.close()
    return (after - before) * 1024 / count, count / took


async def main_async(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        for i, (mode, (options, source, header)) in enumerate(MODES.items()):
            per, rate = await measure(Path(tmp), f"s{i}", options, source, header, args.conns, args.loop)
            print(f"{mode}: {per / 1024:.1f} KB per connection, {rate:.0f} connections/s opened {CONCURRENT} at a time"
                  f" ({args.conns} idle HTTPS connections, {args.loop})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.proxy_conns", description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=3000)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args(argv)
    if not 1 <= args.conns <= 20000:
        p.error("--conns: between 1 and 20000")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
