"""Opening the SSH session to the target: directly, through a jump host, or (later) through a node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import asyncssh

from tui.api.tunnel import NodeTunnel

from .errors import InstallerError, NotAvailableError
from .hostkeys import KnownHosts, trusted_host_keys
from .models import ConfirmHostKey, Direct, Jump, Source, ViaNode
from .secret import Password


class Tunnel(Protocol):
    """What asyncssh accepts as ``tunnel=``: anything that opens a TCP stream to host:port.

    A jump host's ``SSHClientConnection`` is one; ``tunnel.NodeTunnel`` (``--via NODE``, through a
    node's daemon) is another.
    """

    async def create_connection(
        self, session_factory: Any, remote_host: str, remote_port: int
    ) -> tuple[Any, Any]: ...


ViaFactory = Callable[[ViaNode], NodeTunnel]


def open_via_node(source: ViaNode, via: ViaFactory | None) -> NodeTunnel:
    """The TCP tunnel through a fleet node, when the caller can open one (the central client can)."""
    if via is None:
        raise NotAvailableError(
            "connect",
            "not_available",
            f"--via {source.node} is not available here: it needs the central server's node tunnel",
            "connect with --direct (from this machine) or --jump user@host (through an SSH jump host)",
        )
    return via(source)


# A failure to connect: (what was raised, code, what happened, what to do); the first that matches
# says it. Placeholders: {where} the machine, {source} the one connecting, {reason}/{error} asyncssh's
# and the OS's words.
_FAILURES: tuple[tuple[type[BaseException], str, str, str], ...] = (
    (asyncssh.PermissionDenied, "auth_failed", "the {where} refused the user name or password",
     "check the user name and password"),
    (asyncssh.HostKeyNotVerifiable, "host_key_changed", "the {where} host key changed during the connection: {reason}",
     "run again; if it persists, check the machine's host key on its console"),
    (asyncssh.ChannelOpenError, "unreachable", "{source} cannot reach the {where}: {reason}",
     "check the address and port from the source machine; is sshd running on the target?"),
    (asyncio.TimeoutError, "timeout", "no SSH answer from the {where} in time",
     "check the address, the port and any firewall between the source and the target"),
    (ConnectionRefusedError, "unreachable", "connection refused by the {where}",
     "is sshd running there and listening on that port (--port)?"),
    (OSError, "unreachable", "cannot reach the {where}: {error}",
     "check the address and the network route from the source"),
    (asyncssh.Error, "ssh_error", "SSH error with the {where}: {reason}", ""),
)


def _describe(exc: BaseException, role: str, host: str, port: int, via: str) -> InstallerError:
    if role == "jump" and isinstance(exc, asyncssh.PermissionDenied):
        return InstallerError(
            "connect", "jump_auth_failed", f"the jump host {host}:{port} refused our SSH keys",
            "load the right key into ssh-agent or pass --jump-identity FILE",
        )
    where = f"{role} {host}:{port}" + (f" (through {via})" if via else "")
    for kind, code, message, hint in _FAILURES:
        if isinstance(exc, kind):
            text = message.format(where=where, source=via or "the source", reason=getattr(exc, "reason", ""),
                                  error=getattr(exc, "strerror", None) or exc)
            return InstallerError("connect", code, text, hint)
    raise exc


@asynccontextmanager
async def open_target(
    *,
    host: str,
    port: int,
    user: str,
    password: Password,
    source: Source,
    known_hosts: KnownHosts,
    expect_host_key: str,
    confirm: ConfirmHostKey | None,
    connect_timeout: float,
    via_factory: ViaFactory | None = None,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """An authenticated connection to the target, closed (with its jump connection) on exit."""
    async with AsyncExitStack() as stack:
        tunnel: Any = None
        via = ""
        if isinstance(source, ViaNode):
            tunnel = open_via_node(source, via_factory)
            stack.push_async_callback(tunnel.close)
            via = f"node {source.node}"
        elif isinstance(source, Jump):
            via = f"jump host {source.host}:{source.port}"
            tunnel = await _connect(
                known_hosts, "jump", source.host, source.port, source.expect_host_key, confirm, None, "",
                connect_timeout,
                username=source.user or (),
                client_keys=source.client_keys if source.client_keys is not None else (),
                preferred_auth=("publickey",),
            )
            stack.push_async_callback(_close, tunnel)
        elif not isinstance(source, Direct):
            raise TypeError(f"unknown source {source!r}")

        conn = await _connect(
            known_hosts, "target", host, port, expect_host_key, confirm, tunnel, via, connect_timeout,
            username=user,
            password=password.text(),
            client_keys=None,  # the target is reached with the password only
            agent_path=None,
            preferred_auth=("password", "keyboard-interactive"),
        )
        stack.push_async_callback(_close, conn)
        yield conn


async def _connect(
    known_hosts: KnownHosts, role: str, host: str, port: int, expected: str, confirm: ConfirmHostKey | None,
    tunnel: Any, via: str, connect_timeout: float, **auth: Any,
) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the jump host or the target, its host key checked first
    (installer/hostkeys.py); a failure as the InstallerError that says what to do."""
    try:
        keys = await trusted_host_keys(
            known_hosts, role=role, host=host, port=port,
            expected=expected, confirm=confirm, tunnel=tunnel, connect_timeout=connect_timeout,
        )
        return await asyncssh.connect(
            host, port,
            tunnel=tunnel if tunnel is not None else (),
            known_hosts=(keys, [], []),
            config=None,
            connect_timeout=connect_timeout,
            login_timeout=connect_timeout,
            **auth,
        )
    except InstallerError:
        raise
    except (TimeoutError, asyncssh.Error, OSError) as exc:
        raise _describe(exc, role, host, port, via) from exc


async def _close(conn: asyncssh.SSHClientConnection) -> None:
    conn.close()
    try:
        await asyncio.wait_for(conn.wait_closed(), 5)
    except (TimeoutError, OSError, asyncssh.Error):
        pass  # closing is best effort; the socket is gone either way
