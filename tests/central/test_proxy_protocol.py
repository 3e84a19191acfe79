"""PROXY protocol v2 from the balancers' addresses only (`serve --proxy-protocol-from`,
central/proxyproto.py): a real server, clients on other loopback addresses (127.0.0.0/8 is all this
machine's) sending real headers before real TLS. HAProxy itself: tests/e2e/test_balancer.py."""

from __future__ import annotations

import asyncio
import re
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.proxyproto import (
    SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    build_header,
    header_length,
    parse_header,
    parse_sources,
)
from tests.support.rawclient import Connection, tls_ask, tls_connect
from tests.support.server import REPO, CentralServer
from tests.support.wait import async_wait_for

BALANCER = "127.0.0.3"  # the listed address (the test connects from it as a balancer would; server.api: 127.0.0.1)
CLIENT = "127.0.0.5"  # an address nobody listed


# -- the header, as a plain function -------------------------------------------------------------

def test_a_header_names_the_client_ipv4_and_ipv6() -> None:
    v4 = build_header(("10.1.2.3", 40000), ("10.0.0.11", 8443))
    assert header_length(v4[:16]) == len(v4) == 28
    assert parse_header(v4) == ProxyHeader(("10.1.2.3", 40000))
    v6 = build_header(("2001:db8::7", 5), ("2001:db8::1", 8443))
    assert parse_header(v6) == ProxyHeader(("2001:db8::7", 5))


def test_local_and_unspecified_headers_keep_the_connections_address() -> None:
    local = SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    assert parse_header(local) == ProxyHeader(None)
    unix = SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 216) + bytes(216)
    assert parse_header(unix) == ProxyHeader(None)


@pytest.mark.parametrize(("data", "says"), [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(5), "does not start with a PROXY protocol v2 header"),
    (b"PROXY TCP4 10.1.2.3 10.0.0.1 5 6\r\n", "does not start with a PROXY protocol v2 header"),
    (SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12), "PROXY protocol version 1"),
    (SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000), "at most 2048"),
])
def test_what_is_not_a_header_is_named(data: bytes, says: str) -> None:
    with pytest.raises(ProxyHeaderError, match=re.escape(says)):
        header_length(data[:16])


