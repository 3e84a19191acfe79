"""Connections that never send a whole request are dropped, and connection counts are bounded, so
idle sockets cannot lock nodes and operators out (security review M2). Real server subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.config import ConnectionLimits
from central.listener import FD_RESERVE, address_key, fd_budget, refusal
from tests.support.fake_node import client_ssl
from tests.support.server import CentralServer
from tests.support.wait import wait_for

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _port(server: CentralServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def _open(server: CentralServer, *, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                plain: bool = False) -> Stream:
    """A connection that has finished TLS (or only TCP, with `plain`) and sent nothing."""
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", _port(server), ssl=None if plain else (tls or server.ssl_context),
        local_addr=(source, 0)), 10)


async def _closed_by_server(stream: Stream) -> bytes:
    """Everything the server sent before it closed (or reset) the connection."""
    reader, _ = stream
    data = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def _slowloris(server: CentralServer, gone: asyncio.Event) -> None:
    """Sends a request head one header line every 0.2 s and never ends it."""
    reader, writer = await _open(server)
    writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
    try:
        for i in range(10_000):
            writer.write(b"X-Slow-%d: y\r\n" % i)
            await writer.drain()
            if reader.at_eof():
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.2)
    except (ConnectionError, ssl.SSLError):
        pass
    gone.set()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_half_open_and_slow_connections_are_dropped_and_a_websocket_is_not(tmp_path, monkeypatch, loop):
    monkeypatch.setenv("DVIC_EVENT_LOOP", loop)
    server = CentralServer(tmp_path / "central", extra_args=("--header-timeout", "1.5",
                                                             "--idle-timeout", "4")).start()
    try:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(server.url + "/api/v1/stream", headers=headers, ssl=server.ssl_context)
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "hello"
            # One request on a kept-alive connection, which then idles: only the idle timeout applies.
            kept = await _open(server)
            kept[1].write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(kept[0].readuntil(b"\r\n"), 10)).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            idle = [await _open(server) for _ in range(5)]  # TLS done, then nothing
            raw = [await _open(server, plain=True) for _ in range(2)]  # not even a TLS handshake
            slow_gone = [asyncio.Event() for _ in range(3)]
            slow = [asyncio.create_task(_slowloris(server, gone)) for gone in slow_gone]
            for stream in idle + raw:
                assert await asyncio.wait_for(_closed_by_server(stream), 15) == b""
            for gone in slow_gone:
                await asyncio.wait_for(gone.wait(), 15)
            await asyncio.gather(*slow)
            # All dropped within the head timeout (plus the loop's timer slack), not an hour later.
            assert time.monotonic() - started < 10
            assert not kept[0].at_eof()  # the kept-alive connection outlived them ...
            await asyncio.wait_for(_closed_by_server(kept), 15)  # ... and then timed out idle
            # The websocket, open well past the head timeout, still works.
            await ws.send_str(json.dumps({"type": "subscribe", "logs": ["*"]}))
            while json.loads((await ws.receive(timeout=10)).data)["type"] != "subscribed":
                pass
            await ws.close()
        assert server.api("GET", "/api/v1/health", token="")[0] == 200
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def _node_from(bundle: dict[str, Any], source: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A node's websocket (with its client certificate) from a chosen source address."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.ws_connect(
            bundle["ws_url"], ssl=client_ssl(bundle), autoping=True) as ws:
        await ws.send_str(json.dumps({"type": "hello", "protocol": 1, "daemon_version": "test-0",
                                      "facts": {"hostname": bundle["name"]}}))
        welcome = json.loads((await ws.receive(timeout=10)).data)
        assert welcome["type"] == "welcome", welcome
        yield ws


def _refused(answer: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    return json.loads(body)["error"]


async def test_one_address_cannot_take_every_connection_and_nodes_behind_it_still_get_in(tmp_path):
    server = CentralServer(tmp_path / "central", extra_args=(
        "--max-connections-per-address", "4", "--header-timeout", "60")).start()
    try:
        bundle = server.enroll("pi-behind-nat")
        # Many idle connections, from several addresses, up to each one's limit.
        held = [await _open(server, source=f"127.0.0.{host}") for host in range(2, 7) for _ in range(4)]
        # One more from a full address is answered 503 and closed.
        error = _refused(await asyncio.wait_for(_closed_by_server(await _open(server, source="127.0.0.2")), 10))
        assert error["code"] == "too_many_connections" and "per-address" in error["message"]
        # A node behind that same address (a lab's NAT) is not counted there, and connects.
        async with _node_from(bundle, "127.0.0.2"):
            wait_for(lambda: server.node("pi-behind-nat")["state"] == "online", what="the node online")
        # An operator from another address is served while all of those are held.
        status, body = server.api("GET", "/api/v1/nodes")
        assert status == 200 and [n["name"] for n in body["nodes"]] == ["pi-behind-nat"]
        # Once one closes, its address may open another.
        held.pop()[1].close()

        async def served_again() -> bool:
            stream = await _open(server, source="127.0.0.6")
            stream[1].write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return (await asyncio.wait_for(_closed_by_server(stream), 10)).startswith(b"HTTP/1.1 200")

        deadline = time.monotonic() + 10
        while not await served_again():
            assert time.monotonic() < deadline, "127.0.0.6 never got a connection back"
        for _, writer in held:
            writer.close()
    finally:
        server.stop()
    assert "refusing connections" in server.log()


async def test_the_total_limit_keeps_room_for_nodes(tmp_path):
    server = CentralServer(tmp_path / "central", extra_args=(
        "--max-connections", "10", "--header-timeout", "60")).start()
    try:
        bundle = server.enroll("pi-1")
        # Nine anonymous connections, from nine addresses: the tenth place is the nodes' alone.
        held = [await _open(server, source=f"127.0.1.{host}") for host in range(1, 10)]
        error = _refused(await asyncio.wait_for(_closed_by_server(await _open(server, source="127.0.2.1")), 10))
        assert "kept for nodes" in error["message"]
        async with _node_from(bundle, "127.0.2.2"):  # welcomed: it got in
            # Now every place is taken: even a node would be refused.
            node_tls = client_ssl(bundle)
            error = _refused(await asyncio.wait_for(
                _closed_by_server(await _open(server, source="127.0.2.3", tls=node_tls)), 10))
            assert "--max-connections" in error["message"]
        for _, writer in held:
            writer.close()
        assert wait_for(lambda: server.api("GET", "/api/v1/health", token="")[0] == 200, what="room again")
    finally:
        server.stop()


@contextlib.contextmanager
def _soft_fd_limit(soft: int) -> Iterator[None]:
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def _open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def test_the_server_raises_its_open_file_limit_to_what_its_connections_need(tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2000 + FD_RESERVE:
        pytest.skip(f"the hard open-file limit ({hard}) is below what this test asks for")
    server = CentralServer(tmp_path / "central", extra_args=("--max-connections", "2000"))
    # The server inherits a soft limit of 256 (a systemd default is 1,024) and raises it itself.
    with _soft_fd_limit(256):
        server.start()
    try:
        assert server.proc is not None
        assert _open_files_limit(server.proc.pid) == 2000 + FD_RESERVE
    finally:
        server.stop()


def test_refusal_rules():
    limits = ConnectionLimits(max_connections=100, max_per_address=5)
    assert refusal(limits, 0, 0, node=False) is None
    assert "per-address" in (refusal(limits, 10, 5, node=False) or "")
    assert refusal(limits, 10, 5, node=True) is None  # nodes are not counted per address
    assert "kept for nodes" in (refusal(limits, 90, 0, node=False) or "")
    assert refusal(limits, 99, 50, node=True) is None
    assert "--max-connections" in (refusal(limits, 100, 0, node=True) or "")
    # With replicas: the address's connections on the others count too, and the refusal says so.
    assert refusal(limits, 10, 1, node=False, elsewhere=3) is None
    assert (refusal(limits, 10, 2, node=False, elsewhere=3) or "").endswith(": 3 of them on other replicas")
    assert refusal(limits, 10, 0, node=True, elsewhere=9) is None
    assert "other replicas" not in (refusal(limits, 90, 0, node=False, elsewhere=1) or "")


def test_connections_are_counted_per_ipv4_address_and_per_ipv6_64():
    assert address_key(("192.0.2.7", 443)) == "192.0.2.7"
    assert address_key(("2001:db8:1:2:aaaa::1", 443, 0, 0)) == address_key(("2001:db8:1:2::9", 1, 0, 0))
    assert address_key(("2001:db8:1:3::1", 443, 0, 0)) != address_key(("2001:db8:1:2::1", 443, 0, 0))
    assert address_key(("::ffff:192.0.2.7", 443, 0, 0)) == "192.0.2.7"
    assert address_key(None) == "local"


def test_the_connection_limit_fits_the_open_file_limit():
    limits = ConnectionLimits(max_connections=10_000)
    assert fd_budget(limits, 1024, 524_288) == (10_000 + FD_RESERVE, limits)  # raised to what it needs
    assert fd_budget(limits, 20_000, 20_000) == (20_000, limits)  # already enough: left alone
    soft, fitted = fd_budget(limits, 1024, 4096)  # a low hard limit: fewer connections, and a warning
    assert soft == 4096 and fitted.max_connections == 4096 - FD_RESERVE
    soft, fitted = fd_budget(limits, 256, 256)
    assert fitted.max_connections == 256 - 64  # a quarter kept for files on a tiny limit
    assert fd_budget(limits, 1024, resource.RLIM_INFINITY)[0] == 10_000 + FD_RESERVE


async def test_malformed_request_heads_get_a_400_and_one_log_line_not_a_traceback_each(tmp_path: Path):
    # aiohttp logged each one at ERROR with a 12-line traceback: anyone who reached the port could
    # fill the server log with them.
    server = CentralServer(tmp_path / "central").start()
    try:
        for _ in range(3):
            stream = await _open(server)
            stream[1].write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n")
            assert (await _closed_by_server(stream)).split(b" ", 2)[1] == b"400"
        wait_for(lambda: "malformed request" in server.log(), what="the malformed request in the server log")
        log = server.log()
        assert "Traceback" not in log and log.count("malformed request") == 1, log
        assert "Duplicate 'Content-Type' header" in log
        status, _ = server.api("GET", "/api/v1/health")
        assert status == 200
    finally:
        server.stop()
