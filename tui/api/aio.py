"""The asyncio transport of the operator API client, on aiohttp: the console, the async `dvic`
commands, the installer and the node tunnel use it.

    async with AsyncClient(settings) as api:
        nodes = await api.send(calls.nodes(group="lab"))

What to send and how to read the answer is tui/api/core.py's (and tui/api/calls.py's); this module
moves the bytes, keeps one HTTP session, and opens websockets with the one client heartbeat.
aiohttp is imported when a client opens, not with this module.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, ParamSpec, Self, TypeVar

from tui.api import calls, refusals, tls
from tui.api.config import Settings
from tui.api.core import (
    API,
    CONNECT_S,
    ERROR_HEADER,
    HEARTBEAT_S,
    TIMEOUT_S,
    Json,
    Request,
    Upgrade,
    base_headers,
    decode,
    decode_frame,
    payload,
    refused,
    ws_url,
)
from tui.api.errors import ApiError, StreamClosed, Unreachable

if TYPE_CHECKING:
    import aiohttp

P = ParamSpec("P")
R = TypeVar("R")
UPLOAD_STALL_S = 120.0  # an upload that makes no progress this long is given up


class Endpoint(Generic[P, R]):
    """A method of `AsyncClient` that sends what a tui/api/calls.py function builds, with its signature."""

    def __init__(self, build: Callable[P, Request[R]]) -> None:
        self.build = build

    def __get__(self, api: AsyncClient | None, owner: type | None = None) -> Callable[P, Awaitable[R]]:
        build = self.build

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if api is None:
                raise TypeError(f"{build.__name__} is a method of an AsyncClient")
            return await api.send(build(*args, **kwargs))

        return call


class AsyncClient:
    """One session to one server. Use as `async with AsyncClient(settings) as api: ...`.

    The settings must pass the TLS policy (tui/api/tls.py): a ConfigError says why not."""

    def __init__(self, settings: Settings, timeout: float = TIMEOUT_S) -> None:
        self.settings = settings
        self.base = settings.server.rstrip("/")
        self._tls = tls.context(settings.server, settings.ca, settings.ca_pem)
        self._timeout_s = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(ssl=self._tls or True)  # True: plain http, nothing to verify
            timeout = aiohttp.ClientTimeout(total=self._timeout_s, connect=min(self._timeout_s, CONNECT_S))
            self._session = aiohttp.ClientSession(connector=connector, headers=base_headers(self.settings.token),
                                                  timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AsyncClient used outside `async with`")
        return self._session

    # -- requests -------------------------------------------------------------------------------
    async def send(self, req: Request[R]) -> R:
        """The decoded answer; `ApiError` with the server's code and message for a refusal,
        `Unreachable` when there is no answer (or the pinned-CA check failed)."""
        data, content_type = payload(req)
        return await self._send(req, data=data, headers={"Content-Type": content_type} if content_type else None)

    async def upload(self, req: Request[R], source: BinaryIO) -> R:
        """`req` with the open file `source` as its body, streamed (a demo release of up to
        gigabytes): no overall deadline, but UPLOAD_STALL_S without progress ends it."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_S, sock_read=UPLOAD_STALL_S)
        return await self._send(req, data=source, headers={"Content-Type": req.content_type}, timeout=timeout)

    async def _send(self, req: Request[R], **options: Any) -> R:
        """`req` with `options` (body, headers, timeout) to aiohttp: the decoded answer, or our errors."""
        import aiohttp

        try:
            async with self.session.request(req.method, f"{self.base}{API}{req.path}", params=req.params,
                                            **options) as resp:
                body = await resp.read()
                return decode(req, resp.status, body, resp.headers.get(ERROR_HEADER, ""))
        except aiohttp.ClientConnectorCertificateError as exc:
            raise self._untrusted(exc) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot reach {self.base}: {exc or type(exc).__name__}") from exc

    # -- websockets -----------------------------------------------------------------------------
    async def websocket(self, up: Upgrade) -> aiohttp.ClientWebSocketResponse:
        """Opens a websocket; a refused upgrade raises `ApiError` with the server's reason."""
        import aiohttp

        try:
            return await self.session.ws_connect(ws_url(self.base, up.path), params=up.params,
                                                 heartbeat=HEARTBEAT_S, max_msg_size=up.max_size)
        except aiohttp.WSServerHandshakeError as exc:
            header = exc.headers.get(ERROR_HEADER, "") if isinstance(exc.headers, Mapping) else ""
            raise refused(up, exc.status, b"", str(header)) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise self._untrusted(exc) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot open {up.what} at {self.base}: {exc or type(exc).__name__}") from exc

    def _untrusted(self, exc: Exception) -> Unreachable:
        return Unreachable(f"TLS verification of {self.base} failed against the pinned CA: {exc}", "tls")

    async def stream(self) -> Stream:
        """Opens `/api/v1/stream`; the caller closes the returned `Stream`."""
        return Stream(await self.websocket(calls.stream()))

    async def command_stream(self, command_id: str) -> AsyncIterator[Json]:
        """Yields the stream's JSON messages (`command`, `output`, `state`, `done`) until `done`.

        Raises `StreamClosed` when the socket closes before `done` (the caller falls back to polling)."""
        ws = await self.websocket(calls.command_stream(command_id))
        try:
            async for doc in messages(ws):
                yield doc
                if doc.get("type") == "done":
                    return
            raise StreamClosed(ws.close_code, f"the command stream closed (code {ws.close_code})")
        finally:
            await ws.close()

    async def shell(self, node: str, cols: int, rows: int) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self.websocket(calls.shell(node, cols, rows))
        except ApiError as exc:
            raise await self.explain(exc, node, "open a shell") from None

    async def explain(self, exc: ApiError, node: str, doing: str, otherwise: str = "") -> ApiError:
        """`refusals.explain` with the reads it asks for (see tui/api/refusals.py)."""
        known: dict[str, Json] = {}
        while isinstance(step := refusals.explain(exc, node, doing, otherwise, known), str):
            try:
                known[step] = await self.send(calls.me() if step == "me" else calls.node(node))
            except ApiError as inner:
                return inner
        return step

    # -- the endpoints as methods (`await api.nodes()` is `await api.send(calls.nodes())`) --------
    health = Endpoint(calls.health)
    register = Endpoint(calls.register)
    me = Endpoint(calls.me)
    nodes = Endpoint(calls.nodes)
    node = Endpoint(calls.node)
    set_maintenance = Endpoint(calls.set_maintenance)
    revoke_node = Endpoint(calls.revoke_node)
    metrics = Endpoint(calls.metrics)
    logs = Endpoint(calls.logs)
    events = Endpoint(calls.events)
    audit = Endpoint(calls.audit)
    operators = Endpoint(calls.operators)
    add_operator = Endpoint(calls.add_operator)
    approve_operator = Endpoint(calls.approve_operator)
    set_role = Endpoint(calls.set_role)
    disable_operator = Endpoint(calls.disable_operator)
    delete_operator = Endpoint(calls.delete_operator)
    new_token = Endpoint(calls.new_token)
    run_command = Endpoint(calls.run_command)
    commands = Endpoint(calls.commands)
    command = Endpoint(calls.command)
    cancel_command = Endpoint(calls.cancel_command)
    sessions = Endpoint(calls.sessions)
    recording = Endpoint(calls.recording)
    request_action = Endpoint(calls.request_action)
    actions = Endpoint(calls.actions)
    update = Endpoint(calls.update)
    release = Endpoint(calls.release)
    publish_release = Endpoint(calls.publish_release)
    alerts = Endpoint(calls.alerts)
    alert = Endpoint(calls.alert)
    ack_alert = Endpoint(calls.ack_alert)
    silences = Endpoint(calls.silences)
    add_silence = Endpoint(calls.add_silence)
    remove_silence = Endpoint(calls.remove_silence)
    rules = Endpoint(calls.rules)
    add_rule = Endpoint(calls.add_rule)
    set_rule = Endpoint(calls.set_rule)
    remove_rule = Endpoint(calls.remove_rule)
    channels = Endpoint(calls.channels)
    add_channel = Endpoint(calls.add_channel)
    remove_channel = Endpoint(calls.remove_channel)
    channel_test = Endpoint(calls.channel_test)
    alert_routes = Endpoint(calls.alert_routes)
    add_alert_route = Endpoint(calls.add_alert_route)
    remove_alert_route = Endpoint(calls.remove_alert_route)
    notifications = Endpoint(calls.notifications)
    notification = Endpoint(calls.notification)
    resend_notification = Endpoint(calls.resend_notification)
    resend_failed = Endpoint(calls.resend_failed)
    demos = Endpoint(calls.demos)
    demo_releases = Endpoint(calls.demo_releases)
    demo_status = Endpoint(calls.demo_status)
    deploy = Endpoint(calls.deploy)
    undeploy = Endpoint(calls.undeploy)
    rollback = Endpoint(calls.rollback)
    deployments = Endpoint(calls.deployments)
    deployment = Endpoint(calls.deployment)


