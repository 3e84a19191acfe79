"""The blocking transport of the operator API client, on the standard library: `dvic run` and
`dvic-central node ...` use it.

`dvic run NODE -- CMD` is typed at a prompt, so the process's start-up is part of its round trip:
importing asyncio and aiohttp costs several times what the command itself takes
(docs/performance.md, "Remote control"). This transport speaks just what the operator API needs:
HTTP/1.1 with keep-alive (Content-Length or chunked bodies) and the client side of RFC 6455
websockets (unmasked frames in, masked control frames out, ping answered, close echoed).

    with SyncClient(settings) as api:
        nodes = api.send(calls.nodes(group="lab"))

Requests, answers, errors and the TLS policy are tui/api/core.py's and tui/api/tls.py's, as for the
aiohttp transport (tui/api/aio.py): the same `ApiError`, `Unreachable` and messages.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import ssl
import time
from types import TracebackType

from tui.api import tls
from tui.api.core import (
    CONNECT_S,
    ERROR_HEADER,
    SILENCE_S,
    TIMEOUT_S,
    Request,
    Upgrade,
    base_headers,
    decode,
    payload,
    refused,
    split_url,
    target,
)
from tui.api.errors import BadResponse, StreamClosed, Unreachable

try:
    # SHA-1 for the handshake check alone: the module hashlib falls back on, without hashlib's own
    # import (it loads OpenSSL's and BLAKE2's modules), a few milliseconds of every `dvic run`.
    from _sha1 import sha1
except ImportError:  # an interpreter built without it
    from hashlib import sha1

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TypeVar

    from tui.api.config import Settings

    R = TypeVar("R")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
MAX_HEAD_BYTES = 64 * 1024
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


class SyncClient:
    """Requests to one server's operator API. Use as `with SyncClient(settings) as api: ...`.

    The settings must pass the TLS policy (tui/api/tls.py): a ConfigError says why not."""

    def __init__(self, settings: Settings, timeout: float = TIMEOUT_S) -> None:
        self.base = settings.server.rstrip("/")
        self.tls = tls.context(settings.server, settings.ca, settings.ca_pem)
        _, netloc, hostname, port = split_url(self.base)
        assert hostname  # tls.context refuses a URL without one
        self.host = hostname
        # As bytes: a str host name goes through the "idna" codec (socket and ssl both), whose import
        # (encodings.idna, stringprep, unicodedata) costs more than the TLS handshake to a local server.
        self.host_bytes = hostname.encode("ascii" if hostname.isascii() else "idna")
        self.port = port or (443 if self.tls is not None else 80)
        self.timeout = timeout
        self.fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in base_headers(settings.token).items())
        self.fixed_headers = f"Host: {netloc}\r\n{self.fixed_headers}"
        self.idle: list[Connection] = []

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    # -- requests --------------------------------------------------------------------------------
    def send(self, req: Request[R]) -> R:
        """The decoded answer; `ApiError` / `Unreachable` as tui/api/aio.py's `send` raises them."""
        data, content_type = payload(req)
        extra = f"Content-Type: {content_type}\r\n" if content_type else ""
        resp = self.exchange(req.method, req.path, req.params, extra, data or b"")
        return decode(req, resp.status, resp.body, resp.headers.get(ERROR_HEADER.lower(), ""))

    def exchange(self, method: str, path: str, params: Mapping[str, str] | None = None, extra: str = "",
                 data: bytes = b"", upgrade: bool = False) -> Response:
        """One request (`extra`: header lines) and its whole answer (only the head when `upgrade` and
        the server switches).

        A keep-alive connection the server closed while it was idle fails before any byte of the
        answer: the request is then sent again on a new connection, once.
        """
        deadline = time.monotonic() + self.timeout
        head = (f"{method} {target(path, params)} HTTP/1.1\r\n{self.fixed_headers}{extra}"
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
                raise BadResponse(0, f"{method} {path}: unreadable answer ({exc})") from exc
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
            sock = socket.create_connection((self.host_bytes, self.port),  # type: ignore[arg-type]
                                            timeout=min(_left(deadline), CONNECT_S))
        except OSError as exc:
            raise Unreachable(f"cannot reach {self.base}: {exc or type(exc).__name__}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host_bytes)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise Unreachable(f"TLS verification of {self.base} failed against the pinned CA: {exc}", "tls") from exc
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
        fields: dict[str, str] = {}
        size = 0
        while line := conn.read_line(deadline):
            size += len(line)
            if size > MAX_HEAD_BYTES:
                raise ValueError("answer head too long")
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        if upgrade and status == 101:
            return Response(status, fields, b"", reusable=False)
        keep = version == "HTTP/1.1" and "close" not in fields.get("connection", "").lower()
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = self._read_chunked(conn, deadline)
        elif "content-length" in fields:
            body = conn.read_exact(int(fields["content-length"]), deadline)
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
        return Response(status, fields, body, keep)

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
    def websocket(self, up: Upgrade) -> WebSocket:
        """Opens the websocket `up` (tui/api/calls.py); a refused upgrade raises `ApiError` with the
        server's reason."""
        key = base64.b64encode(os.urandom(16)).decode()
        extra = (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n")
        resp = self.exchange("GET", up.path, up.params, extra, upgrade=True)
        if resp.status != 101:
            raise refused(up, resp.status, resp.body, resp.headers.get(ERROR_HEADER.lower(), ""))
        conn = resp.conn
        assert conn is not None
        if (resp.headers.get("sec-websocket-accept") != websocket_accept(key)
                or resp.headers.get("upgrade", "").lower() != "websocket"):
            conn.close()
            raise BadResponse(101, f"the server's answer to {up.what} is not a websocket handshake")
        return WebSocket(conn, up.max_size)


def websocket_accept(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to `key` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(sha1((key + WS_GUID).encode()).digest()).decode()


class WebSocket:
    """The client end of an upgraded connection: `receive()` text messages until it closes."""

    def __init__(self, conn: Connection, max_size: int) -> None:
        self.conn = conn
        self.max_size = max_size
        self.close_code: int | None = None
        self.closed = False
        self.last_frame = time.monotonic()
        self._parts: list[bytes] = []
        self._kind = 0  # opcode of the fragmented message being assembled

    def receive(self, timeout: float | None = None, wake_fd: int | None = None) -> str | None:
        """The next text message; None when `timeout` passed or `wake_fd` became readable (it is
        drained). Binary messages are skipped. Raises `StreamClosed` when the socket ends."""
        if self.closed:
            raise StreamClosed(self.close_code)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._next_message()
            if message is not None:
                return message
            if self.conn.pending():
                self._fill()
                continue
            silent_until = self.last_frame + SILENCE_S
            wait_until = silent_until if deadline is None else min(deadline, silent_until)
            left = wait_until - time.monotonic()
            if left <= 0:
                if deadline is not None and deadline <= silent_until:
                    return None
                self._lost(f"no frame from the server for {SILENCE_S:.0f} s")
            fds: list[socket.socket | int] = [self.conn.sock] if wake_fd is None else [self.conn.sock, wake_fd]
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
            self.conn.fill(time.monotonic() + SILENCE_S)
        except (OSError, _Closed) as exc:
            self._lost(str(exc) or type(exc).__name__)

    def _lost(self, reason: str) -> None:
        self.closed = True
        self.conn.close()
        raise StreamClosed(None, reason)

    def _next_message(self) -> str | None:
        """Handles the complete frames in the buffer; the first complete text message, if any."""
        while (frame := self._take_frame()) is not None:
            self.last_frame = time.monotonic()
            fin, opcode, content = frame
            if opcode == 0x9:  # ping
                try:
                    self._send(0xA, content)
                except OSError as exc:
                    self._lost(str(exc) or type(exc).__name__)
            elif opcode == 0x8:  # close: echo it, and the socket is done
                self.close_code = int.from_bytes(content[:2], "big") if len(content) >= 2 else 1005
                self.close(self.close_code if self.close_code not in (1005, 1006) else 1000)
                raise StreamClosed(self.close_code)
            elif opcode in (0x0, 0x1, 0x2):  # continuation, text, binary (pong and others: nothing to do)
                if opcode != 0:
                    self._kind, self._parts = opcode, []
                self._parts.append(content)
                if sum(len(p) for p in self._parts) > self.max_size:
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
        if length > self.max_size:
            self._protocol_error("frame too big")
        if len(buf) < pos + length:
            return None
        content = bytes(buf[pos : pos + length])
        del buf[: pos + length]
        return bool(first & 0x80), first & 0x0F, content

    def _protocol_error(self, reason: str) -> None:
        self.close(1002)
        raise StreamClosed(1002, f"websocket protocol error: {reason}")

    def _send(self, opcode: int, content: bytes) -> None:
        """A masked control frame (the only frames this client sends: pong and close)."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(content[:125]))
        frame = bytes([0x80 | opcode, 0x80 | len(masked)]) + mask + masked
        self.conn.sock.settimeout(5.0)
        self.conn.sock.sendall(frame)


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
