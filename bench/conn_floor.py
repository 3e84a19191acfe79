"""The memory floor of a node connection on this stack: what a server that does nothing but hold
mutual-TLS websockets costs per connection, to bound what a leaner node path could save.

    python3 -m bench.conn_floor [--conns 5000] [--loop uvloop] [--tls central|loop] [--plain]

Starts a stand-in server (this module, `--serve`) on 127.0.0.1 with the real server's TLS context
(`central.pki`, a client certificate verified against the CA) and the real server's TLS layer
(`central.tlsconn` over the loop's plain TCP transports; `--tls loop`: the event loop's own TLS,
what the server used before, reading through a buffered protocol), answering each websocket upgrade with 101 and keeping one small object
per connection: no HTTP request, no websocket objects, no timers, no per-node state. A client
process opens --conns connections with a node certificate, sends the upgrade and one 600-byte
masked text frame (a hello's size), and holds them. Prints the server's RSS before and after, per
connection. Compare with bench.fleet's "RSS, all connected, idle" per node (docs/performance.md).
`--plain`: the same over plain TCP, what is left when TLS ends outside the process.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

UPGRADE = (b"GET /api/v1/node/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
             b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
HELLO_BYTES = 600
_shared = memoryview(bytearray(64 * 1024))


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class HeldConnection(asyncio.BufferedProtocol):
    """All the stand-in keeps per connection: its transport and whether it was upgraded."""

    __slots__ = ("transport", "upgraded")
    held: set[HeldConnection] = set()

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's TLS transport is no asyncio.WriteTransport
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        HeldConnection.held.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _shared

    def buffer_updated(self, nbytes: int) -> None:
        if not self.upgraded and b"\r\n\r\n" in _shared[:nbytes].tobytes():
            self.upgraded = True
            self.transport.write(SWITCHING)

    def connection_lost(self, exc: Exception | None) -> None:
        HeldConnection.held.discard(self)


class HeldAboveTls(asyncio.Protocol):
    """The same above central.tlsconn, which hands up a copy of what it decrypted."""

    __slots__ = ("transport", "upgraded")
    held: set[HeldAboveTls] = set()

    def __init__(self) -> None:
        self.transport: Any = None
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        HeldAboveTls.held.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded and b"\r\n\r\n" in data:
            self.upgraded = True
            self.transport.write(SWITCHING)

    def connection_lost(self, exc: Exception | None) -> None:
        HeldAboveTls.held.discard(self)


async def _serve(data_dir: Path, plain: bool, tls: str) -> None:
    from central.pki import CertificateAuthority
    from central.tlsconn import TlsListener

    context = None if plain else CertificateAuthority(data_dir).server_ssl_context(["127.0.0.1"])
    loop = asyncio.get_running_loop()
    if context is not None and tls == "central":  # as central/listener.py GuardedSite does
        listener = TlsListener(context, HeldAboveTls, handshake_timeout=10.0, shutdown_timeout=10.0)
        server = await loop.create_server(listener, "127.0.0.1", 0, backlog=4096)
    else:
        server = await loop.create_server(HeldConnection, "127.0.0.1", 0, ssl=context, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it


def _masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b"\x81" + bytes([0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked


async def _hold(port: int, count: int, data_dir: Path, plain: bool) -> None:
    context = None if plain else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if context is not None:
        context.load_verify_locations(cafile=str(data_dir / "node-ca.crt"))
        context.load_cert_chain(data_dir / "node.crt", data_dir / "node.key")
    frame = _masked_text_frame(b'{"type":"hello"' + b" " * (HELLO_BYTES - 16) + b"}")
    gate = asyncio.Semaphore(64)
    held = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                           local_addr=("127.0.0.2", 0))
            writer.write(UPGRADE)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(frame)
            await writer.drain()
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    print("connected", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in held:
        writer.close()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _run_loop(loop_name: str, main: object) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main)  # type: ignore[arg-type]
    else:
        import asyncio.sslproto

        from central.cli import SSL_READ_BUFFER

        asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER  # as the server sets it on asyncio
        asyncio.run(main)  # type: ignore[arg-type]


def measure(conns: int, loop_name: str, plain: bool, tls: str = "central") -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dvic-conn-floor-") as tmp:
        data_dir = Path(tmp)
        from central.pki import CertificateAuthority

        ca = CertificateAuthority(data_dir)
        node = ca.issue_node("00000000-0000-4000-8000-000000000001")
        (data_dir / "node.crt").write_text(node.cert_pem)
        (data_dir / "node.key").write_text(node.key_pem)
        (data_dir / "node-ca.crt").write_bytes(ca.cert_path.read_bytes())
        base = [sys.executable, "-m", "bench.conn_floor", "--loop", loop_name, "--data-dir", tmp, "--tls", tls,
                *(["--plain"] if plain else [])]
        server = subprocess.Popen([*base, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        client = None
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            time.sleep(1.0)  # let the server finish importing before the baseline
            before = _rss(server.pid)
            client = subprocess.Popen([*base, "--hold", str(port), "--conns", str(conns)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            assert client.stdout is not None
            if client.stdout.readline().strip() != "connected":
                raise SystemExit(f"the client did not connect its {conns} connections")
            time.sleep(2.0)  # the last handshakes' work settles
            after = _rss(server.pid)
        finally:
            for proc in (client, server):
                if proc is not None:
                    assert proc.stdin is not None
                    proc.stdin.close()
                    proc.wait(timeout=60)
    return {"before_mb": before / 1e6, "after_mb": after / 1e6, "per_conn_kb": (after - before) / conns / 1000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.conn_floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conns", type=int, default=5000, help="connections to hold (5000; one source address)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--tls", choices=("central", "loop"), default="central",
                   help="whose TLS: the server's own layer (central/tlsconn.py) or the event loop's")
    p.add_argument("--plain", action="store_true", help="plain TCP: no TLS in the process")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hold", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.conns <= 20000:
        p.error("--conns: between 1 and 20000")
    _raise_fd_limit()
    if args.serve:
        _run_loop(args.loop, _serve(args.data_dir, args.plain, args.tls))
        return 0
    if args.hold is not None:
        _run_loop(args.loop, _hold(args.hold, args.conns, args.data_dir, args.plain))
        return 0
    figures = measure(args.conns, args.loop, args.plain, args.tls)
    kind = "plain-TCP" if args.plain else "mutual-TLS"
    whose = "" if args.plain else (", TLS by central/tlsconn.py" if args.tls == "central" else ", the loop's TLS")
    print(f"stand-in server ({args.loop}{whose}), {args.conns} {kind} websockets held: RSS {figures['before_mb']:.1f}"
          f" -> {figures['after_mb']:.1f} MB, {figures['per_conn_kb']:.1f} KB per connection")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