class Stream:
    """The live events websocket: `subscribe()` to log tails, iterate for messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.close_code: int | None = None

    async def subscribe(self, logs: list[str]) -> None:
        await self.ws.send_json({"type": "subscribe", "logs": logs})

    async def subscribed(self, logs: list[str]) -> list[Json]:
        """Subscribe and wait for the server's `subscribed`: from then on every line of those nodes
        is either in the history read next or sent live (docs/protocol.md 4.2), whichever replica
        holds the node. Returns the messages that came first, to handle after that history (all of
        them when the stream closed first: iterating it then ends at once)."""
        import contextlib

        await self.subscribe(logs)
        early: list[Json] = []
        async with contextlib.aclosing(messages(self.ws)) as docs:
            async for doc in docs:
                if doc.get("type") == "subscribed":
                    break
                early.append(doc)
        return early

    async def close(self) -> None:
        await self.ws.close()

    def __aiter__(self) -> AsyncIterator[Json]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Json]:
        """Yields each JSON object; ends when the socket closes (see `close_code`)."""
        async for doc in messages(self.ws):
            yield doc
        self.close_code = self.ws.close_code


async def messages(ws: aiohttp.ClientWebSocketResponse) -> AsyncGenerator[Json, None]:
    """The JSON objects a websocket receives, until it closes or fails (other frames are skipped)."""
    import aiohttp

    async for msg in ws:  # ends at the close
        if msg.type == aiohttp.WSMsgType.TEXT:
            doc = decode_frame(msg.data)
            if doc is not None:
                yield doc
        elif msg.type == aiohttp.WSMsgType.ERROR:
            break
