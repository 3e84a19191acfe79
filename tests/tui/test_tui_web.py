"""`dvic console --web` as a browser (or a hostile page) meets it: the real command in a subprocess,
against the real central server. Its secret URL is swapped for a cookie, every page and the
websocket need that cookie, a websocket must come from the console's own origin, and an address
other than loopback is refused without TLS."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest

from tests.support.cli import DVIC, ROOT, server_env
from tests.support.server import CentralServer
from tui.console.web import WebSetupError, origin_of, plan_listen

NODE = "pi-web-7"  # enrolled before the console starts: its row proves the console reached the server
BASE = re.compile(r"served at (https?://\S+?)/?\s")
OPEN = re.compile(r"https?://\S+/\?key=\S+")


@dataclass
class WebConsole:
    proc: asyncio.subprocess.Process
    base: str  # http(s)://127.0.0.1:PORT, as printed
    open_url: str  # the printed URL with the secret
    ssl: ssl.SSLContext | bool

    @property
    def origin(self) -> str:
        return self.base

    @property
    def ws_url(self) -> str:
        return self.base.replace("http", "ws", 1) + "/ws?width=120&height=40"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *DVIC, "console", "--web", *args, env=env, cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _read_banner(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    """The address and the secret URL the console printed once listening."""
    assert proc.stdout is not None
    text = ""
    while (base := BASE.search(text)) is None or (secret_url := OPEN.search(text)) is None:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"--web ended before printing its URL: {text!r}"
        text += line.decode()
    return base[1], secret_url[0]


@asynccontextmanager
async def web_console(server: CentralServer, env: dict[str, str], *args: str,
                      ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[WebConsole]:
    if NODE not in [n["name"] for n in server.api("GET", "/api/v1/nodes")[1]["nodes"]]:
        server.enroll(NODE, kind="raspberry", group="hall-w")
    proc = await _start(server_env(env, server), "--host", "127.0.0.1", *args)
    try:
        base, secret_url = await _read_banner(proc)
        yield WebConsole(proc, base, secret_url, ssl_context or False)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def _sign_in(http: aiohttp.ClientSession, console: WebConsole) -> dict[str, str]:
    """Opens the printed URL as a browser does: a redirect that drops the secret, and a cookie."""
    async with http.get(console.open_url, allow_redirects=False, ssl=console.ssl) as resp:
        assert resp.status == 303, await resp.text()
        assert resp.headers["Location"] == "/" and "key" not in resp.headers["Location"]
        (name, morsel), = resp.cookies.items()
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert bool(morsel["secure"]) == console.base.startswith("https:")
    assert morsel.value not in console.open_url  # the cookie is not the secret itself
    return {"Cookie": f"{name}={morsel.value}"}


async def _first_screen(ws: aiohttp.ClientWebSocketResponse, text: bytes) -> bytes:
    """What the console drew until `text` appears (its frames are terminal output, escapes included)."""
    screen = b""
    while text not in screen:
        msg = await asyncio.wait_for(ws.receive(), 60)
        assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), f"websocket ended: {msg}"
        screen += msg.data if isinstance(msg.data, bytes) else msg.data.encode()
    return screen


async def _ws_refusal(http: aiohttp.ClientSession, console: WebConsole, headers: dict[str, str],
                      url: str | None = None) -> int:
    """The HTTP status the websocket upgrade got; fails if the upgrade was accepted."""
    try:
        ws = await http.ws_connect(url or console.ws_url, headers=headers, ssl=console.ssl)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    raise AssertionError(f"websocket accepted with {headers}")


async def test_without_the_secret_nothing_is_served(shared_server: CentralServer, dvic_env: dict[str, str]) -> None:
    async with web_console(shared_server, dvic_env, "--port", str(_free_port())) as console, \
            aiohttp.ClientSession() as http:
        for path in ("/", "/static/js/textual.js", "/download/x"):
            async with http.get(console.base + path) as resp:
                assert resp.status == 401, path
                assert "secret URL" in await resp.text()
        async with http.get(console.base + "/?key=not-the-secret") as resp:
            assert resp.status == 403 and "prints a new URL each time it starts" in await resp.text()
        # What a script on any web page can do: new WebSocket("ws://127.0.0.1:PORT/ws").
        assert await _ws_refusal(http, console, {"Origin": "http://evil.example"}) == 401
        assert await _ws_refusal(http, console, {"Origin": console.origin}) == 401


async def test_a_foreign_origin_is_refused_even_with_the_cookie(
    shared_server: CentralServer, dvic_env: dict[str, str]
) -> None:
    async with web_console(shared_server, dvic_env, "--port", str(_free_port())) as console, \
            aiohttp.ClientSession() as http:
        assert await _ws_refusal(http, console, {"Origin": "http://evil.example"}) == 401  # no cookie yet
        cookie = await _sign_in(http, console)
        other_port = console.origin.rsplit(":", 1)[0] + ":1"
        for origin in ("http://evil.example", "null", other_port, console.origin.replace("127.0.0.1", "localhost"),
                       console.origin.replace("http:", "https:")):
            assert await _ws_refusal(http, console, {**cookie, "Origin": origin}) == 403, origin
        assert await _ws_refusal(http, console, cookie) == 403  # no Origin at all
        # The secret in the websocket's own URL does not stand in for the origin either.
        secret = console.open_url.split("key=", 1)[1]
        with_secret = f"{console.ws_url}&key={secret}"
        assert await _ws_refusal(http, console, {"Origin": "http://evil.example"}, with_secret) == 403


async def test_secret_then_own_origin_reaches_the_console(
    shared_server: CentralServer, dvic_env: dict[str, str]
) -> None:
    async with web_console(shared_server, dvic_env, "--port", str(_free_port())) as console, \
            aiohttp.ClientSession() as http:
        cookie = await _sign_in(http, console)
        async with http.get(console.base + "/", headers=cookie) as resp:
            page = await resp.text()
            assert resp.status == 200 and "DVIC Demo Monitor" in page
            assert f'data-session-websocket-url="{console.ws_url.split("?")[0]}"' in page
            assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["X-Frame-Options"] == "DENY"
        async with http.get(console.base + "/static/js/textual.js", headers=cookie) as resp:
            assert resp.status == 200
        ws = await http.ws_connect(console.ws_url, headers={**cookie, "Origin": console.origin})
        try:
            await _first_screen(ws, NODE.encode())  # the fleet, read from the server with the token
        finally:
            await ws.close()


async def test_tls_on_port_zero_secure_cookie_and_wss(
    shared_server: CentralServer, dvic_env: dict[str, str]
) -> None:
    data = shared_server.data_dir  # the server's certificate is valid for 127.0.0.1
    tls = ssl.create_default_context(cafile=str(shared_server.ca_path))
    async with web_console(shared_server, dvic_env, "--port", "0", "--tls-cert", str(data / "server.pem"),
                           "--tls-key", str(data / "server.key"), ssl_context=tls) as console, \
            aiohttp.ClientSession() as http:
        assert console.base.startswith("https://127.0.0.1:") and not console.base.endswith(":0")
        async with http.get(console.base + "/", ssl=tls) as resp:
            assert resp.status == 401
        cookie = await _sign_in(http, console)
        async with http.get(console.base + "/", headers=cookie, ssl=tls) as resp:
            assert 'data-session-websocket-url="wss://127.0.0.1:' in await resp.text()
        assert await _ws_refusal(http, console, {**cookie, "Origin": console.origin.replace("https:", "http:")}) == 403
        ws = await http.ws_connect(console.ws_url, headers={**cookie, "Origin": console.origin}, ssl=tls)
        try:
            await _first_screen(ws, NODE.encode())
        finally:
            await ws.close()


async def test_off_loopback_without_tls_is_refused_at_start(
    shared_server: CentralServer, dvic_env: dict[str, str]
) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: nothing can listen there even by mistake.
    proc = await _start(server_env(dvic_env, shared_server), "--host", "192.0.2.1", "--port", str(_free_port()))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, (out, err)
    assert b"--host 192.0.2.1 is not a loopback address" in err and b"--tls-cert FILE --tls-key FILE" in err
    assert b"served at" not in out


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_plan_refuses_every_non_loopback_address_without_tls(host: str) -> None:
    with pytest.raises(WebSetupError, match="not a loopback address.*--tls-cert"):
        plan_listen(host, 8000)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.7.7.7", "::1", "localhost"])
def test_plan_accepts_loopback_without_tls(host: str) -> None:
    assert plan_listen(host, 0).tls is None


def test_plan_checks_tls_and_the_public_url(shared_server: CentralServer) -> None:
    cert, key = str(shared_server.data_dir / "server.pem"), str(shared_server.data_dir / "server.key")
    with pytest.raises(WebSetupError, match="go together"):
        plan_listen("127.0.0.1", 0, tls_cert=cert)
    with pytest.raises(WebSetupError, match="cannot use --tls-cert"):
        plan_listen("127.0.0.1", 0, tls_cert=cert, tls_key=cert)
    with pytest.raises(WebSetupError, match="listens on every address.*--public-url"):
        plan_listen("0.0.0.0", 0, tls_cert=cert, tls_key=key)
    with pytest.raises(WebSetupError, match="bare https:// URL"):
        plan_listen("0.0.0.0", 0, tls_cert=cert, tls_key=key, public_url="http://console.lab:8443/")
    with pytest.raises(WebSetupError, match="bare http:// URL"):
        plan_listen("127.0.0.1", 0, public_url="http://localhost:9000/console")
    plan = plan_listen("0.0.0.0", 0, tls_cert=cert, tls_key=key, public_url="https://console.lab:8443/")
    assert plan.tls is not None and plan.public_url == "https://console.lab:8443/"


def test_origins_compare_by_scheme_host_and_port() -> None:
    assert origin_of("http://127.0.0.1:8000") == origin_of("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert origin_of("https://Console.LAB") == "https://console.lab:443"
    assert origin_of("http://[::1]:80/") == "http://[::1]:80"
    assert origin_of("null") is None and origin_of("http://x:99999") is None and origin_of("file:///x") is None
