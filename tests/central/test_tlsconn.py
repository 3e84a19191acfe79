"""The server's own TLS layer (central/tlsconn.py) against real sockets and real TLS clients.

Each test runs a listener on 127.0.0.1 port 0, on uvloop and on asyncio's loop, with a small upper
protocol that records what the layer told it; clients are blocking `ssl` sockets in threads
(OpenSSL on the other end, with ragged EOFs reported, so a missing close_notify shows)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from central.tlsconn import RECORD_BYTES, TlsConnection, TlsListener
from tests.support.pki import Pki, make_pki
from tests.support.wait import async_wait_for

LOOPS = ["uvloop", "asyncio"]
HANDSHAKE_S = 1.0
SHUTDOWN_S = 1.0


def run_on(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


class Upper(asyncio.Protocol):
    """The protocol above TLS: records every call, in order; `on_data` reacts to what arrives."""

    def __init__(self, on_data: Callable[[Upper, bytes], None] | None = None, keep_open: bool = False) -> None:
        self.on_data = on_data
        self.keep_open = keep_open
        self.transport: TlsConnection | None = None
        self.events: list[str] = []
        self.received = bytearray()
        self.lost_exc: BaseException | None = None
        self.paused = False
        self.written = 0
        self.state: dict[str, Any] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TlsConnection)
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert "eof" not in self.events and "lost" not in self.events
        self.received += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        if self.on_data is not None:
            self.on_data(self, b"")
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost_exc = exc

    def pause_writing(self) -> None:
        self.events.append("pause_writing")
        self.paused = True

    def resume_writing(self) -> None:
        self.events.append("resume_writing")
        self.paused = False
        if "on_resume" in self.state:
            self.state["on_resume"](self)


class Listening:
    """A TlsListener on 127.0.0.1 with the test's upper protocols (one per connection, in order)."""

    def __init__(self, pki: Pki, make: Callable[[], Upper]) -> None:
        self.pki = pki
        self.make = make
        self.uppers: list[Upper] = []
        self.context = server_context(pki)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    def _factory(self) -> Upper:
        upper = self.make()
        self.uppers.append(upper)
        return upper

    async def __aenter__(self) -> Listening:
        listener = TlsListener(self.context, self._factory, handshake_timeout=HANDSHAKE_S, shutdown_timeout=SHUTDOWN_S)
        self.server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def one(self) -> Upper:
        await async_wait_for(lambda: self.uppers, what="a connection past its handshake")
        return self.uppers[0]


