"""The async client of the central server's operator API: the only way the console and CLI reach it.

Every call returns the decoded JSON body or raises `ApiError` with the server's error code and
message (or `Unreachable` when there is no answer at all). `stream()` opens the live events websocket.

aiohttp is imported when a client opens, not with this module: `dvic` commands that import only the
errors and helpers (`dvic run`, tui/api/lean_http.py) start without paying for it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

from dvic_core.constants import STATUS_CODES
from tui.api.config import Settings

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from typing import Any, Self

    import aiohttp

API = "/api/v1"
Json = dict[str, "Any"]


class ApiError(Exception):
    """An error answer from the server (`status` is the HTTP status, 0 when there was no answer)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message


class Unreachable(ApiError):
    """No usable answer: connection refused, TLS verification failed, timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


def refused_upgrade(exc: aiohttp.WSServerHandshakeError, what: str) -> ApiError:
    """A refused websocket upgrade with the server's code and message.

    aiohttp drops the body of a refused upgrade (its own message is "Invalid response status"),
    so the reason comes from the `X-Dvic-Error: <code>: <message>` header the server repeats it in.
    """
    code, _, message = (exc.headers or {}).get("X-Dvic-Error", "").partition(": ")
    if code and message:
        return ApiError(exc.status, code, message)
    return ApiError(exc.status, STATUS_CODES.get(exc.status, "refused"),
                    f"the server refused {what} (HTTP {exc.status})")


def ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    """Strict TLS trusting only the pinned CA (no system roots); `True` for plain-HTTP servers."""
    if settings.ca_pem is not None:
        return ssl.create_default_context(cadata=settings.ca_pem)
    if settings.ca is None:
        return True
    return ssl.create_default_context(cafile=settings.ca)


def _params(**kwargs: object) -> dict[str, str]:
    """Query parameters without the unset ones; numbers and booleans as the server expects them."""
    out: dict[str, str] = {}
    for key, value in kwargs.items():
        if value is None or value == "":
            continue
        out[key.rstrip("_")] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


class ApiClient:
    """One session to one server. Use as `async with ApiClient(settings) as api: ...`."""

    def __init__(self, settings: Settings, timeout: float = 15.0) -> None:
        self.settings = settings
        self.base = settings.server.rstrip("/")
        self._timeout_s = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            import aiohttp

            headers = {"User-Agent": "dvic/0.1"}
            if self.settings.token:
                headers["Authorization"] = f"Bearer {self.settings.token}"
            connector = aiohttp.TCPConnector(ssl=ssl_context(self.settings))
            timeout = aiohttp.ClientTimeout(total=self._timeout_s, connect=min(self._timeout_s, 10.0))
            self._session = aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ApiClient used outside `async with`")
        return self._session

    async def request(
        self, method: str, path: str, params: Mapping[str, str] | None = None, body: Json | None = None
    ) -> Json:
        status, raw = await self.exchange(method, path, params=params, json=body)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ApiError(status, "bad_response", f"{method} {path}: the server's answer is not a JSON object")
        return doc

    async def exchange(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        """One request (`kwargs` as for aiohttp's `request`): the status and the body of a success.

        Raises Unreachable when the server cannot be reached or fails the pinned-CA check, and
        ApiError with the server's own error code and message for a status >= 400."""
        import aiohttp

        try:
            async with self.session.request(method, f"{self.base}{API}{path}", **kwargs) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unreachable(f"TLS verification of {self.base} failed against the pinned CA: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot reach {self.base}: {exc or type(exc).__name__}") from exc
        if status >= 400:
            try:
                err = json.loads(raw).get("error")
            except (ValueError, AttributeError):
                err = None
            if isinstance(err, dict):
                raise ApiError(status, str(err.get("code", "error")), str(err.get("message", "")))
            raise ApiError(status, "http_error", f"HTTP {status} from {path}: {raw[:200]!r}")
        return status, raw

    # -- public and account -------------------------------------------------------------------
    async def health(self) -> Json:
        return await self.request("GET", "/health")

    async def register(self, name: str) -> Json:
        return await self.request("POST", "/register", body={"name": name})

    async def me(self) -> Json:
        return await self.request("GET", "/me")

    # -- nodes --------------------------------------------------------------------------------
    async def nodes(self, group: str | None = None, kind: str | None = None, state: str | None = None) -> list[Json]:
        doc = await self.request("GET", "/nodes", _params(group=group, kind=kind, state=state))
        return _list(doc, "nodes")

    async def node(self, node: str) -> Json:
        return await self.request("GET", f"/nodes/{_seg(node)}")

    async def set_maintenance(self, node: str, on: bool) -> Json:
        return await self.request("POST", f"/nodes/{_seg(node)}/maintenance", body={"on": on})

    async def revoke_node(self, node: str) -> Json:
        return await self.request("DELETE", f"/nodes/{_seg(node)}")

    async def metrics(
        self, node: str, from_: float, to: float, step: int, names: list[str] | None = None
    ) -> Json:
        import math

        # Whole seconds, widened outwards: truncating `to` would hide the newest second's samples.
        params = _params(from_=math.floor(from_), to=math.ceil(to), step=step,
                         names=",".join(names) if names else None)
        return await self.request("GET", f"/nodes/{_seg(node)}/metrics", params)

    # -- history ------------------------------------------------------------------------------
    async def logs(
        self,
        node: str | None = None,
        source: str | None = None,
        level: str | None = None,
        q: str | None = None,
        from_: float | None = None,
        to: float | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Json:
        """One page, newest first: `{"lines": [...], "next_cursor": ...}`."""
        params = _params(node=node, source=source, level=level, q=q, from_=from_, to=to, cursor=cursor, limit=limit)
        doc = await self.request("GET", "/logs", params)
        _list(doc, "lines")
        return doc

    async def events(
        self,
        node: str | None = None,
        kind: str | None = None,
        from_: float | None = None,
        to: float | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Json:
        params = _params(node=node, kind=kind, from_=from_, to=to, cursor=cursor, limit=limit)
        doc = await self.request("GET", "/events", params)
        _list(doc, "events")
        return doc

    async def audit(self, cursor: str | None = None, limit: int | None = None) -> Json:
        return await self.request("GET", "/audit", _params(cursor=cursor, limit=limit))

    # -- operators ----------------------------------------------------------------------------
    async def operators(self) -> list[Json]:
        return _list(await self.request("GET", "/operators"), "operators")

    async def add_operator(self, name: str, role: str, expires_in: int | None = None) -> Json:
        body: Json = {"name": name, "role": role}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return await self.request("POST", "/operators", body=body)

    async def approve_operator(self, name: str, role: str, code: str | None = None) -> Json:
        body: Json = {"role": role}
        if code is not None:
            body["code"] = code
        return await self.request("POST", f"/operators/{_seg(name)}/approve", body=body)

    async def set_role(self, name: str, role: str) -> Json:
        return await self.request("POST", f"/operators/{_seg(name)}/role", body={"role": role})

    async def disable_operator(self, name: str) -> Json:
        return await self.request("DELETE", f"/operators/{_seg(name)}")

    async def delete_operator(self, name: str) -> Json:
        """Deletes a pending or disabled account (its name becomes free)."""
        return await self.request("POST", f"/operators/{_seg(name)}/delete")

    async def new_token(self, name: str, expires_in: int | None = None) -> Json:
        body = None if expires_in is None else {"expires_in": expires_in}
        return await self.request("POST", f"/operators/{_seg(name)}/tokens", body=body)

    # -- live ---------------------------------------------------------------------------------
    async def stream(self, heartbeat: float = 10.0) -> Stream:
        """Opens `/api/v1/stream`; the caller closes the returned `Stream`."""
        import aiohttp

        url = self.base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + API + "/stream"
        try:
            ws = await self.session.ws_connect(url, heartbeat=heartbeat, max_msg_size=16 * 1024 * 1024)
        except aiohttp.WSServerHandshakeError as exc:
            raise refused_upgrade(exc, "the stream") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"cannot open the stream at {url}: {exc or type(exc).__name__}") from exc
        return Stream(ws)


class Stream:
    """The live events websocket: `subscribe()` to log tails, iterate for messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.close_code: int | None = None

    async def subscribe(self, logs: list[str]) -> None:
        await self.ws.send_str(json.dumps({"type": "subscribe", "logs": logs}))

    async def close(self) -> None:
        await self.ws.close()

    def __aiter__(self) -> AsyncIterator[Json]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Json]:
        """Yields each JSON object; ends when the socket closes (see `close_code`)."""
        import aiohttp

        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    doc = json.loads(msg.data)
                except ValueError:
                    continue  # one garbled frame must not end the stream
                if isinstance(doc, dict):
                    yield doc
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break
        self.close_code = self.ws.close_code


# Bytes `urllib.parse.quote` never escapes (RFC 3986 unreserved).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _seg(value: str) -> str:
    """A URL path segment: node and operator names may hold characters that need quoting.

    `urllib.parse.quote(value, safe="")`, without importing urllib.parse (with ipaddress, a few
    milliseconds of every `dvic run`): UTF-8, every byte but the unreserved ones as %XX."""
    data = value.encode()
    if all(b in _UNRESERVED for b in data):
        return value
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in data)


def _list(doc: Json, key: str) -> list[Json]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise ApiError(200, "bad_response", f"the server's answer has no `{key}` list")
    return [i for i in items if isinstance(i, dict)]
