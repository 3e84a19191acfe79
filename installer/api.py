"""The installer's side of the operator API, on the client library (tui/api): the calls the flow
needs (enroll, look up, revoke, wait until online, the role check) and `--via NODE` tunnels.

Errors are the client library's `ApiError` (status 0 with a code when there was no answer, or a
setting is unusable); steps.py turns them into InstallerErrors with a hint.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from dvic_core.constants import RANK
from tui.api import calls
from tui.api.aio import AsyncClient
from tui.api.config import Settings
from tui.api.core import ENROLL_TIMEOUT_S, Json, Request
from tui.api.errors import ApiError, ConfigError, Unreachable
from tui.api.tunnel import NodeTunnel, TunnelError

from .errors import InstallerError
from .models import ServerSpec
from .steps import central_error


def ca_sha256(ca_path: str) -> str:
    """Hex SHA-256 of the first certificate's DER bytes in a PEM file (the bundle's ``ca_sha256``)."""
    der = ssl.PEM_cert_to_DER_cert(open(ca_path, encoding="ascii").read())
    return hashlib.sha256(der).hexdigest()


class CentralClient:
    """What the flow needs from the server. Use as ``async with CentralClient(spec) as api: ...``.

    The URL and CA follow the clients' one TLS policy (tui/api/tls.py): https with the pinned CA,
    plain http only on loopback; anything else is refused here, before any connection."""

    def __init__(self, spec: ServerSpec) -> None:
        if not spec.url:
            raise ApiError(0, "no_server", "no central server URL (use --server or DVIC_SERVER)")
        if not spec.token:
            raise ApiError(0, "no_token", "no operator token (use --token or DVIC_TOKEN)")
        try:
            self.api = AsyncClient(Settings(spec.url, spec.token, spec.ca_path or None), timeout=ENROLL_TIMEOUT_S)
        except ConfigError as exc:
            raise ApiError(0, exc.code, str(exc)) from exc

    async def __aenter__(self) -> CentralClient:
        await self.api.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.api.close()

    async def _send(self, req: Request[Json], what: str) -> Json:
        """The answer; a refusal's message says what failed (``what``) and how the server put it."""
        try:
            return await self.api.send(req)
        except Unreachable:
            raise
        except ApiError as exc:
            said = f" ({exc.message})" if exc.message else ""
            raise ApiError(exc.status, exc.code, f"{what}: HTTP {exc.status}{said}") from exc

    async def require_role(self, role: str) -> str:
        """``GET /api/v1/me``: fail early unless the token's account is active with at least ``role``."""
        me = await self._send(calls.me(), "checking your operator token failed")
        if me.get("status") != "active":
            raise ApiError(403, "http_403", f"the account {me.get('name')!r} is {me.get('status')}, "
                                            "not active: an admin must approve it")
        if RANK.get(str(me.get("role")), 0) < RANK[role]:
            raise ApiError(403, "http_403", f"the account {me.get('name')!r} has the role "
                                            f"{me.get('role')!r}; this needs {role!r}")
        return f"{me.get('name')} ({me.get('role')})"

    async def enroll(self, name: str, kind: str, group: str) -> dict[str, Any]:
        """``POST /api/v1/nodes``: enroll a node and return its bundle (protocol.md section 1)."""
        bundle = await self._send(calls.enroll(name, kind, group), f"enrolling {name!r} failed")
        missing = [k for k in ("node_id", "name", "token") if not bundle.get(k)]
        if missing:
            raise ApiError(200, "bad_bundle", f"the server's bundle lacks {', '.join(missing)}")
        return bundle

    async def get_node(self, node: str) -> dict[str, Any] | None:
        """``GET /api/v1/nodes/{node}``: the node detail, or None when the server does not know it."""
        return await self._unless_missing(calls.node(node), f"looking up node {node!r} failed")

    async def revoke(self, node: str) -> bool:
        """``DELETE /api/v1/nodes/{node}``. Returns False when the node was not found."""
        return await self._unless_missing(calls.revoke_node(node), f"revoking node {node!r} failed") is not None

    async def _unless_missing(self, req: Request[Json], what: str) -> Json | None:
        try:
            return await self._send(req, what)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def wait_online(
        self, node_id: str, within: float, poll: float = 0.25, version: str = ""
    ) -> dict[str, Any]:
        """Poll the node until it is ``online`` (and, given ``version``, runs that daemon version).

        The version matters on an upgrade: the old daemon may still look online for a while.
        ApiError(code="timeout") after ``within`` seconds.
        """
        deadline = time.monotonic() + within
        last: dict[str, Any] | None = None
        while True:
            last = await self.get_node(node_id)
            if last is not None and last.get("state") == "online" and (
                    not version or last.get("daemon_version", version) == version):
                return last
            if time.monotonic() >= deadline:
                state = last.get("state") if last else "unknown to the server"
                if last and state == "online" and version:
                    state += f", but running daemon {last.get('daemon_version') or '?'}, not {version}"
                raise ApiError(0, "timeout", f"node not online after {within:.0f} s (state: {state})")
            await asyncio.sleep(poll)

    def via(self, node: str) -> ViaTunnel:
        """TCP connections from ``node``'s network (``--via NODE``), on this client's session."""
        return ViaTunnel(self.api, node)


