"""Real notification receivers for tests: an HTTP receiver (aiohttp) and an SMTP server (aiosmtpd),
each on 127.0.0.1 port 0 in its own thread and event loop, so sync tests (a server subprocess,
blocking waits) and async tests (a dispatcher in the test's loop) use them alike.

The HTTP receiver records every request and answers as `mode` says: "ok" (200), "fail" (500),
"gone" (410), "hang" (no answer), "close" (closes the connection without answering); `stop()` then `start()`
brings it back on the same port (a receiver that was down and restarted).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from central.pki import CertificateAuthority

T = TypeVar("T")


class _LoopThread:
    """An event loop on a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.mode = "ok"
        self.requests: list[Received] = []  # every request, whatever was answered
        self.accepted: list[Received] = []  # those answered 2xx
        self.port = 0
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._loop = _LoopThread("http-receiver")
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> HttpReceiver:
        self._loop.run(self._start())
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._release = asyncio.Event()

    def stop(self) -> None:
        """Down: the port refuses connections until `start()` again."""
        if self._runner is not None:
            self._loop.loop.call_soon_threadsafe(self._release.set)
            self._loop.run(self._runner.cleanup())
            self._runner = None

    def close(self) -> None:
        self.stop()
        self._loop.close()

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.path_qs, dict(request.headers), await request.read())
        mode = self.mode
        with self._lock:
            self.requests.append(received)
        if mode == "fail":
            return web.Response(status=500, text="receiver broken")
        if mode == "gone":
            return web.Response(status=410, text="no such webhook")
        if mode == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if mode == "close":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        with self._lock:
            self.accepted.append(received)
        return web.Response(status=200, text="ok")

    def got(self, count: int = 1) -> bool:
        with self._lock:
            return len(self.accepted) >= count


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes
    login: str | None

    def message(self) -> Any:
        import email
        import email.policy

        return email.message_from_bytes(self.data, policy=email.policy.default)


class _MailHandler:
    def __init__(self, inbox: list[Mail]) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        login = session.auth_data if isinstance(session.auth_data, str) else None  # set by _authenticate
        data = envelope.original_content or envelope.content or b""
        self.inbox.append(Mail(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos],
                               data.encode() if isinstance(data, str) else bytes(data), login))
        return "250 2.0.0 queued as test"


class SmtpServer:
    """aiosmtpd on 127.0.0.1 port 0. security: "starttls" (STARTTLS required before anything),
    "tls" (implicit TLS), "plain" (no TLS offered). With users, AUTH PLAIN/LOGIN checks them."""

    def __init__(self, cert_dir: Path, security: str = "starttls", users: dict[str, str] | None = None) -> None:
        self.security = security
        self.users = users or {}
        self.inbox: list[Mail] = []
        self.auth_attempts: list[str] = []
        self.ca_pem, self._server_ssl = tls_for_tests(cert_dir)
        self._loop = _LoopThread("smtp-server")
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def start(self) -> SmtpServer:
        self._loop.run(self._start())
        return self

    async def _start(self) -> None:
        handler = _MailHandler(self.inbox)
        starttls = self.security == "starttls"

        def protocol() -> SMTP:
            return SMTP(handler, hostname="mail.test", tls_context=self._server_ssl if starttls else None,
                        require_starttls=starttls, authenticator=self._authenticate if self.users else None,
                        # aiosmtpd cannot tell an implicit-TLS socket from a plain one: it only
                        # knows TLS it started itself (STARTTLS).
                        auth_require_tls=starttls)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, "127.0.0.1", self.port,
                                                ssl=self._server_ssl if self.security == "tls" else None)
        self.port = self._server.sockets[0].getsockname()[1]

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.auth_attempts.append(login)
        return AuthResult(success=self.users.get(login) == password, handled=False, auth_data=login)

    def __enter__(self) -> SmtpServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._server is not None:
            self._loop.run(self._stop(self._server))
            self._server = None
        self._loop.close()

    @staticmethod
    async def _stop(server: asyncio.base_events.Server) -> None:
        server.close()
        await server.wait_closed()


def tls_for_tests(cert_dir: Path) -> tuple[str, ssl.SSLContext]:
    """A test CA and a certificate for 127.0.0.1/localhost signed by it: (CA PEM, server context)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(cert_dir)
    cert_path, key_path = ca.ensure_server_cert(["127.0.0.1", "localhost"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return ca.pem, context
