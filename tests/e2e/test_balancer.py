"""A node and an operator through HAProxy in TCP mode, TLS passed through (deploy/haproxy.cfg).

The real haproxy runs the shipped config (only its addresses changed, and a global section for a
foreground process) in front of a real server on 127.0.0.1; a real daemon enrolled through the
balancer connects through it (mutual TLS end to end), its demo's lines arrive, `dvic run` runs a
command on it and `dvic logs --follow` follows it, all through the balancer.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import DvicRunner, clean_env
from tests.support.daemon import DaemonProcess, wait_connected
from tests.support.postgres import PostgresUnavailable, _free_port, shared_cluster
from tests.support.procs import ManagedProcess
from tests.support.rawclient import Connection, tls_ask, tls_connect
from tests.support.replicas import Replicas
from tests.support.server import REPO, CentralServer
from tests.support.wait import async_wait_for, wait_for

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
SHIPPED = REPO / "deploy" / "haproxy.cfg"
LIB_DIR = REPO / "lib" / "python"
# HAProxy connects to the servers from this address, which they list in --proxy-protocol-from (the
# tests' own calls to a server, from 127.0.0.1, are then not a balancer's); clients connect to HAProxy
# from other loopback addresses, which the servers must see (deploy/haproxy.cfg's send-proxy-v2).
HAPROXY_SOURCE = "127.0.0.2"

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")


def config_for_test(shipped: str, bind: str, servers: list[str], check_every: str = "100ms") -> str:
    """The shipped config with this test's addresses: its `bind` address, one `server` line per
    server (connecting from HAPROXY_SOURCE, the address the servers list in --proxy-protocol-from),
    and no `global` section (that one runs a syslog-logging daemon as the haproxy user).
    Health checks come `check_every` instead of every 5 s: many of them during a test."""
    out = ["global", "    maxconn 1000", ""]
    in_global = False
    for line in shipped.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            in_global = line.split()[0] == "global"
        if in_global:
            continue
        line = re.sub(r"\binter \S+", f"inter {check_every}", line)
        if line.strip().startswith("bind "):
            line = re.sub(r"bind \S+", f"bind {bind}", line)
        elif line.strip().startswith("server "):
            continue
        out.append(line)
        if line.strip().startswith("default-server "):
            out += [f"    server replica{i} {address} source {HAPROXY_SOURCE}" for i, address in enumerate(servers, 1)]
    return "\n".join(out) + "\n"


class Balancer(ManagedProcess):
    """haproxy in the foreground (-db) with the shipped config pointed at `servers` (HOST:PORT)."""

    def __init__(self, home: Path, bind: str, servers: list[str]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.config = home / "haproxy.cfg"
        self.config.write_text(config_for_test(SHIPPED.read_text(), bind, servers))
        self.log_path = home / "haproxy.log"

    def start(self) -> Balancer:
        assert HAPROXY is not None
        checked = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.spawn([HAPROXY, "-db", "-f", str(self.config)])
        return self

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def answers(server: CentralServer) -> bool:
    """The server answers its health check (at `server.url`)."""
    try:
        return server.api("GET", "/api/v1/health")[0] == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


Balanced = tuple[CentralServer, CentralServer, Balancer]


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[Balanced]:
    """(the server, the same server as seen through haproxy (its `url` is the balancer's), haproxy)."""
    port = _free_port()
    public = f"https://127.0.0.1:{port}"
    # --public-url: the bundles of nodes enrolled through the balancer point at the balancer.
    with CentralServer(tmp_path / "central", extra_args=(
            "--public-url", public, "--proxy-protocol-from", HAPROXY_SOURCE, "--max-connections-per-address", "3",
            "--access-log", "all")) as server:
        backend = server.url.removeprefix("https://")
        with Balancer(tmp_path / "haproxy", f"127.0.0.1:{port}", [backend]) as balancer:
            via = copy.copy(server)
            via.url = public

            def up() -> bool:
                if not balancer.running():
                    raise AssertionError(f"haproxy exited:\n{balancer.log_tail()}")
                return answers(via)

            wait_for(up, 30, "the server to answer through haproxy", interval=0.1)
            yield server, via, balancer


def write_demo_line(log_dir: Path, name: str, text: str) -> None:
    """A demo printing `text`, run under the real dvic_log wrapper into the daemon's log dir."""
    env = dict(os.environ, PYTHONPATH=str(LIB_DIR), DVIC_LOG_DIR=str(log_dir))
    subprocess.run([sys.executable, "-m", "dvic_log", "run", "-q", "--name", name, "--",
                    sys.executable, "-c", f"print({text!r})"], env=env, check=True, timeout=60)


async def read_until(stream: asyncio.StreamReader, needle: bytes, timeout: float = 30.0) -> None:
    """Reads lines until one holds `needle`; fails after `timeout` s with what was read."""
    seen: list[bytes] = []

    async def scan() -> None:
        while needle not in (line := await stream.readline()):
            if not line:
                raise AssertionError(f"output ended before {needle!r}: {seen}")
            seen.append(line)

    try:
        await asyncio.wait_for(scan(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {needle!r} within {timeout:g} s: {seen}") from None


async def test_a_node_and_an_operator_work_through_the_balancer(balanced: Balanced, tmp_path: Path) -> None:
    server, via, balancer = balanced
    bundle = via.enroll("lb-node")
    assert bundle["server_url"] == via.url and bundle["ws_url"].startswith(via.url.replace("https", "wss"))
    log_dir = tmp_path / "logs"
    log_dir.mkdir(mode=0o755)
    daemon = DaemonProcess(via.write_bundle(bundle, tmp_path / "lb-node.json"), tmp_path / "state", log_dir)
    dvic = DvicRunner(via, clean_env(tmp_path))
    follow: asyncio.subprocess.Process | None = None
    try:
        daemon.start()
        wait_connected(via, bundle["node_id"], daemon)

        write_demo_line(log_dir, "lb-demo", "first line through the balancer")
        wait_for(lambda: any(line["msg"] == "first line through the balancer"
                             for line in via.logs(node=bundle["node_id"], source="demo")), 30,
                 "the demo's line to be stored", interval=0.2)

        # The operator's side through the balancer: the live stream (a websocket) and a command.
        follow = await dvic.start("logs", "lb-node", "--follow", "--source", "demo")
        assert follow.stdout is not None
        await read_until(follow.stdout, b"first line through the balancer")  # the history
        write_demo_line(log_dir, "lb-demo", "second line, followed live")
        await read_until(follow.stdout, b"second line, followed live")

        ran = await dvic("run", "lb-node", "--", "echo", "ran through the balancer")
        assert ran.code == 0 and "ran through the balancer" in ran.out, ran
        nodes = await dvic("nodes", "--json")
        assert nodes.code == 0 and '"lb-node"' in nodes.out, nodes

        # The node's connection runs through haproxy (not around it): without haproxy it is gone.
        balancer.stop()
        wait_for(lambda: not server.node(bundle["node_id"])["connected"], 30, "the node to be disconnected")
    finally:
        if follow is not None and follow.returncode is None:
            follow.terminate()
            await follow.wait()
        daemon.stop()
    # The balancer's TCP health checks (and the connections above) left no error in the server's log.
    assert not re.search(r"(?i)traceback|handshake|error", server.log()), server.log()[-3000:]


async def test_a_node_reconnects_through_the_balancer_when_its_server_comes_back(
        balanced: Balanced, tmp_path: Path) -> None:
    server, via, _ = balanced
    bundle = via.enroll("lb-again")
    log_dir = tmp_path / "logs"
    log_dir.mkdir(mode=0o755)
    daemon = DaemonProcess(via.write_bundle(bundle, tmp_path / "lb-again.json"), tmp_path / "state", log_dir)
    try:
        daemon.start()
        wait_connected(via, bundle["node_id"], daemon)
        server.stop()
        server.start()  # same port: haproxy's checks see it again
        await async_wait_for(lambda: answers(via), 60, "the server through haproxy again", interval=0.2)
        wait_connected(via, bundle["node_id"], daemon, timeout=60)
    finally:
        daemon.stop()


async def test_the_servers_see_each_clients_own_address_through_the_balancer(balanced: Balanced) -> None:
    """send-proxy-v2 in the shipped config: audit rows, the access log and the per-address limit
    see the client's address, not HAProxy's."""
    server, via, _ = balanced
    port = int(via.url.rsplit(":", 1)[1])
    status, _ = await tls_ask(port, server.ssl_context, "127.0.0.5", server.admin_token,
                              method="POST", path="/api/v1/nodes", body=b'{"name": ""}')
    assert status == 400
    entry = server.api("GET", "/api/v1/audit?limit=1")[1]["entries"][0]
    assert entry["action"] == "POST /api/v1/nodes" and entry["remote"] == "127.0.0.5", entry
    await async_wait_for(lambda: "access: 127.0.0.5 admin POST /api/v1/nodes 400" in server.log(), 10,
                         "the access log line with the client's address")

    held = [await tls_connect(port, server.ssl_context, "127.0.0.6") for _ in range(3)]
    try:
        assert (await tls_ask(port, server.ssl_context, "127.0.0.6", server.admin_token))[0] == 503
        assert (await tls_ask(port, server.ssl_context, "127.0.0.7", server.admin_token))[0] == 200
    finally:
        for _, writer in held:
            writer.close()
    assert "127.0.0.2" not in "".join(re.findall(r"access: .*", server.log())), "HAProxy's own address logged"


async def held_on(port: int, server: CentralServer, source: str) -> tuple[str, Connection]:
    """A kept-alive connection from `source` through the balancer: (the replica that answered its
    health check, the connection, still open and counted)."""
    reader, writer = await tls_connect(port, server.ssl_context, source)
    writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    return str(body["replica"]), (reader, writer)


async def test_an_address_holds_its_connections_per_address_over_all_replicas_behind_haproxy(
        tmp_path: Path) -> None:
    """Two replicas behind the shipped config (leastconn spreads one address's connections over
    both): the address gets --max-connections-per-address in all, not on each replica."""
    try:
        database = shared_cluster().fresh_database()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    port = _free_port()
    with Replicas(tmp_path / "data", database, count=2, extra_args=(
            "--public-url", f"https://127.0.0.1:{port}", "--proxy-protocol-from", HAPROXY_SOURCE,
            "--max-connections-per-address", "3")) as servers, \
            Balancer(tmp_path / "haproxy", f"127.0.0.1:{port}",
                     [s.url.removeprefix("https://") for s in servers]) as balancer:
        via = copy.copy(servers[0])
        via.url = f"https://127.0.0.1:{port}"
        wait_for(lambda: balancer.running() and answers(via), 30, "the replicas to answer through haproxy",
                 interval=0.1)
        held = [await held_on(port, via, "127.0.0.6") for _ in range(3)]
        try:
            assert {replica for replica, _ in held} == {"r1", "r2"}, held  # spread over both
            # Once each replica has heard of the other's, a fourth is refused, whichever takes it.
            async def refused() -> bool:
                return (await tls_ask(port, via.ssl_context, "127.0.0.6", via.admin_token))[0] == 503

            await async_wait_for(refused, 10, "a fourth connection from 127.0.0.6 to be refused", interval=0.2)
            for _ in range(4):
                assert (await tls_ask(port, via.ssl_context, "127.0.0.6", via.admin_token))[0] == 503
            assert (await tls_ask(port, via.ssl_context, "127.0.0.7", via.admin_token))[0] == 200
        finally:
            for _, (_, writer) in held:
                writer.close()


def test_up_points_this_machines_daemon_at_the_balancer(tmp_path: Path) -> None:
    """`dvic-central up --server-url BALANCER`: no server of its own; this machine enrolled through
    the balancer, its daemon dialing the balancer even though the server's own --public-url (none
    here) would name the server itself."""
    port = _free_port()
    balancer_url = f"https://127.0.0.1:{port}"
    with CentralServer(tmp_path / "central", extra_args=("--proxy-protocol-from", HAPROXY_SOURCE)) as server, \
            Balancer(tmp_path / "haproxy", f"127.0.0.1:{port}", [server.url.removeprefix("https://")]) as balancer:
        via = copy.copy(server)
        via.url = balancer_url
        wait_for(lambda: answers(via), 30, "the server to answer through haproxy", interval=0.1)
        up = ManagedProcess()
        up.log_path = tmp_path / "up.log"
        up.spawn([sys.executable, "-m", "central.cli", "--data-dir", str(server.data_dir), "up",
                  "--server-url", balancer_url, "--no-console"], cwd=REPO,
                 env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            bundle_path = server.data_dir / "local-node.json"
            wait_for(bundle_path.exists, 60, "this machine enrolled")
            bundle = json.loads(bundle_path.read_text())
            assert bundle["server_url"] == balancer_url and bundle["ws_url"] == \
                balancer_url.replace("https", "wss") + "/api/v1/node/ws", bundle
            wait_for(lambda: server.node(bundle["node_id"]).get("connected"), 60, "this machine's daemon connected")
            balancer.stop()  # its connection runs through haproxy: without haproxy it is gone
            wait_for(lambda: not server.node(bundle["node_id"])["connected"], 30, "the daemon to be cut off")
        finally:
            up.stop()
        assert "starting the central server" not in up.log_tail()
