"""A small client for the three central-server calls the installer needs (enroll, look up, revoke)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from dvic_core.constants import OPERATOR_HEARTBEAT_S, RANK

from .models import ServerSpec
from .tunnel import read_opened, refusal_reason, tunnel_error

_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class CentralError(Exception):
    """The server refused or could not be reached. ``status`` is 0 when there was no HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def ca_sha256(ca_path: str) -> str:
    """Hex SHA-256 of the first certificate's DER bytes in a PEM file (the bundle's ``ca_sha256``)."""
    der = ssl.PEM_cert_to_DER_cert(open(ca_path, encoding="ascii").read())
    return hashlib.sha256(der).hexdigest()


def _ssl_context(spec: ServerSpec) -> ssl.SSLContext | bool:
    scheme = urlsplit(spec.url).scheme
    if scheme == "http":
        host = urlsplit(spec.url).hostname or ""
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise CentralError(0, "insecure_url", f"plain HTTP is allowed only on loopback, not {host!r}")
        return False
    if scheme != "https":
        raise CentralError(0, "bad_url", f"server URL must start with https:// (got {spec.url!r})")
    if spec.ca_path:
        try:
            return ssl.create_default_context(cafile=spec.ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise CentralError(0, "bad_ca", f"cannot load the CA file {spec.ca_path}: {exc}") from exc
    return ssl.create_default_context()


class CentralClient:
    """Operator-API client. Use as ``async with CentralClient(spec) as api: ...``."""

    def __init__(self, spec: ServerSpec) -> None:
        if not spec.url:
            raise CentralError(0, "no_server", "no central server URL (use --server or DVIC_SERVER)")
        if not spec.token:
            raise CentralError(0, "no_token", "no operator token (use --token or DVIC_TOKEN)")
        self.spec = spec
        self._base = spec.url.rstrip("/")
        self._ssl = _ssl_context(spec)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CentralClient:
        self._session = aiohttp.ClientSession(
            timeout=_TIMEOUT, headers={"Authorization": f"Bearer {self.spec.token}"}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> tuple[int, Any]:
        if self._session is None:
            raise RuntimeError("CentralClient used outside 'async with'")
        url = self._base + path
        try:
            async with self._session.request(method, url, json=json, ssl=self._ssl) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                return resp.status, body
        except aiohttp.ClientConnectorCertificateError as exc:
            raise CentralError(
                0, "tls", f"the server's certificate is not signed by the pinned CA: {exc.certificate_error}"
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CentralError(0, "unreachable", f"cannot reach the central server at {self._base}: {exc}") from exc

    @staticmethod
    def _error(status: int, body: Any, what: str) -> CentralError:
        code, message = f"http_{status}", ""
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code") or code)
            message = str(body["error"].get("message") or "")
        return CentralError(status, code, f"{what}: HTTP {status}" + (f" ({message})" if message else ""))

    async def require_role(self, role: str) -> str:
        """``GET /api/v1/me``: fail early unless the token's account is active with at least ``role``."""
        status, body = await self._call("GET", "/api/v1/me")
        if status != 200 or not isinstance(body, dict):
            raise self._error(status, body, "checking your operator token failed")
        if body.get("status") != "active":
            raise CentralError(403, "http_403", f"the account {body.get('name')!r} is {body.get('status')}, "
                                                "not active: an admin must approve it")
        if RANK.get(str(body.get("role")), 0) < RANK[role]:
            raise CentralError(403, "http_403", f"the account {body.get('name')!r} has the role "
                                                f"{body.get('role')!r}; this needs {role!r}")
        return f"{body.get('name')} ({body.get('role')})"

    async def enroll(self, name: str, kind: str, group: str) -> dict[str, Any]:
        """``POST /api/v1/nodes``: enroll a node and return its bundle (protocol.md section 1)."""
        status, body = await self._call("POST", "/api/v1/nodes", {"name": name, "kind": kind, "group": group})
        if status not in (200, 201):
            raise self._error(status, body, f"enrolling {name!r} failed")
        missing = [k for k in ("node_id", "name", "token") if not isinstance(body, dict) or not body.get(k)]
        if missing:
            raise CentralError(status, "bad_bundle", f"the server's bundle lacks {', '.join(missing)}")
        return dict(body)

    async def get_node(self, node: str) -> dict[str, Any] | None:
        """``GET /api/v1/nodes/{node}``: the node detail, or None when the server does not know it."""
        status, body = await self._call("GET", "/api/v1/nodes/" + quote(node, safe=""))
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise self._error(status, body, f"looking up node {node!r} failed")
        return body

    async def revoke(self, node: str) -> bool:
        """``DELETE /api/v1/nodes/{node}``. Returns False when the node was not found."""
        status, body = await self._call("DELETE", "/api/v1/nodes/" + quote(node, safe=""))
        if status == 404:
            return False
        if status not in (200, 204):
            raise self._error(status, body, f"revoking node {node!r} failed")
        return True

    async def wait_online(
        self, node_id: str, within: float, poll: float = 0.25, version: str = ""
    ) -> dict[str, Any]:
        """Poll the node until it is ``online`` (and, given ``version``, runs that daemon version).

        The version matters on an upgrade: the old daemon may still look online for a while.
        CentralError(code="timeout") after ``within`` seconds.
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
                raise CentralError(0, "timeout", f"node not online after {within:.0f} s (state: {state})")
            await asyncio.sleep(poll)

    async def open_tunnel(self, node: str, host: str, port: int, wait: float = 25.0) -> aiohttp.ClientWebSocketResponse:
        """``GET /api/v1/nodes/{node}/tunnel``: a websocket carrying a TCP stream the node opened to host:port."""
        if self._session is None:
            raise RuntimeError("CentralClient used outside 'async with'")
        url = f"{self._base}/api/v1/nodes/{quote(node, safe='')}/tunnel"
        try:
            ws = await self._session.ws_connect(
                url, params={"host": host, "port": str(port)}, ssl=self._ssl, heartbeat=OPERATOR_HEARTBEAT_S,
                max_msg_size=1024 * 1024,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise tunnel_error(node, host, port, exc.status, refusal_reason(exc)) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise CentralError(0, "unreachable", f"cannot reach the central server at {self._base}: {exc}") from exc
        await read_opened(ws, node, host, port, wait)
        return ws
