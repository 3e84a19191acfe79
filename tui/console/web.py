"""`dvic console --web`: serves the console to browsers with textual-serve (one process per session).

textual-serve alone answers any request and accepts any websocket: a script on any web page the
operator visits could open `ws://127.0.0.1:8000/ws` and type into a console holding the operator's
token. So this start's own secret is required on every request (the printed URL carries it once,
then a cookie does), a websocket upgrade must come from the console's own page (Origin), and an
address other than loopback is served only over TLS. docs/console.md, "In a browser (--web)".
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import secrets
import shlex
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from tui.api.config import Settings

SECRET_PARAM = "key"  # the query parameter of the printed URL that carries the secret
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# How long stopping waits for open sessions before cancelling them (each then ends its console).
SHUTDOWN_TIMEOUT = 5.0


class WebSetupError(Exception):
    """The --web options cannot be served safely or at all; the message says what to change."""


@dataclass(frozen=True)
class ListenPlan:
    """Where to listen, checked: the address to bind, TLS if any, and the URL browsers open (if given)."""

    host: str
    port: int
    family: int
    sockaddr: tuple[object, ...]
    tls: ssl.SSLContext | None
    public_url: str | None


def plan_listen(host: str, port: int, tls_cert: str | None = None, tls_key: str | None = None,
                public_url: str | None = None) -> ListenPlan:
    """Checks the --web options; raises WebSetupError saying what to change."""
    if not 0 <= port <= 65535:
        raise WebSetupError(f"--port {port} is not a port number (0-65535; 0 picks a free one)")
    if (tls_cert is None) != (tls_key is None):
        raise WebSetupError("--tls-cert and --tls-key go together: give both (the certificate and its key) or neither")
    addresses = _resolve(host, port)
    tls = _tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
    if tls is None and not all(_is_loopback(addr[0]) for _, addr in addresses):
        raise WebSetupError(
            f"--host {host} is not a loopback address: anyone on the network could reach the console. "
            "Off loopback it is served only over HTTPS: add --tls-cert FILE --tls-key FILE "
            "(and --public-url https://NAME:PORT/ with the name browsers use), or keep --host 127.0.0.1"
        )
    if public_url is not None:
        _check_public_url(public_url, https=tls is not None)
    elif _is_wildcard(host):
        raise WebSetupError(
            f"--host {host} listens on every address, so the console cannot tell its own origin: "
            "say which URL browsers open with --public-url https://NAME:PORT/ (only that origin is accepted)"
        )
    # One address is bound (so port 0 gives one port): IPv4 first, which every client tries.
    family, sockaddr = min(addresses, key=lambda address: address[0] != socket.AF_INET)
    return ListenPlan(host, port, family, sockaddr, tls, public_url)


def _resolve(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebSetupError(f"--host {host!r} cannot be resolved ({exc}): give an address such as 127.0.0.1") from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _is_loopback(address: object) -> bool:
    try:
        return ipaddress.ip_address(str(address).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebSetupError(f"cannot use --tls-cert {cert} / --tls-key {key}: {exc}") from None
    return context


def _check_public_url(url: str, https: bool) -> None:
    parts = urlsplit(url)
    want = "https" if https else "http"
    if parts.scheme != want or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise WebSetupError(
            f"--public-url {url!r} must be the bare {want}:// URL browsers open, such as "
            f"{want}://console.example:8443/ ({'TLS is on' if https else 'no TLS: loopback or a tunnel to it'})"
        )


def origin_of(url: str) -> str | None:
    """The origin (`scheme://host:port`, lower case, default port filled in) of a URL or an Origin
    header, or None when it has none (`null`, garbage)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower()
    return f"{parts.scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class Gate:
    """What this start of the web console accepts: its secret (from the printed URL), the session
    cookie handed out for it, and its own origin. Both values are random and new at every start."""

    public_url: str
    cookie_name: str
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    session: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def origin(self) -> str:
        return origin_of(self.public_url) or ""

    @property
    def secure(self) -> bool:
        return self.public_url.startswith("https:")

    def url_to_open(self) -> str:
        return f"{self.public_url.rstrip('/')}/?{SECRET_PARAM}={self.secret}"

    def has_secret(self, request: web.BaseRequest) -> bool | None:
        """True/False when the request carries the secret parameter (right/wrong), None without one."""
        given = request.query.get(SECRET_PARAM)
        return None if given is None else hmac.compare_digest(given.encode(), self.secret.encode())

    def has_session(self, request: web.BaseRequest) -> bool:
        given = request.cookies.get(self.cookie_name)
        return given is not None and hmac.compare_digest(given.encode(), self.session.encode())

    def origin_refusal(self, request: web.BaseRequest) -> str | None:
        """Why the request's Origin is not this console's own (None when it is)."""
        given = request.headers.get("Origin")
        if given is not None and origin_of(given) == self.origin:
            return None
        seen = "no Origin header" if given is None else f"Origin {given[:100]!r}"
        return (f"refused: a websocket or a change to this console must come from its own page "
                f"({self.origin}), this request has {seen}")