@pytest.mark.parametrize(("header", "says"), [
    (SIGNATURE + bytes([0x22, 0x11]) + struct.pack("!H", 12) + bytes(12), "unknown PROXY command 2"),
    (SIGNATURE + bytes([0x21, 0x12]) + struct.pack("!H", 12) + bytes(12), "datagram"),
    (SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", 12) + bytes(12), "too short for its addresses"),
])
def test_bad_headers_are_named(header: bytes, says: str) -> None:
    with pytest.raises(ProxyHeaderError, match=says):
        parse_header(header)


def test_the_option_takes_addresses_and_networks() -> None:
    assert parse_sources("10.0.0.2, 10.0.1.0/24,::1") == ("10.0.0.2/32", "10.0.1.0/24", "::1/128")
    with pytest.raises(ValueError, match="got 'haproxy.lab'"):
        parse_sources("10.0.0.2,haproxy.lab")


# -- a real server ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    home: Path = tmp_path_factory.mktemp("proxyproto")
    with CentralServer(home / "central", extra_args=(
            "--proxy-protocol-from", f"{BALANCER},192.0.2.0/24", "--header-timeout", "2",
            "--max-connections-per-address", "2", "--access-log", "all")) as running:
        yield running


def port_of(server: CentralServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def connect(server: CentralServer, source: str, header: bytes = b"") -> Connection:
    return await tls_connect(port_of(server), server.ssl_context, source, header)


async def ask(server: CentralServer, source: str, header: bytes = b"", method: str = "GET",
              path: str = "/api/v1/health", body: bytes = b"") -> tuple[int, dict[str, object]]:
    return await tls_ask(port_of(server), server.ssl_context, source, server.admin_token, before=header,
                         method=method, path=path, body=body)


def claiming(address: str, server: CentralServer) -> bytes:
    return build_header((address, 40000), ("127.0.0.1", port_of(server)))


async def test_a_balancers_client_is_seen_at_its_own_address(server: CentralServer) -> None:
    status, _ = await ask(server, BALANCER, claiming("10.1.2.3", server), "POST", "/api/v1/nodes", b'{"name": ""}')
    assert status == 400
    entries = server.api("GET", "/api/v1/audit?limit=5")[1]["entries"]
    assert entries[0]["action"].startswith("POST") and entries[0]["remote"] == "10.1.2.3", entries[0]
    await async_wait_for(lambda: re.search(r"access: 10\.1\.2\.3 admin POST /api/v1/nodes 400", server.log()),
                         10, "the access log line with the client's address")


async def test_per_address_limits_count_the_balancers_clients_apart(server: CentralServer) -> None:
    held = [await connect(server, BALANCER, claiming("10.7.7.7", server)) for _ in range(2)]
    try:
        assert (await ask(server, BALANCER, claiming("10.7.7.7", server)))[0] == 503  # its third
        assert (await ask(server, BALANCER, claiming("10.7.7.8", server)))[0] == 200  # another client
    finally:
        for _, writer in held:
            writer.close()


async def test_a_listed_address_without_a_header_is_closed_and_why_is_logged(server: CentralServer) -> None:
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await ask(server, BALANCER)
    await async_wait_for(lambda: "connection from 127.0.0.3 closed: the connection does not start with a PROXY"
                         " protocol v2 header" in server.log(), 10, "the refusal in the log")


async def test_a_header_sent_byte_by_byte_is_cut_at_the_deadline(server: CentralServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server), local_addr=(BALANCER, 0))
    started = time.monotonic()
    header = claiming("10.1.2.3", server)
    try:
        with pytest.raises(ConnectionError):
            for byte in header:  # 28 bytes, one every 0.25 s: 7 s if it were let through
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.25)
                if reader.at_eof():
                    raise ConnectionResetError("closed by the server")
    finally:
        writer.close()
    assert time.monotonic() - started < 5
    await async_wait_for(lambda: "no whole PROXY header within 2 s" in server.log(), 10, "the timeout in the log")


async def test_a_balancers_health_check_is_not_logged(server: CentralServer) -> None:
    for _ in range(3):  # connect and close (a TCP check), and a LOCAL header then close (HAProxy's)
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(server), local_addr=(BALANCER, 0))
        writer.close()
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(server), local_addr=(BALANCER, 0))
        writer.write(SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00]))
        await writer.drain()
        writer.close()
    assert (await ask(server, BALANCER, claiming("10.1.2.9", server)))[0] == 200
    assert "ended inside" not in server.log() and "Traceback" not in server.log()


async def test_other_addresses_are_served_as_before_and_cannot_claim_one(server: CentralServer) -> None:
    assert (await ask(server, CLIENT))[0] == 200
    await async_wait_for(lambda: "access: 127.0.0.5 - GET /api/v1/health 200" in server.log(), 10,
                         "the access log line")
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await ask(server, CLIENT, claiming("10.66.66.66", server), "POST", "/api/v1/nodes", b'{"name": ""}')
    assert "10.66.66.66" not in server.log()
    assert all(e["remote"] != "10.66.66.66" for e in server.api("GET", "/api/v1/audit?limit=20")[1]["entries"])


@pytest.mark.parametrize(("args", "says"), [
    (["serve", "--proxy-protocol-from", "10.0.0.2,haproxy.lab"],
     "expected addresses or networks such as 10.0.0.2 or 10.0.0.0/24, separated by commas; got 'haproxy.lab'"),
    (["up", "--server-url", "monitor.lab:8443"], "expected the server's base URL such as https://monitor.lab:8443"),
])
def test_bad_option_values_are_named(tmp_path: Path, args: list[str], says: str) -> None:
    result = subprocess.run([sys.executable, "-m", "central.cli", "--data-dir", str(tmp_path / "d"), *args],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and says in result.stderr, result.stderr
