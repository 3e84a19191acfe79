"""Logging in as root (no sudo): an in-process asyncssh server that runs each command with /bin/sh here.

OpenSSH would need a root password on this machine; asyncssh's server lets the test own the
login while the commands still run for real (as root, in a prefix).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncssh
import pytest

from installer import AddNodeRequest, add_node

from .conftest import PASSWORD, Central, daemon_pid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the install script as root")


class _RootServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == "root" and password == PASSWORD


class RootSshServer:
    def __init__(self) -> None:
        self.stdins: list[bytes] = []
        self.commands: list[str] = []
        self.port = 0
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self._server: asyncssh.SSHAcceptor | None = None

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        data = await process.stdin.read()
        self.stdins.append(data)
        self.commands.append(process.command or "")
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", process.command or "", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(data)
        process.stdout.write(out)
        process.stderr.write(err)
        process.exit(proc.returncode or 0)

    async def start(self) -> RootSshServer:
        self._server = await asyncssh.create_server(
            _RootServer, "127.0.0.1", 0, server_host_keys=[self.key], process_factory=self._handle, encoding=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def fingerprint(self) -> str:
        return self.key.get_fingerprint("sha256")


@pytest.fixture
async def root_sshd() -> AsyncIterator[RootSshServer]:
    server = await RootSshServer().start()
    yield server
    await server.stop()


async def test_root_login_installs_without_sudo(
    make_request: Callable[..., AddNodeRequest], central: Central, root_sshd: RootSshServer, prefix: Path
) -> None:
    result = await add_node(make_request(user="root", port=root_sshd.port, expect_host_key=root_sshd.fingerprint))
    assert central.node(result.node_id)["state"] == "online"
    assert daemon_pid(prefix) is not None
    assert not any("sudo -k" in c for c in root_sshd.commands)
    # As root the password is needed for the login only: it never goes down a command's stdin.
    assert all(PASSWORD.encode() not in data for data in root_sshd.stdins)
