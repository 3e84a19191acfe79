"""`tui.api.tunnel.NodeTunnel`: TCP through the real server and an executor node, raw and under asyncssh."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncssh
import pytest

from tests.support.server import CentralServer
from tests.tui_remote.executor_node import ExecutorNode
from tui.api.config import Settings
from tui.api.tunnel import NodeTunnel, TunnelError


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            if data == b"bye\n":
                break  # the far side hangs up: the tunnel's reader sees EOF
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class _SSHServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this server only proves the bytes get through


async def _ssh_process(process: asyncssh.SSHServerProcess) -> None:
    process.stdout.write(f"ran {process.command} as {process.get_extra_info('username')}\n")
    process.exit(7)


def _free_ports(count: int) -> list[int]:
    """Ports free a moment ago, all different (each socket held until all are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@dataclass
class TunnelWorld:
    server: CentralServer
    echo_port: int
    ssh_port: int
    closed_port: int  # allowed, with nothing listening

    def settings(self, token: str | None = None) -> Settings:
        return Settings(server=self.server.url, token=token or self.server.admin_token, ca=str(self.server.ca_path))


@pytest.fixture(scope="module")
def tunnel_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelWorld]:
    """One server for the module, allowing tunnels to three ports chosen now."""
    echo_port, ssh_port, closed_port = _free_ports(3)
    ports = [arg for p in (echo_port, ssh_port, closed_port) for arg in ("--tunnel-port", str(p))]
    server = CentralServer(tmp_path_factory.mktemp("tunnels") / "central", extra_args=tuple(ports)).start()
    try:
        yield TunnelWorld(server, echo_port, ssh_port, closed_port)
    finally:
        server.stop()


@pytest.fixture
async def world(tunnel_server: TunnelWorld) -> AsyncIterator[TunnelWorld]:
    """The module's server, with an echo server and an SSH server listening on two of its ports."""
    echo = await asyncio.start_server(_echo, "127.0.0.1", tunnel_server.echo_port)
    ssh = await asyncssh.create_server(_SSHServer, "127.0.0.1", tunnel_server.ssh_port, process_factory=_ssh_process,
                                       server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")])
    try:
        yield tunnel_server
    finally:
        echo.close()
        ssh.close()
        with contextlib.suppress(Exception):
            await echo.wait_closed()


async def test_echo_through_the_node_both_ways_and_eof(world: TunnelWorld):
    async with ExecutorNode(world.server.enroll("pi-t")), NodeTunnel(world.settings(), "pi-t") as via:
        reader, writer = await via.open_connection("127.0.0.1", world.echo_port)
        assert writer.get_extra_info("peername") == ("127.0.0.1", world.echo_port)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"ping\n"
        # More than one frame (48 KiB) and more than the write buffer: chunking and flow control.
        big = bytes(range(256)) * 4096
        writer.write(big)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(big)), 20) == big
        writer.write(b"bye\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await writer.wait_closed()


async def test_asyncssh_connects_through_the_tunnel(world: TunnelWorld):
    async with ExecutorNode(world.server.enroll("pi-ssh")), NodeTunnel(world.settings(), "pi-ssh") as via:
        async with asyncssh.connect("127.0.0.1", world.ssh_port, tunnel=via, username="demo", known_hosts=None,
                                    client_keys=None, agent_path=None) as conn:
            result = await asyncio.wait_for(conn.run("uname -a"), 20)
        assert result.stdout == "ran uname -a as demo\n"
        assert result.exit_status == 7


async def test_refusals_say_why(world: TunnelWorld):
    server = world.server
    status, body = server.api("POST", "/api/v1/operators", {"name": "val", "role": "viewer"})
    assert status == 201
    server.enroll("pi-off")
    async with ExecutorNode(server.enroll("pi-no")):
        async with NodeTunnel(world.settings(), "pi-no") as via:
            with pytest.raises(TunnelError, match="could not connect to 127.0.0.1"):
                await via.open_connection("127.0.0.1", world.closed_port)
            # The server's own code and reason (from its X-Dvic-Error header), not aiohttp's
            # "Invalid response status" nor a guess.
            with pytest.raises(TunnelError) as refused:
                await via.open_connection("127.0.0.1", 23)
            assert "tunnels may reach ports" in str(refused.value) and "[port_not_allowed]" in str(refused.value)
            assert "Invalid response status" not in str(refused.value)
        async with NodeTunnel(world.settings(body["token"]), "pi-no") as via:
            with pytest.raises(TunnelError, match="only operators and admins"):
                await via.open_connection("127.0.0.1", world.echo_port)
        async with NodeTunnel(world.settings(), "pi-off") as via:
            with pytest.raises(TunnelError, match="'pi-off' is new"):
                await via.open_connection("127.0.0.1", world.echo_port)
        # A TunnelError is a ConnectionError, which is what asyncssh callers expect from a connect.
        async with NodeTunnel(world.settings(), "pi-off") as via:
            with pytest.raises(ConnectionError):
                await asyncssh.connect("127.0.0.1", world.ssh_port, tunnel=via, known_hosts=None)


async def test_closing_the_tunnel_object_aborts_open_connections(world: TunnelWorld):
    async with ExecutorNode(world.server.enroll("pi-x")) as node:
        via = NodeTunnel(world.settings(), "pi-x")
        reader, writer = await via.open_connection("127.0.0.1", world.echo_port)
        writer.write(b"x\n")
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"x\n"
        await via.close()
        assert writer.is_closing()
        # The node hears the close and drops its TCP connection.
        deadline = asyncio.get_running_loop().time() + 10
        while node.tunnels:
            assert asyncio.get_running_loop().time() < deadline, "the node kept the tunnel open"
            await asyncio.sleep(0.05)
