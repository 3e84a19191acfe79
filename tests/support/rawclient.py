"""HTTPS by hand from a chosen loopback address (127.0.0.0/8 is all this machine's), with optional
bytes before the TLS (a PROXY protocol header): what a client behind a balancer, or the balancer
itself, sends to a server (tests of central/proxyproto.py)."""

from __future__ import annotations

import asyncio
import json
import ssl

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def tls_connect(port: int, context: ssl.SSLContext, source: str, before: bytes = b"") -> Connection:
    """A TLS connection to 127.0.0.1:`port` from `source`, `before` sent ahead of the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if before:
        writer.write(before)
        await writer.drain()
    await writer.start_tls(context, server_hostname="127.0.0.1")
    return reader, writer


async def tls_ask(port: int, context: ssl.SSLContext, source: str, token: str, *, before: bytes = b"",
                  method: str = "GET", path: str = "/api/v1/health", body: bytes = b"",
                  extra_headers: bytes = b"") -> tuple[int, dict[str, object]]:
    """One request on a connection of its own: (status, JSON body); `extra_headers`: header lines
    (each ending in CRLF) added to the request's."""
    reader, writer = await tls_connect(port, context, source, before)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n".encode() + extra_headers + b"\r\n" + body)
        answer = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest or b"{}")