async def connect_central(stack: AsyncExitStack, spec: ServerSpec, step: str) -> CentralClient:
    """A `CentralClient` open until `stack` closes; an unusable setting fails `step` with a hint."""
    try:
        return await stack.enter_async_context(CentralClient(spec))
    except ApiError as exc:
        raise central_error(step, exc) from exc


class ViaTunnel(NodeTunnel):
    """``--via NODE``: the client library's node tunnel, its failures said as the installer's steps say them."""

    async def create_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str,
                                port: int, **_ignored: Any) -> tuple[Any, asyncio.BaseProtocol]:
        try:
            return await super().create_connection(protocol_factory, host, port)
        except TunnelError as exc:
            raise via_error(exc, self.node, host, int(port)) from exc


def via_error(exc: TunnelError, node: str, host: str, port: int) -> InstallerError:
    """A tunnel that did not open, said for an operator (with what to do about it)."""
    where = f"{host}:{port} through node {node}"
    if exc.code == "timeout":
        return InstallerError("connect", "via_timeout", f"node {node} did not open {host}:{port} in time",
                              "check that the node can reach the target")
    if exc.code == "not_opened":
        if "does not support" in exc.reason:
            return InstallerError("connect", "via_unsupported", f"node {node}: {exc.reason}", "upgrade that node's "
                                  "daemon (run dvic add-node on it again), or use --jump/--direct")
        return InstallerError("connect", "unreachable", f"node {node} cannot reach {host}:{port}: {exc.reason}",
                              "check the address and port from that node; is sshd running on the target?")
    if exc.status == 0:  # the server itself could not be reached
        return central_error("connect", ApiError(0, exc.code, exc.reason))
    reason = f"{exc.code}: {exc.reason}"
    refused_hint = "tunnels need the operator role and a port the server allows (dvic-central --tunnel-port)"
    if exc.code == "port_not_allowed":
        refused_hint = (f"port {port} is not among the ports the server lets tunnels reach: an admin can add it "
                        f"(dvic-central serve --tunnel-port {port}), or use --jump/--direct")
    table = {
        404: ("via_unknown", f"the server knows no node {node!r}", "check the name with: dvic nodes"),
        409: ("via_offline", f"node {node} is not connected, so it cannot reach {host}:{port}",
              "pick an online node for --via, or bring that node back"),
        403: ("via_refused", f"the server refused a tunnel to {where}: {reason}", refused_hint),
        429: ("via_busy", f"node {node} has too many tunnels open", "wait a moment and run again"),
    }
    code, text, hint = table.get(exc.status, ("via_failed", f"the tunnel to {where} failed: {reason}", ""))
    return InstallerError("connect", code, text, hint)