def _needs_origin(request: web.BaseRequest) -> bool:
    is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    return is_upgrade or request.method not in SAFE_METHODS


NO_SECRET = ("this console needs the secret URL that `dvic console --web` printed when it started "
             f"(.../?{SECRET_PARAM}=...): open that URL; a cookie then keeps this browser in until the console stops")
WRONG_SECRET = ("this secret is not the one of the running console: `dvic console --web` prints a new URL "
                "each time it starts, open the latest one")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guard(gate: Gate) -> Middleware:
    """The middleware in front of every textual-serve route: secret or cookie, then Origin."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        secret = gate.has_secret(request)
        if secret is False:
            raise web.HTTPForbidden(text=WRONG_SECRET)
        if secret is None and not gate.has_session(request):
            raise web.HTTPUnauthorized(text=NO_SECRET)
        if _needs_origin(request) and (refusal := gate.origin_refusal(request)):
            raise web.HTTPForbidden(text=refusal)
        if secret and request.method == "GET" and not _needs_origin(request):
            raise _swap_secret_for_cookie(gate, request)
        return await handler(request)

    return check


def _swap_secret_for_cookie(gate: Gate, request: web.Request) -> web.HTTPSeeOther:
    """The same page without the secret in its URL (so it leaves the address bar), and the cookie."""
    kept = [(name, value) for name, value in request.query.items() if name != SECRET_PARAM]
    response = web.HTTPSeeOther(location=str(request.rel_url.with_query(kept)))
    response.set_cookie(gate.cookie_name, gate.session, httponly=True, samesite="Strict",
                        secure=gate.secure or None, path="/")
    return response


async def _protective_headers(request: web.Request, response: web.StreamResponse) -> None:
    # The page is not to be framed by another site, nor cached, nor named to the fonts it loads.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    response.headers.setdefault("Cache-Control", "no-store")


async def build_app(server: object, gate: Gate) -> web.Application:
    """textual-serve's application with the gate in front of all its routes."""
    app: web.Application = await server._make_app()  # type: ignore[attr-defined]
    app.middlewares.append(guard(gate))
    app.on_response_prepare.append(_protective_headers)
    return app


def _console_server(command: str, public_url: str) -> object:
    from textual_serve.server import Server

    class ConsoleServer(Server):
        async def on_startup(self, app: web.Application) -> None:
            pass  # textual-serve's banner names no secret; `serve` prints the URL to open instead

    return ConsoleServer(command, title="DVIC Demo Monitor", public_url=public_url.rstrip("/"))


def _bind(plan: ListenPlan) -> socket.socket:
    sock = socket.socket(plan.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(plan.sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise WebSetupError(f"cannot listen on {plan.host} port {plan.port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _default_public_url(plan: ListenPlan, port: int) -> str:
    host = f"[{plan.host}]" if ":" in plan.host else plan.host
    return f"{'https' if plan.tls else 'http'}://{host}:{port}"


def _pass_settings(settings: Settings) -> None:
    """Each session starts `python -m tui console`, which reads its settings from the environment:
    never a command line, where `ps` would show the token to every local user. A process's
    environment (/proc/PID/environ) is readable only by its own user and root."""
    os.environ["DVIC_SERVER"] = settings.server
    if settings.token:
        os.environ["DVIC_TOKEN"] = settings.token
    if settings.ca:
        os.environ["DVIC_CA"] = os.path.abspath(settings.ca)


async def _run(plan: ListenPlan) -> int:
    sock = _bind(plan)
    port = sock.getsockname()[1]
    gate = Gate(public_url=plan.public_url or _default_public_url(plan, port), cookie_name=f"dvic_console_{port}")
    server = _console_server(f"{shlex.quote(sys.executable)} -m tui console", gate.public_url)
    runner = web.AppRunner(await build_app(server, gate), shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, ssl_context=plan.tls, shutdown_timeout=SHUTDOWN_TIMEOUT).start()
        print(f"dvic: console served at {gate.public_url.rstrip('/')}/ (port {port}); open this URL once:\n"
              f"  {gate.url_to_open()}\n"
              "It is new at each start and works until this process stops: whoever has it (or the cookie "
              "it gives a browser) acts with your token.", flush=True)
        await _until_stopped()
    finally:
        await runner.cleanup()
    return 0


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def serve(settings: Settings, host: str, port: int, *, tls_cert: str | None = None, tls_key: str | None = None,
          public_url: str | None = None) -> int:
    """`dvic console --web`: the exit code (2 for options that cannot be served safely)."""
    try:
        import textual_serve.server  # noqa: F401
    except ImportError:
        print("dvic: --web needs textual-serve (pip install 'dvic-demo-monitor[web]')", file=sys.stderr)
        return 2
    try:
        plan = plan_listen(host, port, tls_cert, tls_key, public_url)
        _pass_settings(settings)
        return asyncio.run(_run(plan))
    except WebSetupError as exc:
        print(f"dvic: {exc}", file=sys.stderr)
        return 2