def server_context(pki: Pki) -> ssl.SSLContext:
    """As the real server's (central/pki.py): TLS 1.2+, client certificates optional, checked against the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(cadata=pki.ca_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(pki: Pki, *, rogue: bool = False, cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pki.ca_pem)
    if cert:
        directory = pki.dir / ("rogue" if rogue else "node")
        directory.mkdir(exist_ok=True)
        (directory / "c.pem").write_text(pki.rogue_node_cert_pem if rogue else pki.node_cert_pem)
        (directory / "k.pem").write_text(pki.rogue_node_key_pem if rogue else pki.node_key_pem)
        ctx.load_cert_chain(directory / "c.pem", directory / "k.pem")
    return ctx


def connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS client; a missing close_notify raises (SSLEOFError) instead of reading as an end."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False)


def read_until_close_notify(sock: ssl.SSLSocket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(256 * 1024):
        data += chunk
    return bytes(data)  # recv gave b"": the server's close_notify (a bare TCP end raises)


def noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_never_finishes_its_handshake_is_dropped_after_the_timeout(pki: Pki, loop: str):
    async def main() -> None:
        async with Listening(pki, Upper) as listening:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
            writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never the rest
            assert await asyncio.wait_for(reader.read(), HANDSHAKE_S + 10) == b""
            elapsed = time.monotonic() - started
            assert HANDSHAKE_S * 0.8 <= elapsed < HANDSHAKE_S + 10, elapsed
            assert listening.uppers == []  # no protocol above TLS was ever made
            writer.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_certificate_from_another_ca_is_refused_quietly(pki: Pki, loop: str,
                                                                 caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="central.tlsconn")

    def rogue_then_good(port: int) -> tuple[str, bytes]:
        with pytest.raises(ssl.SSLError) as refused:  # TLS 1.3: the alert arrives on the first read
            with connect(port, client_context(pki, rogue=True)) as sock:
                sock.sendall(b"hello")
                sock.recv(10)
        with connect(port, client_context(pki)) as sock:
            sock.sendall(b"ping")
            return str(refused.value), sock.recv(10)

    async def main() -> None:
        def echo(upper: Upper, data: bytes) -> None:
            if data:
                upper.transport.write(data)  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(echo)) as listening:
            refused, echoed = await asyncio.to_thread(rogue_then_good, listening.port)
            assert "alert" in refused.lower() or "certificate" in refused.lower(), refused
            assert echoed == b"ping"
            assert len(listening.uppers) == 1  # only the good client got past TLS

    run_on(loop, main)
    handshake_lines = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert handshake_lines and all(r.levelno == logging.DEBUG and r.exc_info is None for r in handshake_lines)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_large_upload_and_a_large_download_arrive_intact(pki: Pki, loop: str):
    size = 16 * 1024 * 1024
    upload, download = noise(size, 1), noise(size, 2)

    def client(port: int) -> tuple[bytes, bytes]:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(upload)
            answer = read_until_close_notify(sock)
            sock.unwrap()
        return answer[:32], answer[32:]

    async def main() -> None:
        def hash_then_answer(upper: Upper, data: bytes) -> None:
            if len(upper.received) == size and data:
                # One write of 16 MiB: the layer encrypts it a record at a time.
                upper.transport.write(hashlib.sha256(upper.received).digest() + download)  # type: ignore[union-attr]
                upper.transport.close()  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(hash_then_answer)) as listening:
            digest, got = await asyncio.to_thread(client, listening.port)
            assert digest == hashlib.sha256(upload).digest()
            assert hashlib.sha256(got).digest() == hashlib.sha256(download).digest() and len(got) == size
            upper = await listening.one()
            await async_wait_for(lambda: "lost" in upper.events, what="connection_lost")
            assert upper.events.count("lost") == 1 and upper.lost_exc is None

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_never_reads_pauses_the_writer_and_memory_stays_bounded(pki: Pki, loop: str):
    chunk = 64 * 1024
    total = 64 * 1024 * 1024  # far more than the socket buffers hold
    go = threading.Event()

    def client(port: int) -> bytes:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(b"go")
            go.wait(60)  # not reading until told
            data = read_until_close_notify(sock)
            sock.unwrap()
        return data

    def write_while_not_paused(upper: Upper) -> None:
        while not upper.paused and upper.written < total:
            upper.transport.write(noise_chunk(upper.written))  # type: ignore[union-attr]
            upper.written += chunk
        if upper.written >= total:
            upper.transport.close()  # type: ignore[union-attr]

    def noise_chunk(offset: int) -> bytes:
        return (offset // chunk).to_bytes(8, "big") * (chunk // 8)

    async def main() -> None:
        def start(upper: Upper, data: bytes) -> None:
            if data == b"go":
                upper.state["on_resume"] = write_while_not_paused
                write_while_not_paused(upper)

        async with Listening(pki, lambda: Upper(start)) as listening:
            reading = asyncio.ensure_future(asyncio.to_thread(client, listening.port))
            upper = await listening.one()
            await async_wait_for(lambda: upper.paused, what="pause_writing")
            transport = upper.transport
            assert transport is not None
            low, high = transport.get_write_buffer_limits()
            # Stopped at the high-water mark, with the socket buffers full: nothing piles up in here.
            assert transport.get_write_buffer_size() <= high + chunk + RECORD_BYTES
            written_when_paused = upper.written
            assert written_when_paused < total / 4
            go.set()
            got = await asyncio.wait_for(reading, 120)
            assert len(got) == total
            assert got == b"".join(noise_chunk(offset) for offset in range(0, total, chunk))
            assert upper.events.count("pause_writing") == upper.events.count("resume_writing") >= 1
            await async_wait_for(lambda: "lost" in upper.events, what="connection_lost")

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_close_sends_close_notify_and_waits_for_the_clients_within_the_shutdown_timeout(pki: Pki, loop: str):
    def polite(port: int) -> bytes:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(b"bye?")
            data = read_until_close_notify(sock)
            sock.unwrap()  # our close_notify back
        return data

    def rude(port: int, done: threading.Event) -> bytes:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(b"bye?")
            data = read_until_close_notify(sock)
            done.wait(30)  # never answers the close_notify, keeps the socket open
        return data

    async def main() -> None:
        def bye(upper: Upper, data: bytes) -> None:
            if data:
                upper.transport.write(b"bye")  # type: ignore[union-attr]
                upper.transport.close()  # type: ignore[union-attr]
                assert upper.transport.is_closing()  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(bye)) as listening:
            assert await asyncio.to_thread(polite, listening.port) == b"bye"
            first = await listening.one()
            await async_wait_for(lambda: "lost" in first.events, what="connection_lost")
            assert first.events == ["made", "lost"] and first.lost_exc is None

            done = threading.Event()
            started = time.monotonic()
            rude_client = asyncio.ensure_future(asyncio.to_thread(rude, listening.port, done))
            await async_wait_for(lambda: len(listening.uppers) == 2, what="the second connection")
            second = listening.uppers[1]
            await async_wait_for(lambda: "lost" in second.events, timeout=SHUTDOWN_S + 10,
                                 what="the connection aborted after the shutdown timeout")
            assert time.monotonic() - started >= SHUTDOWN_S * 0.8
            assert second.events == ["made", "lost"]
            done.set()
            assert await rude_client == b"bye"

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_abort_ends_the_connection_at_once_without_close_notify(pki: Pki, loop: str):
    def client(port: int) -> str:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(b"abort")
            try:
                read_until_close_notify(sock)
            except (ssl.SSLEOFError, ConnectionResetError) as exc:
                return type(exc).__name__
            return "close_notify"

    async def main() -> None:
        def abort(upper: Upper, data: bytes) -> None:
            upper.transport.write(b"partial")  # type: ignore[union-attr]
            upper.transport.abort()  # type: ignore[union-attr]
            assert upper.transport.is_closing()  # type: ignore[union-attr]
            upper.transport.write(b"dropped")  # type: ignore[union-attr]
            upper.transport.close()  # nothing more happens  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(abort)) as listening:
            assert await asyncio.to_thread(client, listening.port) in ("SSLEOFError", "ConnectionResetError")
            upper = await listening.one()
            await async_wait_for(lambda: "lost" in upper.events, what="connection_lost")
            assert upper.events == ["made", "lost"]

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_half_close_hands_up_everything_then_one_eof_and_the_upper_side_may_still_answer(pki: Pki, loop: str):
    payload = noise(3 * 1024 * 1024, 3)

    def tcp_half_close(port: int) -> bytes:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(payload)
            # The TCP stream ends, without a close_notify (SSLSocket.shutdown would drop TLS too).
            with socket.socket(fileno=os.dup(sock.fileno())) as same:
                same.shutdown(socket.SHUT_WR)
            return read_until_close_notify(sock)

    def close_notify_first(port: int) -> None:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(payload)
            sock.unwrap()  # close_notify, then waits for the server's

    async def main() -> None:
        def answer_at_eof(upper: Upper, data: bytes) -> None:
            if not data:  # eof_received
                upper.transport.write(hashlib.sha256(upper.received).digest())  # type: ignore[union-attr]
                upper.transport.close()  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(answer_at_eof, keep_open=True)) as listening:
            assert await asyncio.to_thread(tcp_half_close, listening.port) == hashlib.sha256(payload).digest()
            upper = await listening.one()
            await async_wait_for(lambda: "lost" in upper.events, what="connection_lost")
            assert upper.events == ["made", "eof", "lost"] and bytes(upper.received) == payload

        # An upper protocol that does not keep its side open (aiohttp's): the layer closes, politely.
        async with Listening(pki, Upper) as listening:
            await asyncio.to_thread(close_notify_first, listening.port)
            upper = await listening.one()
            await async_wait_for(lambda: "lost" in upper.events, what="connection_lost")
            assert upper.events == ["made", "eof", "lost"] and bytes(upper.received) == payload

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_paused_reading_stops_handing_up_until_resumed(pki: Pki, loop: str):
    payload = noise(8 * 1024 * 1024, 4)
    sent = [0]

    def client(port: int) -> bytes:
        with connect(port, client_context(pki)) as sock:
            for offset in range(0, len(payload), 64 * 1024):
                sock.sendall(payload[offset:offset + 64 * 1024])
                sent[0] = offset + 64 * 1024
            return sock.recv(64)

    async def main() -> None:
        def pause_at_first(upper: Upper, data: bytes) -> None:
            if "paused" not in upper.state:
                upper.state["paused"] = len(upper.received)
                upper.transport.pause_reading()  # type: ignore[union-attr]
                assert not upper.transport.is_reading()  # type: ignore[union-attr]
            elif len(upper.received) == len(payload):
                upper.transport.write(hashlib.sha256(upper.received).digest())  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(pause_at_first)) as listening:
            answer = asyncio.ensure_future(asyncio.to_thread(client, listening.port))
            upper = await listening.one()
            await async_wait_for(lambda: "paused" in upper.state, what="the first read")
            await async_wait_for(lambda: sent[0] >= 1024 * 1024, what="the client to send 1 MiB")
            assert len(upper.received) == upper.state["paused"]  # nothing handed up while paused
            upper.transport.resume_reading()  # type: ignore[union-attr]
            assert await asyncio.wait_for(answer, 60) == hashlib.sha256(payload).digest()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_extra_info_is_what_aiohttp_and_the_server_ask_for(pki: Pki, loop: str):
    names: list[Any] = []
    checked = threading.Event()

    def client(port: int) -> None:
        with connect(port, client_context(pki)) as sock:
            sock.sendall(b"x")
            assert sock.recv(1) == b"y"
            names.extend((sock.getsockname(), sock.getpeername()))
            checked.wait(30)  # open while the server side looks

    async def main() -> None:
        def reply(upper: Upper, data: bytes) -> None:
            if data:
                upper.transport.write(b"y")  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(reply)) as listening:
            connected = asyncio.ensure_future(asyncio.to_thread(client, listening.port))
            await async_wait_for(lambda: names, what="the client's answer")
            client_name, server_name = names
            transport = (await listening.one()).transport
            assert transport is not None
            info = transport.get_extra_info
            assert info("peername")[:2] == client_name[:2] and info("sockname")[:2] == server_name[:2]
            assert info("socket").family == socket.AF_INET
            assert info("sslcontext") is listening.context
            assert isinstance(info("ssl_object"), ssl.SSLObject)
            peercert = info("peercert")
            assert dict(x[0] for x in peercert["subject"])["commonName"] == "6b0f7c52-0000-4000-8000-000000000001"
            assert info("peercert") == peercert and info("peercert") is not peercert  # made on demand, not kept
            assert info("cipher")[1] in ("TLSv1.3", "TLSv1.2") and info("compression") is None
            assert info("nothing such", "default") == "default"
            assert transport.get_protocol() is listening.uppers[0]
            checked.set()
            await connected

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reset_from_the_client_ends_the_connection_once(pki: Pki, loop: str):
    def client(port: int) -> None:
        sock = connect(port, client_context(pki))
        sock.sendall(b"x" * 100_000)
        assert sock.recv(1) == b"y"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # linger 0: an RST, no close_notify, no FIN

    async def main() -> None:
        def reply(upper: Upper, data: bytes) -> None:
            if len(upper.received) == 100_000:
                upper.transport.write(b"y" + b"z" * 1_000_000)  # type: ignore[union-attr]

        async with Listening(pki, lambda: Upper(reply)) as listening:
            await asyncio.to_thread(client, listening.port)
            upper = await listening.one()
            await async_wait_for(lambda: "lost" in upper.events, what="connection_lost")
            assert upper.events.count("lost") == 1 and "eof" not in upper.events
            assert upper.transport is not None and upper.transport.is_closing()
            upper.transport.write(b"after the end")  # dropped, no error
            upper.transport.close()
            assert upper.events.count("lost") == 1

    run_on(loop, main)
