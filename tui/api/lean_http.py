"""A small blocking HTTPS and websocket client on the standard library, for `dvic run`.

`dvic run NODE -- CMD` is typed at a prompt, so the process's start-up is part of its round trip:
importing asyncio and aiohttp costs several times what the command itself takes
(docs/performance.md, "Remote control"). This client speaks just what the operator API needs:
HTTP/1.1 with keep-alive (Content-Length or chunked bodies) and the client side of RFC 6455
websockets (unmasked frames in, masked control frames out, ping answered, close echoed).

TLS trusts only the pinned CA, as `tui.api.client.ssl_context` does; errors are the same `ApiError`
and `Unreachable` as `tui.api.client.ApiClient` raises, with the same messages.
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import ssl
import time
from types import TracebackType

from dvic_core.constants import STATUS_CODES
from tui.api.client import API, ApiError, Json, Unreachable, ssl_context
from tui.api.config import Settings

try:
    # SHA-1 for the handshake check alone: the module hashlib falls back on, without hashlib's own
    # import (it loads OpenSSL's and BLAKE2's modules), a few milliseconds of every `dvic run`.
    from _sha1 import sha1
except ImportError:  # an interpreter built without it
    from hashlib import sha1

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_HEAD_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # as aiohttp's default, which the other clients use
# The server pings every 20 s (heartbeat): this long without any frame means it or the path is gone.
WS_SILENCE_S = 45.0
READ_CHUNK = 65536


class _Closed(Exception):
    """The peer closed the connection (or it broke) before the expected bytes came."""


class Connection:
    """One socket (TLS or plain) with its read buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.reused = False  # served a response before: the server may have closed it while idle
        self.received = False  # a byte of the current response came

    def send(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(_left(deadline))
        self.sock.sendall(data)

    def fill(self, deadline: float | None) -> None:
        """Reads what is there (at least one byte) into `buf`; `_Closed` at the end of the stream."""
        self.sock.settimeout(None if deadline is None else _left(deadline))
        data = self.sock.recv(READ_CHUNK)
        if not data:
            raise _Closed("the server closed the connection")
        self.received = True
        self.buf += data

    def pending(self) -> bool:
        """Bytes already decrypted by TLS but not read yet (a select() on the socket would miss them)."""
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def read_line(self, deadline: float, limit: int = MAX_HEAD_BYTES) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > limit:
                raise _Closed("an over-long line from the server")
            self.fill(deadline)
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def read_exact(self, count: int, deadline: float) -> bytes:
        while len(self.buf) < count:
            self.fill(deadline)
        data = bytes(self.buf[:count])
        del self.buf[:count]
        return data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Response:
    """An answer; `conn` is the connection of an accepted websocket upgrade (101), else None."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, reusable: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reusable = reusable
        self.conn: Connection | None = None


class LeanClient:
    """Requests to one server's operator API. Use as `with LeanClient(settings) as api: ...`."""

    def __init__(self, settings: Settings, timeout: float = 15.0) -> None:
        self.base = settings.server.rstrip("/")
        scheme, netloc, hostname, port = split_url(self.base)
        if scheme not in ("https", "http") or not hostname:
            raise Unreachable(f"cannot reach {self.base}: not an http(s) URL")
        self.host = hostname
        # As bytes: a str host name goes through the "idna" codec (socket and ssl both), whose import
        # (encodings.idna, stringprep, unicodedata) costs more than the TLS handshake to a local server.
        self.host_bytes = hostname.encode("ascii" if hostname.isascii() else "idna")
        self.port = port or (443 if scheme == "https" else 80)
        self.timeout = timeout
        self.tls: ssl.SSLContext | None = None
        if scheme == "https":
            ctx = ssl_context(settings)  # only the pinned CA (no system trust store to load)
            self.tls = ctx if isinstance(ctx, ssl.SSLContext) else ssl.create_default_context()
        self.fixed_headers = f"Host: {netloc}\r\nUser-Agent: dvic/0.1\r\n"
        if settings.token:
            self.fixed_headers += f"Authorization: Bearer {settings.token}\r\n"
        self.idle: list[Connection] = []

    def __enter__(self) -> LeanClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    # -- JSON requests ---------------------------------------------------------------------------
    def request(self, method: str, path: str, params: dict[str, str] | None = None,
                body: Json | None = None) -> Json:
        """The decoded JSON object of the answer; `ApiError` / `Unreachable` as `ApiClient.request`."""
        data = json.dumps(body).encode() if body is not None else b""
        headers = "Content-Type: application/json\r\n" if body is not None else ""
        resp = self.exchange(method, path, params, headers, data)
        try:
            doc = json.loads(resp.body) if resp.body else {}
        except ValueError:
            doc = None
        if resp.status >= 400:
            raise _error(resp.status, doc, f"HTTP {resp.status} from {path}: {resp.body[:200]!r}")
        if not isinstance(doc, dict):
            raise ApiError(resp.status, "bad_response", f"{method} {path}: the server's answer is not a JSON object")
        return doc

    def exchange(self, method: str, path: str, params: dict[str, str] | None = None, headers: str = "",
                 data: bytes = b"", upgrade: bool = False) -> Response:
        """One request and its whole answer (only the head when `upgrade` and the server switches).

        A keep-alive connection the server closed while it was idle fails before any byte of the
        answer: the request is then sent again on a new connection, once.
        """
        deadline = time.monotonic() + self.timeout
        target = f"{API}{path}" + (f"?{_urlencode(params)}" if params else "")
        head = (f"{method} {target} HTTP/1.1\r\n{self.fixed_headers}{headers}"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        while True:
            conn = self.idle.pop() if self.idle else self._connect(deadline)
            try:
                conn.received = False
                conn.send(head + data, deadline)
                resp = self._read_response(conn, deadline, upgrade)
            except (OSError, _Closed) as exc:
                conn.close()
                if conn.reused and not conn.received:
                    continue
                what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
                raise Unreachable(f"cannot reach {self.base}: {what}") from exc
            except ValueError as exc:
                conn.close()
                raise ApiError(0, "bad_response", f"{method} {path}: unreadable answer ({exc})") from exc
            if upgrade and resp.status == 101:
                resp.conn = conn
            elif resp.reusable:
                conn.reused = True
                self.idle.append(conn)
            else:
                conn.close()
            return resp

    def _connect(self, deadline: float) -> Connection:
        try:
            sock = socket.create_connection((self.host_bytes, self.port), timeout=min(_left(deadline), 10.0))
        except OSError as exc:
            raise Unreachable(f"cannot reach {self.base}: {exc or type(exc).__name__}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host_bytes)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise Unreachable(f"TLS verification of {self.base} failed against the pinned CA: {exc}") from exc
        except OSError as exc:
            sock.close()
            raise Unreachable(f"cannot reach {self.base}: {exc or type(exc).__name__}") from exc
        return Connection(sock)

    def _read_response(self, conn: Connection, deadline: float, upgrade: bool) -> Response:
        status_line = conn.read_line(deadline).decode("latin-1")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x answer: {status_line[:60]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        size = 0
        while line := conn.read_line(deadline):
            size += len(line)
            if size > MAX_HEAD_BYTES:
                raise ValueError("answer head too long")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if upgrade and status == 101:
            return Response(status, headers, b"", reusable=False)
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked(conn, deadline)
        elif "content-length" in headers:
            body = conn.read_exact(int(headers["content-length"]), deadline)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # no length: the body runs to the end of the connection
            chunks = [bytes(conn.buf)]
            conn.buf.clear()
            try:
                while True:
                    conn.fill(deadline)
                    chunks.append(bytes(conn.buf))
                    conn.buf.clear()
            except _Closed:
                pass
            body, keep = b"".join(chunks), False
        return Response(status, headers, body, keep)

    @staticmethod
    def _read_chunked(conn: Connection, deadline: float) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(conn.read_line(deadline).split(b";", 1)[0], 16)
            if size == 0:
                while conn.read_line(deadline):  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(conn.read_exact(size, deadline))
            if conn.read_exact(2, deadline) != b"\r\n":
                raise ValueError("bad chunk framing")

    # -- websockets ------------------------------------------------------------------------------
    def websocket(self, path: str, params: dict[str, str] | None = None, what: str = "the websocket") -> WebSocket:
        """Upgrades a connection to a websocket; a refusal raises `ApiError` with the server's reason."""
        key = base64.b64encode(os.urandom(16)).decode()
        headers = (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n")
        resp = self.exchange("GET", path, params, headers, upgrade=True)
        if resp.status != 101:
            try:
                doc = json.loads(resp.body)
            except ValueError:
                doc = None
            err = _error(resp.status, doc, f"the server refused {what} (HTTP {resp.status})")
            if err.code == "http_error":
                err = ApiError(resp.status, STATUS_CODES.get(resp.status, "refused"), err.message)
            raise err
        conn = resp.conn
        assert conn is not None
        if resp.headers.get("sec-websocket-accept") != websocket_accept(key) or resp.headers.get("upgrade", "").lower() != "websocket":
            conn.close()
            raise ApiError(101, "bad_response", f"the server's answer to {what} is not a websocket handshake")
        return WebSocket(conn)


def websocket_accept(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to `key` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(sha1((key + WS_GUID).encode()).digest()).decode()


# Characters of a URL's authority that `split_url` reads itself: a host name or IPv4 address and a port.
_PLAIN_AUTHORITY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:")


def split_url(url: str) -> tuple[str, str, str | None, int | None]:
    """(scheme, netloc, hostname, port) as `urllib.parse.urlsplit` gives them.

    The usual server URL (`https://host:port`, maybe a path) is read here: urllib.parse and the
    ipaddress module it imports cost a few milliseconds of every `dvic run`. Anything else (user
    info, IPv6 brackets, a query, odd characters) goes to urlsplit itself."""
    scheme, sep, rest = url.partition("://")
    netloc = rest.partition("/")[0]
    host, colon, port_text = netloc.partition(":")
    if (sep and scheme in ("https", "http") and host and set(netloc) <= _PLAIN_AUTHORITY
            and (not colon or port_text.isdigit()) and not any(c in rest for c in "?#\t\r\n")):
        port = int(port_text) if port_text else None
        if port is None or port <= 65535:
            return scheme, netloc, host.lower(), port
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.hostname, parts.port


def _urlencode(params: dict[str, str]) -> str:
    from urllib.parse import urlencode  # only requests with a query: none on `dvic run`'s usual path

    return urlencode(params)


class WebSocketClosed(Exception):
    """The websocket ended: `code` is the close code the server sent (None: no close frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(reason or f"closed (code {code})")
        self.code = code


class WebSocket:
    """The client end of an upgraded connection: `receive()` text messages until it closes."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.close_code: int | None = None
        self.closed = False
        self.last_frame = time.monotonic()
        self._parts: list[bytes] = []
        self._kind = 0  # opcode of the fragmented message being assembled

    def receive(self, timeout: float | None = None, wake_fd: int | None = None) -> str | None:
        """The next text message; None when `timeout` passed or `wake_fd` became readable (it is
        drained). Binary messages are skipped. Raises `WebSocketClosed` when the socket ends."""
        if self.closed:
            raise WebSocketClosed(self.close_code)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._next_message()
            if message is not None:
                return message
            if self.conn.pending():
                self._fill()
                continue
            silent_until = self.last_frame + WS_SILENCE_S
            wait_until = silent_until if deadline is None else min(deadline, silent_until)
            left = wait_until - time.monotonic()
            if left <= 0:
                if deadline is not None and deadline <= silent_until:
                    return None
                self._lost(f"no frame from the server for {WS_SILENCE_S:.0f} s")
            fds = [self.conn.sock] if wake_fd is None else [self.conn.sock, wake_fd]
            readable, _, _ = select.select(fds, [], [], left)
            if wake_fd is not None and wake_fd in readable:
                _drain(wake_fd)
                return None
            if readable:
                self._fill()

    def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._send(0x8, code.to_bytes(2, "big"))
            except OSError:
                pass
        self.conn.close()

    def _fill(self) -> None:
        try:
            # a TLS record may still be arriving after select() said readable: bounded wait for it
            self.conn.fill(time.monotonic() + WS_SILENCE_S)
        except (OSError, _Closed) as exc:
            self._lost(str(exc) or type(exc).__name__)

    def _lost(self, reason: str) -> None:
        self.closed = True
        self.conn.close()
        raise WebSocketClosed(None, reason)

    def _next_message(self) -> str | None:
        """Handles the complete frames in the buffer; the first complete text message, if any."""
        while (frame := self._take_frame()) is not None:
            self.last_frame = time.monotonic()
            fin, opcode, payload = frame
            if opcode == 0x9:  # ping
                try:
                    self._send(0xA, payload)
                except OSError as exc:
                    self._lost(str(exc) or type(exc).__name__)
            elif opcode == 0x8:  # close: echo it, and the socket is done
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close(self.close_code if self.close_code not in (1005, 1006) else 1000)
                raise WebSocketClosed(self.close_code)
            elif opcode in (0x0, 0x1, 0x2):  # continuation, text, binary (pong and others: nothing to do)
                if opcode != 0:
                    self._kind, self._parts = opcode, []
                self._parts.append(payload)
                if sum(len(p) for p in self._parts) > MAX_MESSAGE_BYTES:
                    self._protocol_error("message too big")
                if fin:
                    data, kind = b"".join(self._parts), self._kind
                    self._parts = []
                    if kind == 0x1:
                        return data.decode("utf-8", "replace")
        return None

    def _take_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self.conn.buf
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70 or second & 0x80:  # reserved bits (no extension agreed), or a masked server frame
            self._protocol_error("bad frame header")
        length, pos = second & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, pos = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, pos = int.from_bytes(buf[2:10], "big"), 10
        if length > MAX_MESSAGE_BYTES:
            self._protocol_error("frame too big")
        if len(buf) < pos + length:
            return None
        payload = bytes(buf[pos : pos + length])
        del buf[: pos + length]
        return bool(first & 0x80), first & 0x0F, payload

    def _protocol_error(self, reason: str) -> None:
        self.close(1002)
        raise WebSocketClosed(1002, f"websocket protocol error: {reason}")

    def _send(self, opcode: int, payload: bytes) -> None:
        """A masked control frame (the only frames this client sends: pong and close)."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload[:125]))
        frame = bytes([0x80 | opcode, 0x80 | len(masked)]) + mask + masked
        self.conn.sock.settimeout(5.0)
        self.conn.sock.sendall(frame)


def _error(status: int, doc: object, fallback: str) -> ApiError:
    """The server's JSON error (`{"error": {"code", "message"}}`), or a generic one."""
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return ApiError(status, str(err.get("code", "error")), str(err.get("message", "")))
    return ApiError(status, "http_error", fallback)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass
