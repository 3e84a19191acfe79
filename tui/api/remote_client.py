"""Remote-control calls of the operator API: commands, shells, sessions, tunnels, actions, releases.

`RemoteClient` extends the shared `ApiClient` (same settings, TLS pinning and error handling) with
the remote-control endpoints of docs/protocol.md sections 4.3 and 4.4. Websocket upgrades that the
server refuses raise `ApiError` with a message that says why (see `explain_refusal`). As in
tui/api/client.py, aiohttp is imported by the calls that use it, not with the module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from dvic_core.constants import OPERATOR_HEARTBEAT_S, STATUS_CODES
from tui.api.client import (
    API,
    ApiClient,
    ApiError,
    Json,
    Unreachable,
    _list,
    _params,
    _seg,
    refused_upgrade,
)

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    import aiohttp


def command_body(targets: Json, argv: list[str] | None = None, shell: str | None = None,
                 timeout: float | None = None) -> Json:
    """The body of POST /commands (shared with the start-up-lean `dvic run`, tui/cmds/run.py)."""
    body: Json = dict(targets)
    if shell is not None:
        body["shell"] = shell
    else:
        body["argv"] = argv
    if timeout is not None:
        body["timeout"] = timeout
    return body


# Refusals about the caller's account, which `explain_refusal` details (role, approval, maintenance).
ACCOUNT_REFUSALS = frozenset({"forbidden", "pending_approval", "maintenance"})


class RemoteClient(ApiClient):
    """`ApiClient` plus the remote-control API. Use as `async with RemoteClient(settings) as api:`."""

    # -- commands -------------------------------------------------------------------------------
    async def run_command(self, targets: Json, argv: list[str] | None = None, shell: str | None = None,
                          timeout: float | None = None) -> Json:
        """Starts a command; `targets` is `{"nodes": [...]}`, `{"group": G}` or `{"all": True}`."""
        return await self.request("POST", "/commands", body=command_body(targets, argv, shell, timeout))

    async def commands(self, node: str | None = None, limit: int | None = None) -> list[Json]:
        return _list(await self.request("GET", "/commands", _params(node=node, limit=limit)), "commands")

    async def command(self, command_id: str) -> Json:
        return await self.request("GET", f"/commands/{_seg(command_id)}")

    async def cancel_command(self, command_id: str) -> Json:
        return await self.request("POST", f"/commands/{_seg(command_id)}/cancel")

    async def command_stream(self, command_id: str) -> AsyncIterator[Json]:
        """Yields the stream's JSON messages (`command`, `output`, `state`, `done`) until it closes.

        Raises `StreamCut` when the socket closes before `done` (the caller falls back to polling).
        """
        import aiohttp

        ws = await self.websocket(f"/commands/{_seg(command_id)}/stream", what="the command stream")
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        doc = json.loads(msg.data)
                    except ValueError:
                        continue  # a garbled frame must not end the command
                    if isinstance(doc, dict):
                        yield doc
                        if doc.get("type") == "done":
                            return
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            raise StreamCut(ws.close_code)
        finally:
            await ws.close()

    # -- shells and recordings ------------------------------------------------------------------
    async def shell(self, node: str, cols: int, rows: int) -> aiohttp.ClientWebSocketResponse:
        params = _params(cols=cols, rows=rows)
        try:
            return await self.websocket(f"/nodes/{_seg(node)}/shell", params=params, what="the shell",
                                        max_msg_size=1024 * 1024)
        except ApiError as exc:
            raise await self.explain_refusal(exc, node, "open a shell") from None

    async def sessions(self, node: str | None = None) -> list[Json]:
        return _list(await self.request("GET", "/sessions", _params(node=node)), "sessions")

    async def recording(self, session_id: str) -> str:
        """The asciicast v2 text of a recorded session."""
        return (await self.raw("GET", f"/sessions/{_seg(session_id)}/recording")).decode("utf-8", "replace")

    # -- tunnels --------------------------------------------------------------------------------
    async def tunnel(self, node: str, host: str, port: int) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self.websocket(f"/nodes/{_seg(node)}/tunnel", params=_params(host=host, port=port),
                                        what="the tunnel", max_msg_size=1024 * 1024)
        except ApiError as exc:
            raise await self.explain_refusal(exc, node, f"open a tunnel to {host}:{port}",
                                             " (the port is not among the server's --tunnel-port ports)") from None

    # -- actions, maintenance, updates ----------------------------------------------------------
    async def request_action(self, node: str, action: str, demo: str | None = None,
                             timeout: float | None = None) -> Json:
        body: Json = {"action": action}
        if demo:
            body["demo"] = demo
        if timeout is not None:
            body["timeout"] = timeout
        return await self.request("POST", f"/nodes/{_seg(node)}/actions", body=body)

    async def actions(self, node: str | None = None) -> list[Json]:
        return _list(await self.request("GET", "/actions", _params(node=node)), "actions")

    async def update(self, targets: Json) -> Json:
        return await self.request("POST", "/update", body=dict(targets))

    async def release(self) -> Json:
        return await self.request("GET", "/release")

    async def publish_release(self, data: bytes) -> Json:
        raw = await self.raw("POST", "/release", data=data, content_type="text/x-python")
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ApiError(200, "bad_response", "POST /release: the server's answer is not a JSON object")
        return doc

    # -- plumbing -------------------------------------------------------------------------------
    async def raw(self, method: str, path: str, data: bytes | None = None, content_type: str = "") -> bytes:
        """A request whose body (sent or received) is not JSON; errors decoded as in `request`."""
        headers = {"Content-Type": content_type} if content_type else None
        return (await self.exchange(method, path, data=data, headers=headers))[1]

    def ws_url(self, path: str) -> str:
        return self.base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + API + path

    async def websocket(self, path: str, params: dict[str, str] | None = None, what: str = "the websocket",
                        max_msg_size: int = 16 * 1024 * 1024) -> aiohttp.ClientWebSocketResponse:
        import aiohttp

        try:
            return await self.session.ws_connect(self.ws_url(path), params=params, heartbeat=OPERATOR_HEARTBEAT_S,
                                                 max_msg_size=max_msg_size)
        except aiohttp.WSServerHandshakeError as exc:
            raise refused_upgrade(exc, what) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unreachable(f"TLS verification of {self.base} failed against the pinned CA: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot open {what} at {self.base}: {exc or type(exc).__name__}") from exc

    async def explain_refusal(self, exc: ApiError, node: str, doing: str, otherwise: str = "") -> ApiError:
        """Turns a refused websocket upgrade into the reason an operator can act on.

        About the caller's account or the node's state, the API is asked for the details; about the
        request itself (a port not allowed, too many tunnels), the server's own code and message
        stand. Only read-only calls are made, so explaining never opens a session by accident.
        """
        status = exc.status
        try:
            if status == 401:
                return ApiError(401, "unauthorized", "the server does not know this token")
            if status == 404:
                await self.node(node)  # raises the server's own "no such node" error
                return ApiError(404, "not_found", f"cannot {doing}: not found")
            if status == 403 and exc.code in ACCOUNT_REFUSALS:
                me = await self.me()
                if me.get("status") != "active":
                    return ApiError(403, "pending_approval", f"your account {me.get('name')!r} is not active yet")
                if me.get("role") not in ("operator", "admin"):
                    return ApiError(403, "forbidden", f"your role is {me.get('role')!r}: only operators and "
                                                      f"admins may {doing}")
                detail = await self.node(node)
                if detail.get("state") == "maintenance" and me.get("role") != "admin":
                    return ApiError(403, "maintenance", f"node {detail.get('name')!r} is in maintenance: only "
                                                        f"admins may {doing} on it")
                return ApiError(403, "forbidden", f"the server does not allow you to {doing}{otherwise}")
            if status == 409:
                detail = await self.node(node)
                return ApiError(409, "node_offline", f"node {detail.get('name')!r} is {detail.get('state')}: "
                                                     f"cannot {doing}")
            if status == 429 and exc.code == "too_many":  # an older server, which did not say what
                return ApiError(429, "too_many", f"node {node!r} has too many sessions open: cannot {doing}")
        except ApiError as inner:
            return inner
        if exc.code != STATUS_CODES.get(status, "refused"):  # the server said why
            return ApiError(status, exc.code, f"cannot {doing}: {exc.message}")
        return exc


class StreamCut(Exception):
    """The command stream closed before `done` (server restart, network, or 4429 too slow)."""

    def __init__(self, close_code: int | None) -> None:
        super().__init__(f"the command stream closed (code {close_code})")
        self.close_code = close_code


