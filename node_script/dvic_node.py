#!/usr/bin/env python3
"""DVIC node daemon: reports this machine, its demos' logs and their liveness to the central server.

One file, Python >= 3.8 standard library only (psutil is used when importable). Run in the
foreground: ``python3 dvic_node.py --config /etc/dvic-node/bundle.json``. See docs/node-daemon.md.
"""

import argparse
import asyncio
import base64
import codecs
import collections
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import pwd
import re
import select
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
import urllib.parse
import zlib
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple, Union

try:  # optional: richer and cheaper metrics when present
    import psutil  # type: ignore
except ImportError:  # pragma: no cover - depends on the machine
    psutil = None

VERSION = "0.1.0"
PROTOCOL = 1
# Close codes the server ends this node's websocket with (dvic_core/constants.py holds the originals).
CLOSE_REVOKED = 4403
CLOSE_REPLACED = 4409
LOG = logging.getLogger("dvic-node")

KIB = 1024
MIB = 1024 * 1024
MAX_FRAME = 1 * MIB  # protocol: a frame from a node is at most 1 MiB
MAX_BATCH_LINES = 500  # protocol: a log batch has at most 500 lines
MAX_MSG_BYTES = 64 * KIB  # protocol: a log message is at most 64 KiB of UTF-8
BATCH_BYTES = 768 * KIB  # keeps a whole `logs` frame well under MAX_FRAME
LINE_BUFFER_MAX = 1 * MIB  # longer lines are cut while reading (never buffered whole)
DEFAULT_SPOOL_BYTES = 64 * MIB
INFLIGHT_MAX = 5000  # unacknowledged lines on the wire before the sender waits
PING_INTERVAL = 20.0
COALESCE_S = 0.25  # longest a partial `logs` batch waits for the ack of the one before (see Daemon._sender)
# Following demo files (see DemoWatcher.poll): with inotify a write wakes the daemon at once; these bound the rest
# after a read that found lines the next one waits a little, the longer the more lines it found (1 ms a line,
# 20-100 ms): a trickle is read at once, a flood in chunks (fewer, bigger spool writes and `logs` messages)
READ_GAP_S, READ_GAP_MAX_S, READ_GAP_PER_LINE_S = 0.02, 0.1, 0.001
QUIET_AFTER_S = 2.0  # polling: a file without new lines for this long is read only every IDLE_POLL_S
IDLE_POLL_S = 1.0
WATCHED_POLL_S = 5.0  # a file inotify watches is still read this often, in case an event never comes
WATCHED_SCAN_S = 10.0  # likewise, a watched log dir is listed this often (2 s when not watched)
# A demo's last_heartbeat (the ts of its latest record, docs/log-format.md "Heartbeats") goes to the server at once
# when it first changes, then at most this often while it keeps changing: liveness, not a line per record.
HEARTBEAT_REPORT_S = 2.0
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL", "CRIT": "CRITICAL", "ERR": "ERROR", "TRACE": "DEBUG"}
LOG_NAME_RE = re.compile(r"^dvic_log_[0-9a-f]{16}$")
# Demo files followed at once (see DemoWatcher.scan): per owner (the file's uid, per log dir) and in all. Any
# local user can create dvic_log_ names in /tmp; the per-owner bound keeps them from crowding out the files of
# other users' demos, and both bound the daemon's descriptors and what it announces to the server.
MAX_DEMO_FILES_PER_OWNER = 32
MAX_DEMO_FILES = 128
HEADER_PEEK_BYTES = 64 * 1024  # how much of a waiting file is read to find its header
WRITERS_CACHED = 20000  # headers of waiting files remembered (pid, pid_start), so a full scan reads none again
RESCAN_GAP_S = 0.5  # new dvic_log_ names seen by inotify are looked at no more often than this
# How the daemon is started (the systemd unit, the installer, a restart): `python3 -c LAUNCHER DAEMON ARGS`
# imports this file as the module dvic_node, so Python loads its compiled bytecode
# (__pycache__/dvic_node.cpython-3X.pyc, written by the installer and after a self-update) instead of
# compiling 4,000 lines at every start, which costs time and, on Python 3.11, ~10 MB of heap that stays.
# A stale or missing .pyc does no harm: the import then compiles the source. sys.argv and sys.path end up
# as for `python3 DAEMON ARGS` (the daemon's directory first, no current directory).
LAUNCHER = ("import os, sys; del sys.argv[0]; sys.path[:] = [os.path.dirname(sys.argv[0])] + "
            "[p for p in sys.path if p]; import dvic_node; sys.exit(dvic_node.main())")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def write_file_atomic(path: str, data: bytes, mode: int = 0o600, sync: bool = False) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new content (`sync`: also
    after a power cut, for files the node cannot do without, like the daemon itself)."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)  # a full disk or a failed rename must not leak the temp file
        raise
    if sync:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def compile_bytecode(path: str) -> str:
    """Write the .pyc the LAUNCHER's import loads for `path` (checked-hash: a later change of the file is
    noticed however quickly it comes); '' when done, else why not (the daemon then compiles its source)."""
    try:
        import py_compile  # rare (install, update, rollback): not worth its memory the rest of the time
    except ImportError as exc:  # pragma: no cover - a stripped Python
        return str(exc)
    try:
        py_compile.compile(path, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    except (OSError, py_compile.PyCompileError) as exc:
        return str(exc)
    return ""


def which(name: str) -> Optional[str]:
    """The executable `name` on $PATH, or None (shutil.which, without shutil's 0.2 MB of memory)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory, name)
        if directory and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def read_text(path: str, limit: int = 64 * KIB) -> Optional[str]:
    """The text of a small file, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def clip_utf8(text: str, limit: int) -> Tuple[str, bool]:
    """Cut `text` to at most `limit` bytes of UTF-8 without splitting a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def normalize_level(value: Any) -> str:
    if isinstance(value, str):
        up = value.strip().upper()
        if up in LEVELS:
            return up
        if up in LEVEL_ALIASES:
            return LEVEL_ALIASES[up]
    return "INFO"


def sane_ts(value: Any) -> float:
    """A record's timestamp if it is a plausible Unix time, else now (bad input never blocks a line)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if 0 < value < 1e11:
            return round(float(value), 3)
    return round(time.time(), 3)


# ---------------------------------------------------------------------------------------------
# RFC 6455 websocket client
# ---------------------------------------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)


class WebSocketError(Exception):
    """Any failure of the websocket connection."""


class HandshakeError(WebSocketError):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__("server refused the websocket upgrade: HTTP %d %s %s" % (status, reason, body.strip()))
        self.status = status
        self.reason = reason
        self.body = body


class WebSocketClosed(WebSocketError):
    """The connection is closed; `code` is the close code (1006 when it dropped without a close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__("websocket closed: %d %s" % (code, reason))
        self.code = code
        self.reason = reason


def mask_payload(data: bytes, mask: bytes) -> bytes:
    """XOR `data` with the 4-byte `mask` (one big-int operation: fast without C helpers)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: Optional[bytes] = None) -> bytes:
    """One client frame (clients must always mask, RFC 6455 section 5.3)."""
    if mask is None:
        mask = os.urandom(4)
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    return bytes(head) + mask + mask_payload(payload, mask)


def valid_close_code(code: int) -> bool:
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


class WebSocket:
    """A connected client websocket: send, receive, ping and close over an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_size: int = MAX_FRAME, fragment_size: int = 256 * KIB) -> None:
        self._reader = reader
        self._writer = writer
        self.max_size = max_size
        self.fragment_size = fragment_size
        self.close_code = None  # type: Optional[int]
        self.close_reason = ""
        self._close_sent = False
        self._reading = False
        self._write_lock = asyncio.Lock()
        self._closed = asyncio.get_running_loop().create_future()  # type: asyncio.Future
        self._pings = {}  # type: Dict[bytes, asyncio.Future]

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    async def send_text(self, text: str) -> None:
        await self._send_message(OP_TEXT, text.encode("utf-8"))

    async def send_bytes(self, data: bytes) -> None:
        await self._send_message(OP_BINARY, data)

    async def send_json(self, obj: Any) -> None:
        await self.send_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))

    async def _send_message(self, opcode: int, data: bytes) -> None:
        if self._close_sent or self.closed:
            raise WebSocketClosed(self.close_code or 1006, "connection is closing")
        async with self._write_lock:
            if len(data) <= self.fragment_size:
                self._writer.write(encode_frame(opcode, data))
            else:  # large messages go out in fragments so pings can interleave on the peer side
                chunks = [data[i:i + self.fragment_size] for i in range(0, len(data), self.fragment_size)]
                for i, chunk in enumerate(chunks):
                    self._writer.write(encode_frame(opcode if i == 0 else OP_CONT, chunk,
                                                    fin=(i == len(chunks) - 1)))
            await self._writer.drain()

    async def _send_control(self, opcode: int, payload: bytes) -> None:
        async with self._write_lock:
            self._writer.write(encode_frame(opcode, payload[:125]))
            await self._writer.drain()

    async def ping(self, timeout: float = 10.0) -> float:  # noqa: ASYNC109 - asyncio.timeout is 3.11+
        """Send a ping and wait for its pong (read by a concurrent recv()); returns the round trip."""
        payload = os.urandom(8)
        fut = asyncio.get_running_loop().create_future()
        self._pings[payload] = fut
        start = time.monotonic()
        try:
            await self._send_control(OP_PING, payload)
            await asyncio.wait_for(fut, timeout)
        finally:
            self._pings.pop(payload, None)
        return time.monotonic() - start

    async def recv(self) -> Any:
        """The next text (str) or binary (bytes) message; raises WebSocketClosed at the end."""
        if self.closed:
            raise WebSocketClosed(self.close_code or 1006, self.close_reason)
        self._reading = True
        try:
            return await self._recv_message()
        finally:
            self._reading = False

    async def _recv_message(self) -> Any:
        opcode = None  # type: Optional[int]
        parts = []  # type: List[bytes]
        total = 0
        while True:
            fin, op, payload = await self._read_frame()
            if op == OP_PING:
                if not self._close_sent:
                    await self._send_control(OP_PONG, payload)
                continue
            if op == OP_PONG:
                fut = self._pings.get(payload)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                continue
            if op == OP_CLOSE:
                await self._on_close_frame(payload)
                continue  # not reached: _on_close_frame raises
            if op == OP_CONT:
                if opcode is None:
                    await self._fail(1002, "continuation frame without a message")
            else:
                if opcode is not None:
                    await self._fail(1002, "new message inside a fragmented one")
                opcode = op
            total += len(payload)
            if total > self.max_size:
                await self._fail(1009, "message larger than %d bytes" % self.max_size)
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                if opcode == OP_BINARY:
                    return data
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    await self._fail(1007, "text message is not valid UTF-8")

    async def _read_frame(self) -> Tuple[bool, int, bytes]:
        try:
            b0, b1 = await self._reader.readexactly(2)
            if b0 & 0x70:
                await self._fail(1002, "reserved bits set (no extension was negotiated)")
            fin, op = bool(b0 & 0x80), b0 & 0x0F
            if op not in DATA_OPCODES and op not in CONTROL_OPCODES:
                await self._fail(1002, "unknown opcode %d" % op)
            if b1 & 0x80:
                await self._fail(1002, "server frames must not be masked")
            n = b1 & 0x7F
            if op in CONTROL_OPCODES and (n > 125 or not fin):
                await self._fail(1002, "bad control frame")
            if n == 126:
                n = struct.unpack("!H", await self._reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self._reader.readexactly(8))[0]
            if n > self.max_size:
                await self._fail(1009, "frame of %d bytes exceeds the limit of %d" % (n, self.max_size))
            payload = await self._reader.readexactly(n) if n else b""
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            detail = "peer closed the connection mid-frame" if isinstance(exc, asyncio.IncompleteReadError) \
                else "connection lost: %s" % exc
            self._abort(1006, detail)
            raise WebSocketClosed(1006, detail) from None
        return fin, op, payload

    async def _on_close_frame(self, payload: bytes) -> None:
        code, reason = 1005, ""
        if len(payload) == 1:
            await self._fail(1002, "close frame with a 1-byte payload")
        if len(payload) >= 2:
            code = struct.unpack("!H", payload[:2])[0]
            if not valid_close_code(code):
                await self._fail(1002, "invalid close code %d" % code)
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                await self._fail(1007, "close reason is not valid UTF-8")
        if not self._close_sent:
            self._close_sent = True
            try:  # echo the close (RFC 6455 5.5.1), then the server closes TCP
                await self._send_control(OP_CLOSE, payload[:2])
            except (ConnectionError, OSError):
                pass
        self._abort(code, reason)
        raise WebSocketClosed(code, reason)

    async def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: send a close frame with `code` (best effort), drop TCP, raise."""
        if not self._close_sent:
            self._close_sent = True
            try:
                await asyncio.wait_for(
                    self._send_control(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120]), 2)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
        self._abort(code, reason)
        raise WebSocketClosed(code, reason)

    def _abort(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if not self._closed.done():
            self._closed.set_result(None)
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(WebSocketClosed(code, reason))
        try:
            self._writer.close()
        except (OSError, RuntimeError):  # already closed or loop closing
            pass

    async def close(self, code: int = 1000, reason: str = "",
                    timeout: float = 5.0) -> None:  # noqa: ASYNC109 - asyncio.timeout is 3.11+
        """The closing handshake: send close, wait for the peer's close (bounded), drop TCP."""
        if self.closed:
            return
        if not self._close_sent:
            self._close_sent = True
            try:
                await self._send_control(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
            except (ConnectionError, OSError):
                self._abort(1006, "connection lost while closing")
                return
        try:
            if self._reading:  # the reader task will see the peer's close frame
                await asyncio.wait_for(asyncio.shield(self._closed), timeout)
            else:
                await asyncio.wait_for(self._drain_until_close(), timeout)
        except asyncio.TimeoutError:
            pass
        except WebSocketClosed:
            pass
        self._abort(code, reason)

    async def _drain_until_close(self) -> None:
        while True:
            _fin, op, payload = await self._read_frame()
            if op == OP_CLOSE:
                await self._on_close_frame(payload)


async def ws_connect(url: str, ssl_context: Optional[ssl.SSLContext] = None,
                     headers: Optional[Dict[str, str]] = None, max_size: int = MAX_FRAME,
                     timeout: float = 15.0) -> WebSocket:  # noqa: ASYNC109 - asyncio.timeout is 3.11+
    """Open a websocket to `url` (ws:// or wss://); raises HandshakeError, ssl.SSLError, OSError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("not a websocket URL: %r" % url)
    secure = parts.scheme == "wss"
    if secure and ssl_context is None:
        raise ValueError("wss:// needs an SSL context")
    port = parts.port or (443 if secure else 80)
    host = parts.hostname
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_context if secure else None,
                                server_hostname=host if secure else None, limit=64 * KIB), timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        host_header = "[%s]" % host if ":" in host else host
        if parts.port:
            host_header += ":%d" % parts.port
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        lines = ["GET %s HTTP/1.1" % path, "Host: %s" % host_header, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: %s" % key, "Sec-WebSocket-Version: 13",
                 "User-Agent: dvic-node/%s" % VERSION]
        for name, value in (headers or {}).items():
            lines.append("%s: %s" % (name, value))
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        try:
            status, reason, resp_headers = parse_http_head(head)
        except ValueError as exc:
            raise WebSocketError(str(exc)) from None
        if status != 101:
            body = b""
            length = int(resp_headers.get("content-length", "0") or 0)
            if 0 < length <= 64 * KIB:
                try:
                    body = await asyncio.wait_for(reader.readexactly(length), timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                    pass
            raise HandshakeError(status, reason, body.decode("utf-8", "replace"))
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if resp_headers.get("upgrade", "").lower() != "websocket" or \
                "upgrade" not in resp_headers.get("connection", "").lower():
            raise WebSocketError("server did not upgrade to websocket")
        if resp_headers.get("sec-websocket-accept") != expected:
            raise WebSocketError("bad Sec-WebSocket-Accept from server")
        if resp_headers.get("sec-websocket-extensions"):
            raise WebSocketError("server negotiated an extension the client did not offer")
        return WebSocket(reader, writer, max_size=max_size)
    except BaseException:
        writer.close()
        raise


def parse_http_head(head: bytes) -> Tuple[int, str, Dict[str, str]]:
    """Status, reason and lower-cased headers of an HTTP/1.1 response head."""
    text = head.decode("latin-1")
    first, _, rest = text.partition("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)$", first)
    if not m:
        raise ValueError("not an HTTP response: %r" % first[:80])
    headers = {}  # type: Dict[str, str]
    for line in rest.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(m.group(1)), m.group(2), headers


# ---------------------------------------------------------------------------------------------
# Enrollment bundle and TLS
# ---------------------------------------------------------------------------------------------

class BundleError(Exception):
    """The enrollment bundle is missing, unreadable or malformed."""


BUNDLE_STRINGS = ("node_id", "ws_url", "ca_pem", "cert_pem", "key_pem", "token")


def load_bundle(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(4 * MIB)
    except OSError as exc:
        raise BundleError("cannot read bundle %s: %s" % (path, exc.strerror or exc)) from None
    try:
        bundle = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError("bundle %s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(bundle, dict):
        raise BundleError("bundle %s is not a JSON object" % path)
    for name in BUNDLE_STRINGS:
        if not isinstance(bundle.get(name), str) or not bundle[name]:
            raise BundleError("bundle %s: field %r is missing or not a string" % (path, name))
    if not bundle["ws_url"].startswith(("wss://", "ws://")):
        raise BundleError("bundle %s: ws_url must start with wss:// or ws://" % path)
    interval = bundle.get("interval", 5)
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not 0.1 <= interval <= 3600:
        raise BundleError("bundle %s: interval must be a number of seconds in [0.1, 3600]" % path)
    return bundle


def make_ssl_context(bundle: Dict[str, Any], tls_dir: str) -> ssl.SSLContext:
    """Trust only the bundle's CA and present the node's certificate (files written 0600)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cadata=bundle["ca_pem"])
    except (ssl.SSLError, ValueError) as exc:
        raise BundleError("bundle ca_pem is not a valid certificate: %s" % exc) from None
    os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    cert_path = os.path.join(tls_dir, "node.crt")
    key_path = os.path.join(tls_dir, "node.key")
    write_file_atomic(cert_path, bundle["cert_pem"].encode(), 0o600)
    write_file_atomic(key_path, bundle["key_pem"].encode(), 0o600)
    try:  # load_cert_chain only takes files, hence the copies above
        ctx.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, ValueError) as exc:
        raise BundleError("bundle cert_pem/key_pem are not a valid certificate and key: %s" % exc) from None
    return ctx


def error_code(body: Union[str, bytes]) -> str:
    """The `error.code` of a server's JSON error body ("" when it is not one)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    err = doc.get("error") if isinstance(doc, dict) else None
    return str(err.get("code") or "") if isinstance(err, dict) else ""


def is_revocation(exc: BaseException) -> bool:
    """Whether the server said this node is revoked: HTTP 403 `revoked` on connect, or close 4403."""
    if isinstance(exc, WebSocketClosed):
        return exc.code == CLOSE_REVOKED
    return isinstance(exc, HandshakeError) and exc.status == 403 and error_code(exc.body) == "revoked"


def describe_connect_error(exc: BaseException) -> str:
    """A sentence an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS: the server's certificate is not trusted by the bundle's CA or does not match " \
               "the server name (%s)" % (exc.verify_message or exc)
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed (%s); is the node certificate revoked or from another server?" % exc
    if isinstance(exc, WebSocketClosed):
        return "the connection ended (close code %d%s)" % (exc.code, ": " + exc.reason if exc.reason else "")
    if isinstance(exc, WebSocketError):  # HandshakeError included: its text has the status and body
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out connecting to the server"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by the server"
    return "%s: %s" % (type(exc).__name__, exc)


# ---------------------------------------------------------------------------------------------
# Machine facts and metrics (psutil when present, else /proc and /sys)
# ---------------------------------------------------------------------------------------------

PSEUDO_FS = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "securityfs", "pstore",
             "debugfs", "tracefs", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "binfmt_misc",
             "bpf", "rpc_pipefs", "nsfs", "ramfs", "efivarfs", "squashfs", "overlay", "fuse.lxcfs",
             "fuse.gvfsd-fuse", "fuse.portal", "nfsd", "selinuxfs"}


def proc_boot_time() -> Optional[float]:
    text = read_text("/proc/stat") or ""
    m = re.search(r"^btime (\d+)", text, re.M)
    return float(m.group(1)) if m else None


def machine_model() -> str:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = read_text(path)
        if text:
            return text.strip("\x00\n ")
    vendor = (read_text("/sys/class/dmi/id/sys_vendor") or "").strip()
    product = (read_text("/sys/class/dmi/id/product_name") or "").strip()
    return (vendor + " " + product).strip()


def os_pretty_name() -> str:
    text = read_text("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else os.uname().sysname


def ip_and_mac_addresses() -> Tuple[List[str], List[str]]:
    ips, macs = [], []  # type: List[str], List[str]
    if psutil is not None:
        for name, addrs in psutil.net_if_addrs().items():
            if name == "lo":
                continue
            for a in addrs:
                if a.family == socket.AF_INET or a.family == socket.AF_INET6:
                    ips.append(a.address.split("%")[0])
                elif a.family == getattr(psutil, "AF_LINK", None) and a.address:
                    macs.append(a.address.lower())
    else:
        try:
            names = sorted(os.listdir("/sys/class/net"))
        except OSError:
            names = []
        for name in names:
            mac = (read_text("/sys/class/net/%s/address" % name) or "").strip()
            if name != "lo" and mac and mac != "00:00:00:00:00:00":
                macs.append(mac.lower())
        ips.extend(ipv4_addresses())
        for line in (read_text("/proc/net/if_inet6") or "").splitlines():
            fields = line.split()
            if len(fields) == 6 and fields[5] != "lo":
                h = fields[0]
                ips.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(h)))
    return sorted(set(ips))[:64], sorted(set(m for m in macs if m != "00:00:00:00:00:00"))[:64]


def ipv4_addresses() -> List[str]:
    """IPv4 addresses of the interfaces without psutil: the SIOCGIFADDR ioctl per interface."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux
        return []
    out = []
    try:
        names = [n for _i, n in socket.if_nameindex() if n != "lo"]
    except OSError:
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                out.append(socket.inet_ntoa(res[20:24]))
            except OSError:
                continue
    return out


def collect_facts() -> Dict[str, Any]:
    ips, macs = ip_and_mac_addresses()
    uname = os.uname()  # not the platform module: 0.14 MB of memory for these three strings
    facts = {"hostname": socket.gethostname(), "os": os_pretty_name(), "kernel": uname.release,
             "arch": uname.machine, "model": machine_model(), "ips": ips, "macs": macs,
             "python": sys.version.split()[0], "daemon_version": VERSION,
             "psutil": psutil.__version__ if psutil is not None else ""}  # type: Dict[str, Any]
    bt = psutil.boot_time() if psutil is not None else proc_boot_time()
    override = os.environ.get("DVIC_NODE_TEST_BOOT_TIME")  # test-only: simulates a reboot (docs/node-daemon.md)
    if override:
        try:
            bt = float(override)
        except ValueError:
            pass
    if bt:
        facts["boot_time"] = float(bt)
    for key, value in list(facts.items()):  # protocol bound: strings at most 256 characters
        if isinstance(value, str):
            facts[key] = value[:256]
    return facts


def vcgencmd(*args: str) -> Optional[str]:
    """Output of the Raspberry Pi firmware tool, or None when absent or failing."""
    exe = which("vcgencmd")
    if not exe:
        return None
    import subprocess
    try:
        out = subprocess.run([exe] + list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace").strip() if out.returncode == 0 else None


class MetricsCollector:
    """One `metrics` message per call to collect(); CPU percentages are over the time since the last call."""

    def __init__(self, use_psutil: bool = True) -> None:
        self.use_psutil = use_psutil and psutil is not None
        self._prev_cpu = None  # type: Optional[List[Tuple[int, int]]]
        self._has_vcgencmd = which("vcgencmd") is not None
        if self.use_psutil:
            psutil.cpu_percent(percpu=True)  # primes psutil's own delta
        else:
            self._prev_cpu = self._proc_cpu_times()

    def collect(self) -> Dict[str, Any]:
        msg = {"type": "metrics", "ts": round(time.time(), 3)}  # type: Dict[str, Any]
        parts = (("cpu", self._cpu), ("load", self._load), ("mem", self._mem), ("swap", self._swap),
                 ("disks", self._disks), ("temps", self._temps), ("uptime", self._uptime),
                 ("procs", self._procs), ("net", self._net))
        for name, fn in parts:
            try:  # a node reports what it can: one failing source never hides the others
                value = fn()
            except Exception as exc:  # noqa: BLE001 - any odd /proc content
                LOG.debug("metrics: %s unavailable: %s", name, exc)
                continue
            if value is not None:
                msg[name] = value
        if self._has_vcgencmd:
            throttled = vcgencmd("get_throttled")
            if throttled and "=" in throttled:
                msg["throttled"] = throttled.split("=", 1)[1]
        return msg

    @staticmethod
    def _proc_cpu_times() -> List[Tuple[int, int]]:
        """(busy, total) jiffies for the whole machine first, then per core."""
        out = []
        for line in (read_text("/proc/stat") or "").splitlines():
            if not line.startswith("cpu"):
                continue
            vals = [int(v) for v in line.split()[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            total = sum(vals[:8])  # guest times are already counted in user/nice
            out.append((total - idle, total))
        return out

    def _cpu(self) -> Dict[str, Any]:
        if self.use_psutil:
            per = [round(float(v), 1) for v in psutil.cpu_percent(percpu=True)]
            return {"total": round(sum(per) / len(per), 1) if per else 0.0, "per_core": per}
        now = self._proc_cpu_times()
        prev, self._prev_cpu = self._prev_cpu or now, now
        pct = []
        for (b0, t0), (b1, t1) in zip(prev, now):  # noqa: B905 - zip(strict=) is 3.10+
            dt = t1 - t0
            pct.append(round(100.0 * (b1 - b0) / dt, 1) if dt > 0 else 0.0)
        return {"total": pct[0] if pct else 0.0, "per_core": pct[1:]}

    @staticmethod
    def _load() -> List[float]:
        return [round(v, 2) for v in os.getloadavg()]

    @staticmethod
    def _meminfo() -> Dict[str, int]:
        out = {}
        for line in (read_text("/proc/meminfo") or "").splitlines():
            name, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[name] = int(fields[0]) * 1024
        return out

    def _mem(self) -> Dict[str, Any]:
        if self.use_psutil:
            vm = psutil.virtual_memory()
            return {"total": vm.total, "available": vm.available, "percent": round(vm.percent, 1)}
        info = self._meminfo()
        total = info["MemTotal"]
        avail = info.get("MemAvailable", info.get("MemFree", 0) + info.get("Cached", 0))
        return {"total": total, "available": avail,
                "percent": round(100.0 * (total - avail) / total, 1) if total else 0.0}

    def _swap(self) -> Dict[str, Any]:
        if self.use_psutil:
            sw = psutil.swap_memory()
            return {"total": sw.total, "used": sw.used, "percent": round(sw.percent, 1)}
        info = self._meminfo()
        total = info.get("SwapTotal", 0)
        used = total - info.get("SwapFree", 0)
        return {"total": total, "used": used, "percent": round(100.0 * used / total, 1) if total else 0.0}

    def _disks(self) -> List[Dict[str, Any]]:
        mounts = []  # type: List[Tuple[str, str, str]]
        if self.use_psutil:
            mounts = [(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=False)]
        else:
            for line in (read_text("/proc/mounts", 1 * MIB) or "").splitlines():
                f = line.split()
                if len(f) >= 3:
                    mounts.append((f[0], f[1].replace("\\040", " "), f[2]))
        out, seen = [], set()
        for device, mount, fstype in mounts:
            if fstype in PSEUDO_FS or device in seen:
                continue
            try:
                st = os.statvfs(mount)
            except OSError:
                continue
            total = st.f_blocks * st.f_frsize
            if total <= 0:
                continue
            seen.add(device)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            avail = st.f_bavail * st.f_frsize
            pct = 100.0 * used / (used + avail) if used + avail else 0.0
            out.append({"mount": mount, "total": total, "used": used, "percent": round(pct, 1)})
        return out[:64]

    def _temps(self) -> List[Dict[str, Any]]:
        out = []  # type: List[Dict[str, Any]]
        if self.use_psutil and hasattr(psutil, "sensors_temperatures"):
            for chip, entries in psutil.sensors_temperatures().items():
                for e in entries:
                    out.append({"name": (chip + ("/" + e.label if e.label else ""))[:64],
                                "celsius": round(float(e.current), 1)})
        else:
            base = "/sys/class/thermal"
            try:
                zones = sorted(z for z in os.listdir(base) if z.startswith("thermal_zone"))
            except OSError:
                zones = []
            for zone in zones:
                raw = (read_text(os.path.join(base, zone, "temp")) or "").strip()
                if raw.lstrip("-").isdigit():
                    name = (read_text(os.path.join(base, zone, "type")) or zone).strip()
                    out.append({"name": name[:64], "celsius": round(int(raw) / 1000.0, 1)})
        if self._has_vcgencmd:
            text = vcgencmd("measure_temp") or ""
            m = re.search(r"temp=([-\d.]+)", text)
            if m:
                out.append({"name": "vcgencmd", "celsius": float(m.group(1))})
        return out[:64]

    @staticmethod
    def _uptime() -> float:
        if psutil is not None:
            return round(time.time() - psutil.boot_time(), 1)
        return round(float((read_text("/proc/uptime") or "0").split()[0]), 1)

    def _procs(self) -> int:
        if self.use_psutil:
            return len(psutil.pids())
        return sum(1 for d in os.listdir("/proc") if d.isdigit())

    def _net(self) -> Dict[str, int]:
        rx = tx = 0
        if self.use_psutil:
            for name, c in psutil.net_io_counters(pernic=True).items():
                if name != "lo":
                    rx += c.bytes_recv
                    tx += c.bytes_sent
            return {"rx_bytes": rx, "tx_bytes": tx}
        for line in (read_text("/proc/net/dev") or "").splitlines()[2:]:
            name, _, rest = line.partition(":")
            f = rest.split()
            if name.strip() != "lo" and len(f) >= 9:
                rx += int(f[0])
                tx += int(f[8])
        return {"rx_bytes": rx, "tx_bytes": tx}


# ---------------------------------------------------------------------------------------------
# Spool: bounded on-disk queue of unacknowledged log lines, with the read positions they came from
# ---------------------------------------------------------------------------------------------

SOURCES = ("demo", "system", "daemon")


def wire_line(rec: Dict[str, Any]) -> Dict[str, Any]:
    """A spooled record as a protocol `logs` line; anything odd is normalised, never a poison line that
    the server would refuse on every reconnect."""
    source = rec.get("source") if rec.get("source") in SOURCES else "daemon"
    msg = rec.get("msg")
    msg, cut = clip_utf8(msg if isinstance(msg, str) else json.dumps(msg, ensure_ascii=False), MAX_MSG_BYTES)
    out = {"seq": int(rec["seq"]), "ts": sane_ts(rec.get("ts")), "source": source,
           "unit": str(rec.get("unit") or "")[:256], "level": normalize_level(rec.get("level")), "msg": msg,
           "truncated": bool(rec.get("truncated")) or cut}  # type: Dict[str, Any]
    if source == "demo":
        out["demo"] = str(rec.get("demo") or "")[:64]
    return out


class Segment:
    """Bounds of one spool file, kept in memory so reads and acks need not open it."""

    __slots__ = ("path", "first_seq", "last_seq", "size", "lines")

    def __init__(self, path: str, first_seq: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.last_seq = first_seq - 1
        self.size = 0
        self.lines = 0


class Spool:
    """At-least-once buffer: every shipped line gets the next seq and is kept here until acknowledged.

    Layout (in `directory`): `seg-<first seq, 20 digits>.jsonl` files, one JSON line per log line,
    and `state.json` with next_seq, acked and the read positions as of `pos_seq`. A spooled line
    may carry `_p`: the positions after it; replaying those on start makes positions exact even
    after kill -9 (a line is either in the spool with its position, or not read yet).
    """

    def __init__(self, directory: str, max_bytes: int = DEFAULT_SPOOL_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max(max_bytes, 16 * KIB)
        self.segment_bytes = max(4 * KIB, min(1 * MIB, self.max_bytes // 8))
        self.state_path = os.path.join(directory, "state.json")
        self.next_seq = 1
        self.acked = 0
        self.positions = {}  # type: Dict[str, Any]
        self.extra = {}  # type: Dict[str, Any]  # other persisted daemon state (demo states, gaps)
        self.gaps = []  # type: List[Dict[str, int]]
        self.on_append = None  # type: Optional[Callable[[], None]]
        self._segments = []  # type: List[Segment]
        self._fd = None  # type: Optional[int]
        self._read_cache = None  # type: Optional[Tuple[int, int, int]]
        self._dirty = False

    # -- lifecycle --
    def open(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        state = self._load_state()
        self.next_seq = max(1, int(state.get("next_seq", 1)))
        self.acked = max(0, int(state.get("acked", 0)))
        self.positions = dict(state.get("positions") or {})
        self.extra = dict(state.get("extra") or {})
        self.gaps = list(state.get("gaps") or [])
        pos_seq = int(state.get("pos_seq", 0))
        names = sorted(n for n in os.listdir(self.directory) if re.match(r"^seg-\d{20}\.jsonl$", n))
        for name in names:
            seg = self._scan_segment(os.path.join(self.directory, name), pos_seq)
            if seg is None:
                continue
            if seg.lines == 0 or seg.last_seq <= self.acked:
                os.unlink(seg.path)
                continue
            self._segments.append(seg)
            self.next_seq = max(self.next_seq, seg.last_seq + 1)

    def _load_state(self) -> Dict[str, Any]:
        try:
            with open(self.state_path, "rb") as f:
                state = json.loads(f.read().decode("utf-8"))
            if isinstance(state, dict):
                return state
            LOG.warning("spool state %s is not a JSON object; starting from the spool files", self.state_path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            LOG.warning("spool state %s unreadable (%s); starting from the spool files", self.state_path, exc)
        return {}

    def _scan_segment(self, path: str, pos_seq: int) -> Optional[Segment]:
        """Rebuild a segment's bounds; cut a torn last line; replay positions newer than pos_seq."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            LOG.warning("spool segment %s unreadable: %s", path, exc)
            return None
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a crash mid-write (power loss) leaves a partial line: cut it
            LOG.warning("spool segment %s: cutting a torn last line (%d bytes)", path, len(data) - end)
            os.truncate(path, end)
            data = data[:end]
        seg = Segment(path, int(os.path.basename(path)[4:24]))
        seg.size = len(data)
        raws = data.splitlines()
        seg.lines = len(raws)
        first = True
        for i, raw in enumerate(raws):
            if 0 < i < len(raws) - 1 and b'"_p"' not in raw:
                continue  # only the first and last lines' seq matter, and lines with positions
            try:
                rec = json.loads(raw.decode("utf-8"))
                seq = int(rec["seq"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                continue
            if first:
                seg.first_seq, first = seq, False
            seg.last_seq = max(seg.last_seq, seq)
            if seq > pos_seq and isinstance(rec.get("_p"), dict):
                self.positions.update(rec["_p"])
        return seg

    def close(self) -> None:
        self.checkpoint(force=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- state --
    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def pending(self) -> int:
        return sum(s.lines for s in self._segments if s.last_seq > self.acked)

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    def set_position(self, key: str, value: Any) -> None:
        if value is None:
            self.positions.pop(key, None)
        else:
            self.positions[key] = value
        self._dirty = True

    def set_extra(self, key: str, value: Any) -> None:
        self.extra[key] = value
        self._dirty = True

    def raise_seq(self, seq: int) -> None:
        """Never reuse a seq the server already stored (e.g. after the state dir was lost)."""
        if seq >= self.next_seq:
            self.next_seq = seq + 1
            self._dirty = True

    def checkpoint(self, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        state = {"version": 1, "next_seq": self.next_seq, "acked": self.acked, "pos_seq": self.last_seq,
                 "positions": self.positions, "extra": self.extra, "gaps": self.gaps}
        write_file_atomic(self.state_path, json.dumps(state, separators=(",", ":")).encode())
        self._dirty = False

    # -- writing --
    def append(self, lines: List[Dict[str, Any]], positions: Optional[Dict[str, Any]] = None) -> int:
        """Spool `lines` (each gets its seq) and, atomically with them, the new read `positions`.

        Raises OSError (e.g. ENOSPC) with nothing written: the caller keeps its old position.
        """
        if not lines:
            if positions:
                for k, v in positions.items():
                    self.set_position(k, v)
            return self.last_seq
        seg = self._writable_segment()
        seq = self.next_seq
        chunks = []
        for i, line in enumerate(lines):
            rec = dict(line)
            rec["seq"] = seq + i
            if positions and i == len(lines) - 1:
                rec["_p"] = positions
            chunks.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
        data = ("\n".join(chunks) + "\n").encode("utf-8", "surrogatepass")
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            os.ftruncate(self._fd, seg.size)  # never leave a torn line behind
            raise
        seg.size += len(data)
        seg.lines += len(lines)
        seg.last_seq = seq + len(lines) - 1
        self.next_seq = seq + len(lines)
        if positions:
            self.positions.update(positions)
        self._enforce_cap()
        if self.on_append is not None:
            self.on_append()
        return self.last_seq

    def _writable_segment(self) -> Segment:
        seg = self._segments[-1] if self._segments else None
        if seg is not None and seg.size < self.segment_bytes:
            if self._fd is None:
                self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            return seg
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = os.path.join(self.directory, "seg-%020d.jsonl" % self.next_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        seg = Segment(path, self.next_seq)
        self._segments.append(seg)
        return seg

    def _enforce_cap(self) -> None:
        while self.size > self.max_bytes and len(self._segments) > 1:
            self._drop_segment(self._segments[0])

    def _drop_segment(self, seg: Segment) -> None:
        """Drop the oldest segment because the spool is full: count and record the lost lines."""
        dropped, first, last = 0, 0, 0
        for rec in self._iter_segment(seg, 0):
            if rec[1]["seq"] > self.acked:
                dropped += 1
                first = first or rec[1]["seq"]
                last = rec[1]["seq"]
        self._segments.remove(seg)
        self.checkpoint(force=True)  # positions must cover everything before its lines vanish
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        if dropped:
            self.gaps.append({"dropped": dropped, "first_seq": first, "last_seq": last})
            del self.gaps[:-100]
            self._dirty = True
            LOG.warning("spool full (%d bytes): dropped %d unacknowledged lines (seq %d..%d)",
                        self.max_bytes, dropped, first, last)

    # -- reading and acknowledging --
    def ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        self.acked = seq
        self._dirty = True
        done = [s for s in self._segments[:-1] if s.last_seq <= self.acked]
        if done:
            self.checkpoint(force=True)
            for seg in done:
                self._segments.remove(seg)
                try:
                    os.unlink(seg.path)
                except FileNotFoundError:
                    pass

    def _iter_segment(self, seg: Segment, offset: int) -> Iterator[Tuple[int, Dict[str, Any], int]]:
        """(offset after the line, record, line length) from `offset` on; unparsable lines skipped."""
        try:
            f = open(seg.path, "rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(offset)
            pos = offset
            for raw in f:
                pos += len(raw)
                try:
                    rec = json.loads(raw.decode("utf-8"))
                    int(rec["seq"])
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    LOG.warning("spool segment %s: skipping an unreadable line at byte %d", seg.path,
                                pos - len(raw))
                    continue
                yield pos, rec, len(raw)

    def read(self, from_seq: int, max_lines: int = MAX_BATCH_LINES,
             max_bytes: int = BATCH_BYTES) -> List[Dict[str, Any]]:
        """Spooled lines with seq >= from_seq, in order, as wire dicts (internal keys removed)."""
        out = []  # type: List[Dict[str, Any]]
        size = 0
        for seg in list(self._segments):
            if seg.last_seq < from_seq:
                continue
            offset = 0
            cache = self._read_cache
            if cache is not None and cache[0] == seg.first_seq and cache[2] == from_seq:
                offset = cache[1]  # sequential reads continue where the last batch stopped
            prev_pos = offset
            for pos, rec, length in self._iter_segment(seg, offset):
                if rec["seq"] < from_seq:
                    prev_pos = pos
                    continue
                if out and (len(out) >= max_lines or size + length > max_bytes):
                    self._read_cache = (seg.first_seq, prev_pos, out[-1]["seq"] + 1)
                    return out
                out.append(wire_line(rec))
                size += length
                prev_pos = pos
            if out:
                self._read_cache = (seg.first_seq, prev_pos, out[-1]["seq"] + 1)
        return out

    def pop_gaps(self) -> List[Dict[str, int]]:
        """Dropped ranges not yet reported; adjacent ones merged (one event per outage, not per segment)."""
        gaps, self.gaps = self.gaps, []
        merged = []  # type: List[Dict[str, int]]
        for g in gaps:
            if merged and g["first_seq"] == merged[-1]["last_seq"] + 1:
                merged[-1] = {"dropped": merged[-1]["dropped"] + g["dropped"],
                              "first_seq": merged[-1]["first_seq"], "last_seq": g["last_seq"]}
            else:
                merged.append(dict(g))
        if gaps:
            self._dirty = True
        return merged


# ---------------------------------------------------------------------------------------------
# Following files: growth, truncation, rotation, deletion
# ---------------------------------------------------------------------------------------------

def first_line_crc(fd: int) -> Optional[int]:
    """CRC-32 of a file's first line (None while it has no complete first line within 4 KiB)."""
    data = os.pread(fd, 4 * KIB, 0)
    nl = data.find(b"\n")
    return zlib.crc32(data[:nl]) if nl >= 0 else None


class Line:
    """One line read from a followed file."""

    __slots__ = ("start", "end", "data", "overlong")

    def __init__(self, start: int, end: int, data: bytes, overlong: bool) -> None:
        self.start = start  # byte offset of the line in its file
        self.end = end  # offset just after its newline: the position to persist
        self.data = data  # without the newline; at most LINE_BUFFER_MAX bytes
        self.overlong = overlong


class FileFollower:
    """Complete lines of one path, following growth, truncation, rotation (inode change) and deletion.

    Opens with O_NOFOLLOW and refuses anything but a regular file with one link, so a symlink
    or hard link planted in /tmp cannot make the daemon read (and ship) another file.
    """

    def __init__(self, path: str, rotated_suffix: Optional[str] = ".1") -> None:
        self.path = path
        self.rotated_suffix = rotated_suffix
        self.fd = None  # type: Optional[int]
        self.ino = 0
        self.dev = 0
        self.off = 0  # next byte to read
        self.gone = False  # path deleted and old descriptor drained
        self.events = []  # type: List[str]  # notable happenings for the owner to report
        self._buf = bytearray()
        self._buf_start = 0
        self._overlong = False
        self._last_start = 0
        self._switch_pending = False  # rotated: open the new file at the next call, not mid-batch
        self.more = False  # the last call left work for the next one at once (a full budget, a switch)
        self.head = None  # type: Optional[int]

    def position(self) -> Dict[str, int]:
        """Where to resume: just after the last complete line handed out (follows a switch of file).

        `h` (a CRC of the first line) tells this file from a later one that got the same inode number.
        """
        if self.head is None and self.fd is not None:
            self.head = first_line_crc(self.fd)
        pos = {"ino": self.ino, "dev": self.dev, "off": self._buf_start}
        if self.head is not None:
            pos["h"] = self.head
        return pos

    def _same_file(self, path: str, saved: Dict[str, Any]) -> bool:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if saved.get("ino") != st.st_ino or saved.get("dev", st.st_dev) != st.st_dev:
            return False
        if saved.get("h") is None:
            return True
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return True  # let the real open report the problem
        try:
            head = first_line_crc(fd)
        finally:
            os.close(fd)
        return head is None or head == saved.get("h")

    def open(self, saved: Optional[Dict[str, Any]] = None, at_end: bool = False) -> None:
        """Open the path (raises OSError); resume from `saved` when it still names this file or its .1."""
        os.lstat(self.path)  # FileNotFoundError before anything else
        if saved and self._same_file(self.path, saved):
            self._open_fd(self.path, int(saved.get("off", 0)))
            return
        if saved and self.rotated_suffix and self._same_file(self.path + self.rotated_suffix, saved):
            # rotated while we were away: drain the rest of the old file first
            self._open_fd(self.path + self.rotated_suffix, int(saved.get("off", 0)))
            return
        if saved:
            self.events.append("the file was replaced while the daemon was not running; "
                               "reading the new file from its start")
        self._open_fd(self.path, 0)
        if at_end:
            self.off = os.fstat(self.fd).st_size if self.fd is not None else 0

    def _open_fd(self, path: str, off: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if st.st_nlink > 1 and not self._rotation_link(path, st):
                raise OSError(errno.EPERM, "refusing a file with %d hard links" % st.st_nlink, path)
        except BaseException:
            os.close(fd)
            raise
        self.close()
        self.fd, self.ino, self.dev = fd, st.st_ino, st.st_dev
        self.head = first_line_crc(fd)
        self.off = off
        if off > st.st_size:
            self.events.append("saved position beyond the end of the file; it was truncated")
            self.off = 0
        self._buf = bytearray()
        self._buf_start = self.off
        self._overlong = False

    def _rotation_link(self, path: str, st: os.stat_result) -> bool:
        """A dvic_log rotation briefly gives the full file a second name, `<path>.1`: that link is fine."""
        if st.st_nlink != 2 or not self.rotated_suffix:
            return False
        other = path[:-len(self.rotated_suffix)] if path.endswith(self.rotated_suffix) \
            else path + self.rotated_suffix
        try:
            ost = os.lstat(other)
        except OSError:
            return False
        return ost.st_ino == st.st_ino and ost.st_dev == st.st_dev

    def _open_skipped_previous(self) -> bool:
        """Catch-up (docs/log-format.md, reader step 4): when more than one rotation went by, `.1` is a
        file we never saw; open it (from its start) when its header says it is the live file's
        predecessor. True when it was opened."""
        if not self.rotated_suffix:
            return False
        try:
            st = os.lstat(self.path + self.rotated_suffix)
        except OSError:
            return False
        if st.st_ino == self.ino and st.st_dev == self.dev:
            return False  # .1 is the file we just drained: one rotation only
        live, _ = parse_header(self.first_line_of(self.path) or b"")
        prev, _ = parse_header(self.previous_first_line() or b"")
        if not live or not prev or not isinstance(live.get("rotated"), int):
            return False
        if prev.get("token") != live.get("token") or prev.get("rotated", 0) != live["rotated"] - 1:
            return False
        self.open_previous()
        return True

    def previous_first_line(self) -> Optional[bytes]:
        """The first line of the rotated file (`<path>.1`), or None."""
        if not self.rotated_suffix:
            return None
        return self.first_line_of(self.path + self.rotated_suffix)

    @staticmethod
    def first_line_of(path: str) -> Optional[bytes]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, LINE_BUFFER_MAX, 0)
        finally:
            os.close(fd)
        nl = data.find(b"\n")
        return data[:nl] if nl >= 0 else None

    def open_previous(self) -> None:
        """Follow `<path>.1` from its start; at its end the live path (another inode) takes over."""
        assert self.rotated_suffix
        self._open_fd(self.path + self.rotated_suffix, 0)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read_first_line(self, limit: int = LINE_BUFFER_MAX) -> Optional[bytes]:
        if self.fd is None:
            return None
        data = os.pread(self.fd, limit, 0)
        nl = data.find(b"\n")
        return data[:nl] if nl >= 0 else None

    def read_lines(self, budget: int = 256 * KIB) -> List[Line]:
        """Complete lines available now (at most about `budget` bytes read per call)."""
        out = []  # type: List[Line]
        self.more = False
        if self._switch_pending:  # one call never spans two files, so rewind() stays possible
            self._switch_pending = False
            try:
                if self._open_skipped_previous():
                    self.events.append("rotated more than once since the last read: reading the previous "
                                       "file first")
                else:
                    self._open_fd(self.path, 0)
                    self.events.append("rotated: following the new file")
            except OSError as exc:
                self.close()
                self.events.append("rotated but the new file cannot be opened: %s" % exc)
        if self.fd is None:
            return out
        st = os.fstat(self.fd)
        if st.st_size < self.off:
            self.events.append("file truncated from %d to %d bytes; reading from its start"
                               % (self.off, st.st_size))
            self.off = 0
            self._buf = bytearray()
            self._buf_start = 0
            self._overlong = False
        self._last_start = self._buf_start
        data = os.pread(self.fd, budget, self.off) if st.st_size > self.off else b""
        self._split(data, out)
        if len(data) < budget:  # at the end of this descriptor: has the path moved on?
            self._check_path(out)
        self.more = self.more or len(data) >= budget or self._switch_pending
        return out

    def _split(self, data: bytes, out: List[Line]) -> None:
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            piece = data[pos:] if nl < 0 else data[pos:nl]
            room = LINE_BUFFER_MAX - len(self._buf)
            if len(piece) > room:
                self._buf += piece[:room]
                self._overlong = True
            else:
                self._buf += piece
            if nl < 0:
                self.off += len(data) - pos
                return
            self.off += nl + 1 - pos
            out.append(Line(self._buf_start, self.off, bytes(self._buf), self._overlong))
            self._buf = bytearray()
            self._buf_start = self.off
            self._overlong = False
            pos = nl + 1

    def _flush_partial(self, out: List[Line]) -> None:
        """A file that is done (rotated or deleted) may end without a newline: ship that rest too."""
        if self._buf or self._overlong:
            out.append(Line(self._buf_start, self.off, bytes(self._buf), self._overlong))
            self._buf = bytearray()
            self._buf_start = self.off
            self._overlong = False

    def _check_path(self, out: List[Line]) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if self._rotating():
                return  # renamed to .1, the new file is not created yet: wait for it
            if self._drain_old(out):
                self.more = True
            else:
                self._flush_partial(out)
                self.gone = True
            return
        if st.st_ino != self.ino or st.st_dev != self.dev:
            if self._drain_old(out):
                self.more = True  # look at the path again at once, after these lines
            else:
                self._flush_partial(out)
                self._switch_pending = True

    def _drain_old(self, out: List[Line]) -> bool:
        """Lines the writer appended between our read and its rotation (or deletion): read them from
        the old descriptor first; True when there were some (the switch waits for the next call)."""
        assert self.fd is not None
        data = os.pread(self.fd, LINE_BUFFER_MAX, self.off)
        if not data:
            return False
        self._split(data, out)
        return True

    def _rotating(self) -> bool:
        """True when our file now lives at the rotated name (a writer's rename-then-create)."""
        if not self.rotated_suffix:
            return False
        try:
            st = os.lstat(self.path + self.rotated_suffix)
        except OSError:
            return False
        return st.st_ino == self.ino and st.st_dev == self.dev

    def rewind(self) -> None:
        """Take back the lines the last read_lines() returned (they could not be stored): read again later."""
        self.off = self._buf_start = self._last_start
        self._buf = bytearray()
        self._overlong = False
        self.gone = False
        self._switch_pending = False


# ---------------------------------------------------------------------------------------------
# inotify (Linux, through ctypes): wake on writes instead of reading idle files over and over
# ---------------------------------------------------------------------------------------------

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR = 0x4000, 0x8000, 0x01000000
# a log dir: names appearing and disappearing (new demos, rotations, deletions), never its other files' writes
DIR_EVENTS = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ONLYDIR
# one followed file (watched through /proc/self/fd/N: exactly the inode we hold open)
FILE_EVENTS = IN_MODIFY | IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF
INOTIFY_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class Inotify:
    """The kernel's inotify through ctypes (standard library): tells which watched files changed.

    Raises OSError when it is not available (not Linux, no ctypes, the per-user instance limit
    reached); the caller then polls instead.
    """

    def __init__(self) -> None:
        try:
            import ctypes  # only here: a machine without it (or without inotify) polls
        except ImportError as exc:  # pragma: no cover - depends on the Python build
            raise OSError(errno.ENOSYS, "ctypes is not available: %s" % exc) from None
        self._ctypes = ctypes
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
            init = libc.inotify_init1
        except (OSError, AttributeError) as exc:
            raise OSError(errno.ENOSYS, "inotify is not available: %s" % exc) from None
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, "inotify_init1: %s" % os.strerror(err))
        self.fd = fd  # type: Optional[int]

    def add_watch(self, path: str, mask: int) -> int:
        """The watch descriptor of `path` (the same one again for an inode already watched)."""
        wd = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = self._ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        self._rm(self.fd, wd)  # fails harmlessly when the kernel already dropped it

    def read_events(self) -> List[Tuple[int, int, bytes]]:
        """Every queued event as (wd, mask, name); [] when none is waiting."""
        out = []  # type: List[Tuple[int, int, bytes]]
        if self.fd is None:
            return out
        while True:
            try:
                data = os.read(self.fd, 64 * KIB)
            except BlockingIOError:
                return out
            pos = 0
            while pos + INOTIFY_EVENT.size <= len(data):
                wd, mask, _cookie, size = INOTIFY_EVENT.unpack_from(data, pos)
                pos += INOTIFY_EVENT.size
                out.append((wd, mask, bytes(data[pos:pos + size]).rstrip(b"\0")))
                pos += size
            if len(data) < 60 * KIB:  # room for more events was left: the queue is empty, spare a syscall
                return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_inotify() -> Optional[Inotify]:
    """An inotify instance, or None (logged) when this machine cannot give one: then files are polled."""
    if os.environ.get("DVIC_NODE_TEST_NO_INOTIFY"):  # test only: exercise the polling fallback
        LOG.info("demo logs: inotify disabled by DVIC_NODE_TEST_NO_INOTIFY; polling the files")
        return None
    try:
        return Inotify()
    except OSError as exc:
        LOG.info("demo logs: inotify not available (%s); polling the files", exc.strerror or exc)
        return None


# ---------------------------------------------------------------------------------------------
# Demo logs (dvic_log files) and demo liveness
# ---------------------------------------------------------------------------------------------

def pid_state(proc_root: str, pid: int, pid_start: Optional[int]) -> bool:
    """True while `pid` runs and is the same process (start time matches), not a zombie."""
    try:
        with open("%s/%d/stat" % (proc_root, pid), "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True  # e.g. hidepid: cannot see it, so do not declare it dead
    fields = data[data.rfind(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X", b"x"):
        return False
    if pid_start is not None and len(fields) > 19:
        try:
            return int(fields[19]) == pid_start
        except ValueError:
            return True
    return True


def writer_owns(proc_root: str, pid: int, file_uid: int) -> bool:
    """Can process `pid` have written a file owned by `file_uid`? A file is created with its writer's uid, so a
    header naming another user's process was planted (any local user can create names in /tmp). A root-owned
    file is believed (a demo may drop privileges after opening its log), and so is a pid we cannot see."""
    if file_uid <= 0:
        return True
    try:
        return os.stat("%s/%d" % (proc_root, pid)).st_uid == file_uid
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True


def parse_header(raw: bytes) -> Tuple[Optional[Dict[str, Any]], str]:
    """A valid dvic_log header, or (None, why not)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "first line is not JSON"
    if not isinstance(obj, dict) or obj.get("dvic_log") != 1:
        return None, "first line is not a dvic_log version 1 header"
    pid = obj.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None, "header has no valid pid"
    if not isinstance(obj.get("name"), str):
        return None, "header has no name"
    ps = obj.get("pid_start")
    if ps is not None and (not isinstance(ps, int) or isinstance(ps, bool)):
        obj["pid_start"] = None
    return obj, ""


def unescape_partial_json_string(s: str) -> str:
    """Best effort for a JSON string cut mid-way (overlong line): drop a torn escape at the end."""
    for cut in range(0, 7):
        try:
            return json.loads('"' + (s[:len(s) - cut] if cut else s) + '"')
        except ValueError:
            continue
    return s


def is_heartbeat(line: Line) -> bool:
    """A dvic_log heartbeat record (`"heartbeat":1`, docs/log-format.md): liveness, never shipped as a line.
    The substring test is exact enough to skip parsing other lines: inside a JSON string a quote is escaped."""
    if line.overlong or len(line.data) > 256 or b'"heartbeat":1' not in line.data:
        return False
    try:
        obj = json.loads(line.data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get("heartbeat") == 1 and obj.get("heartbeat") is not True \
        and "dvic_log" not in obj


def parse_record(line: Line) -> Tuple[float, str, str, bool]:
    """(ts, level, msg, truncated) of one log line; anything that is not a record becomes raw INFO text."""
    raw = line.data[:-1] if line.data.endswith(b"\r") else line.data
    truncated = line.overlong
    ts, level, msg = None, "INFO", None  # type: Optional[float], str, Optional[str]
    if not line.overlong:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            obj = None
        if isinstance(obj, dict) and "msg" in obj:
            ts = sane_ts(obj.get("ts"))
            level = normalize_level(obj.get("level"))
            m = obj.get("msg")
            msg = m if isinstance(m, str) else json.dumps(m, ensure_ascii=False)
            exc = obj.get("exc")
            if isinstance(exc, str) and exc:
                msg = msg + "\n" + exc
    else:  # cut JSON: recover what the prefix tells (level, ts, start of msg)
        head = raw[:4 * KIB].decode("utf-8", "replace")
        m = re.search(r'"level"\s*:\s*"(\w+)"', head)
        if m:
            level = normalize_level(m.group(1))
        t = re.search(r'"ts"\s*:\s*([0-9.]+)', head)
        if t:
            try:
                ts = sane_ts(float(t.group(1)))
            except ValueError:
                pass
        text = raw.decode("utf-8", "replace")
        mm = re.search(r'"msg"\s*:\s*"', text)
        if mm and text.startswith("{"):
            msg = unescape_partial_json_string(text[mm.end():mm.end() + MAX_MSG_BYTES + 16])
    if msg is None:
        msg = raw.decode("utf-8", "replace")
    msg, cut = clip_utf8(msg, MAX_MSG_BYTES)
    return (ts if ts is not None else round(time.time(), 3)), level, msg, truncated or cut


class LogDir:
    """A directory where demos write dvic_log files: the host's, or one inside a container."""

    def __init__(self, path: str, proc_root: str = "/proc", key_prefix: str = "",
                 container: str = "") -> None:
        self.path = path
        self.proc_root = proc_root  # where the demos' pids are visible (a container's own /proc)
        self.key_prefix = key_prefix
        self.container = container
        self.wd = None  # type: Optional[int]  # inotify watch of the directory (the host's log dir only)


class Demo:
    """One demo: its log file follower, identity from the header, and liveness state."""

    def __init__(self, token: str, logdir: LogDir) -> None:
        self.token = token
        self.logdir = logdir
        self.key = "demo:%s%s" % (logdir.key_prefix, token)
        self.path = os.path.join(logdir.path, "dvic_log_" + token)
        self.follower = FileFollower(self.path)
        self.header = None  # type: Optional[Dict[str, Any]]
        self.header_error = ""
        self.rotated = 0  # the `rotated` number of the newest header seen
        self.state = ""  # "", started/alive, exited
        self.exited_at = None  # type: Optional[float]
        self.open_error = ""
        self.retry_at = 0.0  # time.monotonic() before which a failed open is not retried
        self.next_read = 0.0  # time.monotonic() when the file is read next (DemoWatcher.poll(due_only=True))
        self.active_at = time.monotonic()  # when it last gave lines
        self.watched_ino = 0  # the inode inotify watches for this demo (0: none, polled)
        self.unwatchable_ino = 0  # an inode whose watch failed: not retried
        self.owner = (logdir.key_prefix, -1)  # (log dir, uid of the file) its place counts against
        self.mtime = 0.0  # the file's when it was taken on
        self.last_heartbeat = None  # type: Optional[float]  # ts of the latest record (heartbeat or not)
        self.sent_heartbeat = None  # type: Optional[float]  # the last_heartbeat the server was last told
        self.heartbeat_sent_at = -1e9  # time.monotonic() of that report

    @property
    def name(self) -> str:
        return str(self.header.get("name"))[:128] if self.header else "unknown"

    def message(self, state: Optional[str] = None) -> Dict[str, Any]:
        h = self.header or {}
        header = {k: h.get(k) for k in ("exe", "argv", "user", "host")}
        if self.logdir.container:
            header["container"] = self.logdir.container
        self.sent_heartbeat, self.heartbeat_sent_at = self.last_heartbeat, time.monotonic()
        return {"type": "demo", "token": self.token, "name": self.name, "pid": h.get("pid"),
                "state": state or self.state, "started_at": sane_ts(h.get("start")),
                "exited_at": self.exited_at, "header": header, "last_heartbeat": self.last_heartbeat}


class DemoWatcher:
    """Discovers dvic_log files, ships their lines to the spool and reports demo state changes."""

    def __init__(self, spool: Spool, emit: Callable[[Dict[str, Any]], None],
                 report_error: Callable[[str, Dict[str, Any]], None]) -> None:
        self.spool = spool
        self.emit = emit  # sends a `demo` or `event` message when online
        self.report_error = report_error
        self.logdirs = []  # type: List[LogDir]
        self.demos = {}  # type: Dict[str, Demo]
        self._states = dict(spool.extra.get("demos") or {})  # key -> {"state", "exited_at"}
        self.disk_full = False
        self._pruned = False
        self.poll_interval = 0.2  # --poll-interval: how often a file that is not watched is read while active
        self.notify = None  # type: Optional[Inotify]
        self._file_wds = {}  # type: Dict[int, Tuple[str, int]]  # watch -> (demo key, inode)
        self._dir_wds = {}  # type: Dict[int, LogDir]
        self.rescan = False  # a watched log dir gained or lost a dvic_log name: scan() it soon
        self.max_files = MAX_DEMO_FILES
        self.max_per_owner = MAX_DEMO_FILES_PER_OWNER
        # files listed but not followed: waiting for a place, or retired (key -> log dir path, owner)
        self._passed = {}  # type: Dict[str, Tuple[str, Tuple[str, int]]]
        self._retired = set()  # type: set  # gave their place up in this run: not taken on again
        self._crowded = {}  # type: Dict[Tuple[str, int], int]  # owner -> files waiting (reported once)
        # (key, inode) -> the header's (pid, pid_start) of files looked at for a place, None: no valid header
        self._writers = {}  # type: Dict[Tuple[str, int], Optional[Tuple[int, Optional[int]]]]

    def restore_states(self) -> None:
        """Take the demo states an earlier run saved (call once the spool is open)."""
        self._states = dict(self.spool.extra.get("demos") or {})

    def set_logdirs(self, logdirs: List[LogDir]) -> None:
        self.logdirs = logdirs

    @property
    def dirs_watched(self) -> bool:
        """True when every log dir is watched by inotify (then scan() is needed only on its events)."""
        return all(d.wd is not None for d in self.logdirs)

    def scan(self, full: bool = True) -> None:
        """Find new files in every log dir (only names matching ^dvic_log_<16 hex>$) and follow those that fit
        (see _take_on); `full`: look again at the files waiting for a place (else only at new names)."""
        self.rescan = False
        fresh = []  # type: List[Tuple[str, str, LogDir]]
        listed = set()  # the log dirs listed this time
        seen = set()  # the demo keys found in them
        for logdir in self.logdirs:
            if self.notify is not None and logdir.wd is None and not logdir.key_prefix:
                try:  # before listing it: a file created meanwhile is then seen one way or the other
                    logdir.wd = self.notify.add_watch(logdir.path, DIR_EVENTS)
                    self._dir_wds[logdir.wd] = logdir
                except OSError as exc:
                    LOG.debug("demo logs: cannot watch %s (%s); listing it every 2 s", logdir.path, exc)
            try:
                names = os.listdir(logdir.path)
            except OSError:
                continue
            listed.add(logdir.path)
            for name in names:
                if not LOG_NAME_RE.match(name):
                    continue
                token = name[len("dvic_log_"):]
                key = "demo:%s%s" % (logdir.key_prefix, token)
                seen.add(key)
                if key not in self.demos and key not in self._retired and (full or key not in self._passed):
                    fresh.append((key, token, logdir))
        if full:
            self._forget_passed(listed, seen)
        if fresh:
            self._take_on(fresh, full)

    def _take_on(self, fresh: List[Tuple[str, str, LogDir]], full: bool) -> None:
        """Follow new files within the bounds: at most max_per_owner per owner (the file's uid, per log dir) and
        max_files in all. Running demos first (the header's pid runs, as the file's owner, or the file is root's),
        then the newest files. A full bound makes room only by retiring a followed demo that has exited and whose
        file was read to its end (nothing is lost); a demo still running is never pushed out. A file that does
        not fit waits and is looked at again at each full scan."""
        candidates = []  # type: List[Tuple[bool, float, str, str, LogDir, Tuple[str, int]]]
        seen = {}  # type: Dict[Tuple[str, int, Optional[int], int], bool]
        for key, token, logdir in fresh:
            path = os.path.join(logdir.path, "dvic_log_" + token)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            owner = (logdir.key_prefix, st.st_uid)
            candidates.append((self._runs(key, path, st, logdir, seen), st.st_mtime, key, token, logdir, owner))
        candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
        counts = {}  # type: Dict[Tuple[str, int], int]  # owner -> files followed
        for demo in self.demos.values():
            counts[demo.owner] = counts.get(demo.owner, 0) + 1
        waiting = {}  # type: Dict[Tuple[str, int], int]
        # shares where a file that does not run found no place: older ones will not either (newest come first)
        stuck = set()  # type: set
        for running, mtime, key, token, logdir, owner in candidates:
            retired = None  # type: Optional[Tuple[str, int]]  # the owner of a place given up for this file
            share = owner if counts.get(owner, 0) >= self.max_per_owner else None  # None: the bound in all
            if counts.get(owner, 0) < self.max_per_owner and len(self.demos) < self.max_files:
                fits = True
            elif not running and share in stuck:
                fits = False
            else:
                retired = self._retire_for(running, mtime, share)
                fits = retired is not None
                if not fits and not running:
                    stuck.add(share)
            if not fits:
                self._passed[key] = (logdir.path, owner)
                waiting[owner] = waiting.get(owner, 0) + 1
                continue
            if retired is not None:
                counts[retired] -= 1
            counts[owner] = counts.get(owner, 0) + 1
            demo = Demo(token, logdir)
            demo.owner, demo.mtime = owner, mtime
            self.demos[key] = demo
            self._passed.pop(key, None)
        if full:
            self._report_crowded(waiting)

    def _runs(self, key: str, path: str, st: os.stat_result, logdir: LogDir,
              seen: Dict[Tuple[str, int, Optional[int], int], bool]) -> bool:
        """Does the file's header name a running process of the file's owner (any, for a root-owned file)?
        A name planted by another local user cannot claim someone else's running process."""
        if not stat.S_ISREG(st.st_mode):
            return False
        cache_key = (key, st.st_ino)
        if cache_key not in self._writers:
            writer = None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    data = os.pread(fd, HEADER_PEEK_BYTES, 0)
                finally:
                    os.close(fd)
                nl = data.find(b"\n")
                header = parse_header(data[:nl])[0] if nl >= 0 else None
                if header is not None:
                    writer = (header["pid"], header.get("pid_start"))
            except OSError:
                pass
            if len(self._writers) >= WRITERS_CACHED:  # waiting files come and go: keep it bounded
                self._writers.clear()
            self._writers[cache_key] = writer
        writer = self._writers[cache_key]
        if writer is None:
            return False
        # many planted files may name one process: look at each (process, owner) once per scan
        seen_key = (logdir.proc_root, writer[0], writer[1], st.st_uid)
        if seen_key not in seen:
            seen[seen_key] = writer_owns(logdir.proc_root, writer[0], st.st_uid) \
                and pid_state(logdir.proc_root, writer[0], writer[1])
        return seen[seen_key]

    def _retire_for(self, running: bool, mtime: float, owner: Optional[Tuple[str, int]]) -> Optional[Tuple[str, int]]:
        """Make room for a file (of `owner`, or of anyone when None): retire the followed demo that exited first,
        if its file is read to its end and the newcomer runs or is newer than both that file and its exit (a file
        left waiting is older than every one taken on, so waiting files never take turns). Returns the owner of the
        place freed."""
        best = None  # type: Optional[Demo]
        for demo in self.demos.values():
            if (owner is None or demo.owner == owner) and self._drained(demo) \
                    and (best is None or (demo.exited_at or 0) < (best.exited_at or 0)):
                best = demo
        if best is None or not (running or mtime > max(best.exited_at or 0.0, best.mtime)):
            return None
        self._retire(best)
        return best.owner

    @staticmethod
    def _drained(demo: Demo) -> bool:
        """Exited, and every byte of its file read (a partial last line stays there, after its position)."""
        f = demo.follower
        if demo.state != "exited" or f.fd is None or f.more or f.gone:
            return False
        try:
            return os.fstat(f.fd).st_size <= f.off
        except OSError:
            return False

    def _retire(self, demo: Demo) -> None:
        """Stop following an exited demo. Its state and position stay: a restart that takes the file on again
        reads nothing twice and does not announce its exit again."""
        for wd, (key, _) in list(self._file_wds.items()):
            if key == demo.key:
                del self._file_wds[wd]
                if self.notify is not None:
                    try:
                        self.notify.rm_watch(wd)
                    except OSError:
                        pass
        demo.follower.close()
        del self.demos[demo.key]
        self._passed[demo.key] = (demo.logdir.path, demo.owner)
        self._retired.add(demo.key)

    def _forget_passed(self, listed: set, seen: set) -> None:
        """Files not followed that are gone from a log dir just listed: forget them with their state."""
        changed = False
        for key, (path, _) in list(self._passed.items()):
            if path in listed and key not in seen:
                del self._passed[key]
                self._retired.discard(key)
                if self._states.pop(key, None) is not None:
                    changed = True
                self.spool.set_position(key, None)
        if changed:
            self.spool.set_extra("demos", self._states)

    def _report_crowded(self, waiting: Dict[Tuple[str, int], int]) -> None:
        """Once per episode and owner: files that wait for a place (likely planted, or a crash loop)."""
        for owner, count in waiting.items():
            if owner not in self._crowded:
                prefix, uid = owner
                try:
                    user = pwd.getpwuid(uid).pw_name
                except (KeyError, OverflowError):
                    user = str(uid)
                where = ("container " + prefix.rstrip(":")) if prefix else "the log dir"
                self.report_error(
                    "demo logs: %d dvic_log file(s) of user %s in %s are not followed: at most %d per owner "
                    "(--max-demo-files-per-owner) and %d in all (--max-demo-files), running demos first"
                    % (count, user, where, self.max_per_owner, self.max_files),
                    {"uid": uid, "waiting": count, "container": prefix.rstrip(":")})
        for owner in [o for o in self._crowded if o not in waiting]:
            LOG.info("demo logs: no more files of uid %d wait for a place", owner[1])
        self._crowded = dict(waiting)

    def poll(self, budget: int = 256 * KIB, due_only: bool = False) -> int:
        """Read new lines of every demo (`due_only`: of those whose next_read has come) and spool them;
        returns the number of lines spooled."""
        total = 0
        now = time.monotonic()
        for demo in list(self.demos.values()):
            if due_only and now < demo.next_read:
                continue
            if demo.follower.gone and os.path.lexists(demo.path):
                demo.follower.gone = False  # a new file under the same name: follow it too
            if demo.follower.fd is None and not demo.follower.gone:
                if now < demo.retry_at or not self._open(demo):
                    demo.next_read = max(demo.retry_at, self._next_read(demo, 0, now))
                    continue
            try:
                n = self._read(demo, budget)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    if not self.disk_full:  # once per episode: the lines wait in their files meanwhile
                        self.disk_full = True
                        LOG.error("spool: cannot write (%s); demo lines wait in their files", exc.strerror)
                    return total  # every demo stays due: the next round tries again
                self.report_error("reading %s failed: %s" % (demo.path, exc), {"path": demo.path})
                demo.follower.close()
                demo.retry_at = demo.next_read = now + 30
                continue
            if self.disk_full:
                self.disk_full = False
                LOG.warning("spool: writable again")
            total += n
            demo.next_read = self._next_read(demo, n, now)
            self._watch_file(demo)
        return total

    def _next_read(self, demo: Demo, lines: int, now: float) -> float:
        """When to read a file again after a read that gave `lines`: at once while it is busy; when it
        is quiet, inotify says when it changes, else it is polled, less often once it stays quiet."""
        if lines or demo.follower.more:
            if lines:
                demo.active_at = now
            return now  # a burst usually goes on, and a rotation or a full budget needs another call
        if demo.follower.fd is not None and demo.watched_ino == demo.follower.ino:
            return now + WATCHED_POLL_S
        if demo.state == "exited":
            return now + 5.0  # an exited demo's file rarely grows
        return now + (self.poll_interval if now - demo.active_at < QUIET_AFTER_S else IDLE_POLL_S)

    def next_due(self) -> float:
        """The time.monotonic() when poll(due_only=True) has a file to read (inf: none)."""
        return min((d.next_read for d in self.demos.values()), default=math.inf)

    def take_events(self, events: List[Tuple[int, int, bytes]]) -> None:
        """Mark the demos inotify says changed as due (and ask for a scan when a log dir changed)."""
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:  # events were lost: look at everything
                self.rescan = True
                for demo in self.demos.values():
                    demo.next_read = 0.0
                continue
            watched = self._file_wds.get(wd)
            if watched is not None:
                demo = self.demos.get(watched[0])
                if mask & IN_IGNORED:  # the inode is gone (or the watch removed)
                    del self._file_wds[wd]
                    if demo is not None and demo.watched_ino == watched[1]:
                        demo.watched_ino = 0
                if demo is not None:
                    demo.next_read = 0.0
                continue
            logdir = self._dir_wds.get(wd)
            if logdir is None:
                continue
            if mask & IN_IGNORED:  # the directory itself went away: list it again until it is back
                del self._dir_wds[wd]
                logdir.wd = None
                self.rescan = True
            elif name.startswith(b"dvic_log_"):  # the live name or its .1: a rotation, a new file, a deletion
                demo = self.demos.get("demo:" + name[9:25].decode("ascii", "replace"))
                if demo is not None:
                    demo.next_read = 0.0
                if demo is None or demo.follower.gone:
                    self.rescan = True

    def _watch_file(self, demo: Demo) -> None:
        """Have inotify watch the inode the demo's follower holds open (host files only: a container's
        files are polled). A new watch makes the file due once more: a write just before it is read."""
        f = demo.follower
        if self.notify is None or f.fd is None or demo.logdir.key_prefix \
                or f.ino in (demo.watched_ino, demo.unwatchable_ino):
            return
        try:
            wd = self.notify.add_watch("/proc/self/fd/%d" % f.fd, FILE_EVENTS)
        except OSError as exc:  # e.g. fs.inotify.max_user_watches reached: this file is polled
            demo.unwatchable_ino, demo.watched_ino = f.ino, 0
            LOG.info("demo log %s: cannot watch it (%s); polling it", demo.path, exc.strerror or exc)
            return
        self._file_wds[wd] = (demo.key, f.ino)
        demo.watched_ino = f.ino
        demo.next_read = 0.0

    def _open(self, demo: Demo) -> bool:
        saved = self.spool.positions.get(demo.key)
        try:
            demo.follower.open(saved if isinstance(saved, dict) else None)
        except FileNotFoundError:
            if demo.key not in self._states:
                del self.demos[demo.key]
                self.spool.set_position(demo.key, None)
            else:
                demo.follower.gone = True  # deleted while we were not running
            return False
        except OSError as exc:
            why = "%s: %s" % (exc.strerror or exc, demo.path)
            if why != demo.open_error:  # report once per distinct problem, retry quietly
                demo.open_error = why
                self.report_error("cannot open demo log %s (%s)" % (demo.path, exc.strerror or exc),
                                  {"path": demo.path, "errno": exc.errno or 0})
            demo.retry_at = time.monotonic() + 10
            return False
        demo.open_error = ""
        if not saved and demo.follower.off == 0:
            self._start_with_previous(demo)
        if demo.follower.off > 0 and demo.header is None:
            first = demo.follower.read_first_line()
            if first is not None:
                self._take_header(demo, first)
        return True

    def _start_with_previous(self, demo: Demo) -> None:
        """Discovered after a rotation: `.1` holds the demo's lines just before the live file; read it
        first when its header says it is that rotation (docs/log-format.md, reader notes)."""
        live, _ = parse_header(demo.follower.read_first_line() or b"")
        if not live or not isinstance(live.get("rotated"), int) or live["rotated"] < 1:
            return
        prev, _ = parse_header(demo.follower.previous_first_line() or b"")
        if prev and prev.get("token") == live.get("token") and prev.get("rotated", 0) == live["rotated"] - 1:
            try:
                demo.follower.open_previous()
            except OSError as exc:  # the live file alone, then
                LOG.info("demo log %s: cannot read the previous file first: %s", demo.path, exc)

    def _take_header(self, demo: Demo, raw: bytes) -> bool:
        header, why = parse_header(raw)
        if header is None:
            if not demo.header and not demo.header_error:
                demo.header_error = why
                self.report_error("broken header in %s: %s; its lines are shipped as raw text"
                                  % (demo.path, why), {"path": demo.path, "token": demo.token})
            return False
        rotated = header.get("rotated") if isinstance(header.get("rotated"), int) else 0
        if demo.header is None:
            demo.header = header
        elif rotated > demo.rotated + 1:  # whole files went by unread (docs/log-format.md, reader step 5)
            missed = rotated - demo.rotated - 1
            message = ("demo %s (%s): %d rotated log file(s) were never read; the demo logged faster than "
                       "they could be shipped" % (demo.name, demo.token, missed))
            LOG.warning("%s", message)
            self.emit({"type": "event", "kind": "log_gap", "message": message,
                       "data": {"token": demo.token, "demo": demo.name, "missed_files": missed,
                                "from_rotation": demo.rotated + 1, "to_rotation": rotated - 1}})
        demo.rotated = max(demo.rotated, rotated)
        return True

    def _read(self, demo: Demo, budget: int) -> int:
        lines = demo.follower.read_lines(budget)
        for event in demo.follower.events:
            LOG.info("demo log %s: %s", demo.path, event)
        demo.follower.events = []
        out = []  # type: List[Dict[str, Any]]
        for line in lines:
            if line.start == 0 and not line.overlong and self._take_header(demo, line.data):
                continue  # a header (also the one of a fresh file after rotation) is identity, not a line
            heartbeat = is_heartbeat(line)
            ts, level, msg, truncated = parse_record(line)
            if demo.last_heartbeat is None or ts > demo.last_heartbeat:
                demo.last_heartbeat = ts  # any record shows the demo is running
            if not heartbeat:  # a heartbeat only says so: no line for it
                out.append({"ts": ts, "source": "demo", "unit": demo.name, "demo": demo.token,
                            "level": level, "msg": msg, "truncated": truncated})
        position = demo.follower.position()
        if out or position != self.spool.positions.get(demo.key):
            try:
                self.spool.append(out, {demo.key: position})
            except OSError:
                demo.follower.rewind()  # nothing was spooled: these lines stay in the file for later
                raise
        if demo.follower.gone:
            demo.follower.close()
            # deleted: its position means nothing now, and a new file may get the same inode number
            self.spool.set_position(demo.key, None)
        return len(out)

    def check_liveness(self) -> None:
        """Report started/exited transitions; forget demos whose file is gone after they exited."""
        changed = False
        if not self._pruned:  # once, after the first scan: demos whose file vanished while we were down
            self._pruned = True
            for key in [k for k in self._states if k not in self.demos and k not in self._passed
                        and not k.startswith("demo:docker:")]:
                del self._states[key]
                self.spool.set_position(key, None)
                changed = True
        for key, demo in list(self.demos.items()):
            if demo.header is None:
                if demo.follower.gone:
                    del self.demos[key]
                continue
            known = self._states.get(key)  # as persisted by an earlier run of the daemon
            alive = demo.state != "exited" and pid_state(demo.logdir.proc_root, demo.header["pid"],
                                                         demo.header.get("pid_start"))
            if not demo.state:  # first look in this run
                alive = alive and writer_owns(demo.logdir.proc_root, demo.header["pid"], demo.owner[1])
                if known and known.get("state") == "exited":
                    demo.state, demo.exited_at = "exited", known.get("exited_at")
                elif alive:
                    demo.state = "alive" if known else "started"
                    if not known:
                        self.emit(demo.message())
                else:  # exited before we saw it alive: its last write is the best exit time we have
                    demo.state, demo.exited_at = "exited", self._mtime(demo)
                    self.emit(demo.message())
            elif demo.state != "exited" and not alive:
                demo.state, demo.exited_at = "exited", round(time.time(), 3)
                self.emit(demo.message())
            record = {"state": "exited" if demo.state == "exited" else "alive", "exited_at": demo.exited_at}
            if known != record:
                self._states[key] = record
                changed = True
            if demo.follower.gone and demo.state == "exited":
                del self.demos[key]
                self._states.pop(key, None)
                self.spool.set_position(key, None)
                changed = True
        if changed:  # rare, and a restart must not announce a demo as "started" twice: save now
            self.spool.set_extra("demos", self._states)
            try:
                self.spool.checkpoint()
            except OSError as exc:
                LOG.warning("cannot save demo states: %s", exc)

    def report_heartbeats(self) -> None:
        """Tell the server a running demo's new last_heartbeat: at once the first time, then at most every
        HEARTBEAT_REPORT_S while it keeps changing (call only while online: `announce` covers the rest)."""
        now = time.monotonic()
        for demo in self.demos.values():
            if demo.header is None or demo.state in ("", "exited") or demo.last_heartbeat == demo.sent_heartbeat:
                continue
            if demo.sent_heartbeat is None or now - demo.heartbeat_sent_at >= HEARTBEAT_REPORT_S:
                self.emit(demo.message("alive"))

    @staticmethod
    def _mtime(demo: Demo) -> float:
        try:
            return round(os.stat(demo.path).st_mtime, 3)
        except OSError:
            return round(time.time(), 3)

    def announce(self) -> List[Dict[str, Any]]:
        """`demo` messages for every known demo (sent right after `welcome`)."""
        out = []
        recent = time.time() - 86400
        for demo in self.demos.values():
            if demo.header is None or not demo.state:
                continue
            if demo.state == "exited" and (demo.exited_at or 0) < recent:
                continue
            out.append(demo.message("exited" if demo.state == "exited" else "alive"))
        return out


# ---------------------------------------------------------------------------------------------
# System logs: the journal (journalctl -f -o json) or a syslog file, rate-bounded
# ---------------------------------------------------------------------------------------------

class RateLimiter:
    """Token bucket: at most `rate` lines/s on average with bursts of `burst`; counts what it refuses."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.refused = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused += 1
        return False


JOURNAL_LEVELS = {0: "CRITICAL", 1: "CRITICAL", 2: "CRITICAL", 3: "ERROR", 4: "WARNING", 5: "INFO", 6: "INFO",
                  7: "DEBUG"}
SYSLOG_RE = re.compile(r"^(?:\w{3}\s+\d+\s[\d:]{8}|\d{4}-\d\d-\d\dT\S+)\s+\S+\s+([^:\[\s]+)(?:\[\d+\])?:\s?(.*)$")


def journal_entry_to_line(entry: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    msg = entry.get("MESSAGE")
    if isinstance(msg, list):  # binary messages come as byte arrays
        try:
            msg = bytes(msg).decode("utf-8", "replace")
        except (TypeError, ValueError):
            msg = None
    if not isinstance(msg, str):
        return None
    try:
        level = JOURNAL_LEVELS.get(int(entry.get("PRIORITY", 6)), "INFO")
    except (TypeError, ValueError):
        level = "INFO"
    try:
        ts = sane_ts(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    except (KeyError, TypeError, ValueError):
        ts = round(time.time(), 3)
    unit = entry.get("SYSLOG_IDENTIFIER") or entry.get("_SYSTEMD_UNIT") or "journal"
    msg, cut = clip_utf8(msg, MAX_MSG_BYTES)
    return {"ts": ts, "source": "system", "unit": str(unit)[:128], "level": level, "msg": msg,
            "truncated": cut}


def syslog_line_to_line(line: Line) -> Dict[str, Any]:
    text = line.data.decode("utf-8", "replace")
    unit, msg = "syslog", text
    m = SYSLOG_RE.match(text)
    if m:
        unit, msg = m.group(1), m.group(2)
    msg, cut = clip_utf8(msg, MAX_MSG_BYTES)
    return {"ts": round(time.time(), 3), "source": "system", "unit": unit[:128], "level": "INFO",
            "msg": msg, "truncated": cut or line.overlong}


class SystemLogs:
    """Ships the machine's own logs; `mode` is auto, journal, none or a syslog file path."""

    KEY = "system"

    def __init__(self, spool: Spool, mode: str, rate: float, burst: int) -> None:
        self.spool = spool
        self.mode = mode
        self.limiter = RateLimiter(rate, burst)
        self.file = None  # type: Optional[FileFollower]
        self._reported_refused = 0
        self._last_report = -1e9  # the first skip is reported at once, later ones at most every 10 s

    def resolve(self) -> str:
        """journal, none, or a file path."""
        if self.mode == "auto":
            if which("journalctl") and os.path.isdir("/run/systemd/journal"):
                return "journal"
            for path in ("/var/log/syslog", "/var/log/messages"):
                if os.path.exists(path):
                    return path
            return "none"
        return self.mode

    def report_refused(self) -> None:
        """Say (as a daemon warning, at most every 10 s) how many lines the rate bound skipped."""
        now = time.monotonic()
        refused = self.limiter.refused - self._reported_refused
        if refused and now - self._last_report >= 10:
            self._reported_refused = self.limiter.refused
            self._last_report = now
            LOG.warning("system logs: rate bound (%.0f lines/s) skipped %d lines", self.limiter.rate, refused)

    # -- syslog file --
    def poll_file(self, path: str) -> int:
        if self.file is None:
            self.file = FileFollower(path, rotated_suffix=".1")
            saved = self.spool.positions.get(self.KEY)
            try:  # first start: from the end (history before the daemon is not ours to flood)
                self.file.open(saved if isinstance(saved, dict) and "ino" in saved else None,
                               at_end=not isinstance(saved, dict))
            except OSError as exc:
                LOG.warning("system logs: cannot open %s: %s", path, exc.strerror or exc)
                self.file = None
                return -1
        lines = self.file.read_lines()
        self.file.events = []
        out = [syslog_line_to_line(line) for line in lines if self.limiter.allow()]
        position = self.file.position()
        if out or position != self.spool.positions.get(self.KEY):
            try:
                self.spool.append(out, {self.KEY: position})
            except OSError:
                self.file.rewind()
                raise
        if self.file.gone:
            self.file.close()
            self.file = None
        self.report_refused()
        return len(out)

    # -- journal --
    async def run_journal(self, stop: asyncio.Event) -> None:
        """Follow journalctl until `stop`; restart it (with the saved cursor) if it exits."""
        own_pid = str(os.getpid())
        while not stop.is_set():
            saved = self.spool.positions.get(self.KEY)
            args = ["journalctl", "-f", "-o", "json", "--no-pager",
                    "--output-fields=MESSAGE,PRIORITY,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT,_PID"]
            if isinstance(saved, dict) and isinstance(saved.get("cursor"), str):
                args.append("--after-cursor=" + saved["cursor"])
            else:
                args += ["-n", "0"]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                    limit=2 * MIB)
            except OSError as exc:
                LOG.warning("system logs: cannot run journalctl: %s", exc)
                return
            why = ""
            try:
                await self._read_journal(proc, own_pid)
            except OSError as exc:  # the spool cannot take lines: resume later from the last stored cursor
                why = "cannot spool (%s)" % (exc.strerror or exc)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if not stop.is_set():
                LOG.warning("system logs: %s; restarting journalctl in 30 s",
                            why or "journalctl exited with code %s" % proc.returncode)
                try:
                    await asyncio.wait_for(stop.wait(), 30)
                except asyncio.TimeoutError:
                    pass

    async def _read_journal(self, proc: Any, own_pid: str) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                LOG.warning("system logs: skipped a journal entry larger than 2 MiB")
                continue
            if not raw:
                return
            try:
                entry = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            cursor = entry.get("__CURSOR")
            pos = {self.KEY: {"cursor": cursor}} if isinstance(cursor, str) else {}
            line = journal_entry_to_line(entry) if entry.get("_PID") != own_pid else None
            if line is not None and self.limiter.allow():
                self.spool.append([line], pos)
            elif pos:
                self.spool.append([], pos)
            self.report_refused()


# ---------------------------------------------------------------------------------------------
# Docker: dvic_log files inside running containers, through the Engine API on its unix socket
# ---------------------------------------------------------------------------------------------

class DockerError(Exception):
    """The Docker Engine API could not be reached or answered badly."""


def docker_get(socket_path: str, path: str, timeout: float = 5.0) -> Any:
    """GET `path` on the Docker Engine API (HTTP/1.1 over a unix socket) and decode its JSON."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
        sock.sendall(("GET %s HTTP/1.1\r\nHost: docker\r\nUser-Agent: dvic-node/%s\r\n"
                      "Accept: application/json\r\nConnection: close\r\n\r\n" % (path, VERSION)).encode())
        chunks = []
        total = 0
        while True:
            data = sock.recv(64 * KIB)
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if total > 16 * MIB:
                raise DockerError("response to %s larger than 16 MiB" % path)
    except OSError as exc:
        raise DockerError("cannot talk to Docker at %s: %s" % (socket_path, exc)) from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise DockerError("incomplete HTTP response from Docker")
    try:
        status, _reason, headers = parse_http_head(head + b"\r\n")
    except ValueError as exc:
        raise DockerError(str(exc)) from None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = decode_chunked(body)
    if status != 200:
        raise DockerError("Docker answered %d for %s: %s" % (status, path, body[:200].decode("utf-8", "replace")))
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DockerError("Docker sent invalid JSON for %s: %s" % (path, exc)) from None


def decode_chunked(body: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        nl = body.find(b"\r\n", pos)
        if nl < 0:
            raise DockerError("bad chunked encoding from Docker")
        try:
            size = int(body[pos:nl].split(b";")[0], 16)
        except ValueError:
            raise DockerError("bad chunk size from Docker") from None
        if size == 0:
            return bytes(out)
        out += body[nl + 2:nl + 2 + size]
        pos = nl + 2 + size + 2


def docker_log_dirs(socket_path: str, inner_dir: str = "/tmp", host_proc: str = "/proc") -> List[LogDir]:
    """A LogDir per running container: its /tmp seen through /proc/<pid>/root (no copy, no exec)."""
    out = []
    for c in docker_get(socket_path, "/containers/json"):
        cid = c.get("Id") if isinstance(c, dict) else None
        if not isinstance(cid, str) or not re.match(r"^[0-9a-f]{12,64}$", cid):
            continue
        info = docker_get(socket_path, "/containers/%s/json" % cid)
        pid = (info.get("State") or {}).get("Pid") if isinstance(info, dict) else None
        if not isinstance(pid, int) or pid <= 0:
            continue
        name = str(info.get("Name") or cid[:12]).lstrip("/")
        root = "%s/%d/root" % (host_proc, pid)
        out.append(LogDir(root + inner_dir, proc_root=root + "/proc", key_prefix="docker:%s:" % cid[:12],
                          container=name))
    return out


# ---------------------------------------------------------------------------------------------
# The daemon's own warnings, shipped as source "daemon"
# ---------------------------------------------------------------------------------------------

class SpoolLogHandler(logging.Handler):
    """Puts the daemon's WARNING+ records into the spool (bounded: at most 60 a minute)."""

    def __init__(self, spool: Spool) -> None:
        super().__init__(logging.WARNING)
        self.spool = spool
        self._local = threading.local()
        self._window = 0.0
        self._count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False) or threading.current_thread() is not threading.main_thread():
            return  # re-entered, or a worker thread (the spool is the event loop's): stderr has it anyway
        now = time.monotonic()
        if now - self._window > 60:
            self._window, self._count = now, 0
        self._count += 1
        if self._count > 60:
            return
        self._local.busy = True
        try:
            msg, cut = clip_utf8(record.getMessage(), MAX_MSG_BYTES)
            self.spool.append([{"ts": round(record.created, 3), "source": "daemon", "unit": "dvic-node",
                                "level": normalize_level(record.levelname), "msg": msg, "truncated": cut}])
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            pass
        finally:
            self._local.busy = False


# ---------------------------------------------------------------------------------------------
# Keep-alive POSTs
# ---------------------------------------------------------------------------------------------

class KeepAliveError(Exception):
    """A keep-alive POST failed (network, TLS, or a refusal by the server; `revoked`: refused for good)."""

    def __init__(self, message: str, revoked: bool = False) -> None:
        super().__init__(message)
        self.revoked = revoked


class KeepAlive:
    """POSTs to the keep-alive URL over one reused HTTP/1.1 connection.

    Plain asyncio streams rather than http.client: no worker thread, and http.client (with the
    email package it pulls in) would cost the daemon a sixth of its memory.
    """

    def __init__(self, url: str, token: str, ssl_context: Optional[ssl.SSLContext]) -> None:
        self.url = urllib.parse.urlsplit(url)
        if self.url.scheme not in ("http", "https") or not self.url.hostname:
            raise ValueError("not an http(s) URL: %r" % url)
        self.token = token
        self.ssl_context = ssl_context
        self._conn = None  # type: Optional[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]

    async def post(self, body: Dict[str, Any], timeout: float = 10.0) -> Dict[str, Any]:  # noqa: ASYNC109
        data = json.dumps(body).encode()
        host = self.url.hostname or ""
        host_header = ("[%s]" % host if ":" in host else host) + (":%d" % self.url.port if self.url.port else "")
        request = ("POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\nUser-Agent: dvic-node/%s\r\n\r\n"
                   % (self.url.path or "/", host_header, self.token, len(data), VERSION)).encode() + data
        for attempt in (1, 2):  # a reused connection may have been closed by the server: retry once
            try:
                status, headers, payload = await asyncio.wait_for(self._exchange(request), timeout)
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ssl.SSLError) as exc:
                self.close()
                if attempt == 2:
                    raise KeepAliveError(describe_connect_error(exc)) from None
                continue
            if "close" in headers.get("connection", "").lower():
                self.close()
            if status != 200:
                raise KeepAliveError("keep-alive refused: HTTP %d %s"
                                     % (status, payload[:200].decode("utf-8", "replace")),
                                     revoked=status == 403 and error_code(payload) == "revoked")
            try:
                out = json.loads(payload.decode("utf-8"))
            except ValueError:
                return {}
            return out if isinstance(out, dict) else {}
        return {}  # not reached

    async def _exchange(self, request: bytes) -> Tuple[int, Dict[str, str], bytes]:
        if self._conn is None:
            secure = self.url.scheme == "https"
            self._conn = await asyncio.open_connection(
                self.url.hostname, self.url.port or (443 if secure else 80),
                ssl=self.ssl_context if secure else None, server_hostname=self.url.hostname if secure else None)
        reader, writer = self._conn
        writer.write(request)
        await writer.drain()
        status, _reason, headers = parse_http_head(await reader.readuntil(b"\r\n\r\n"))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= 64 * KIB:
            return status, headers, await reader.readexactly(int(length))
        payload = await reader.read(64 * KIB)  # no usable length: read what comes, then start afresh
        self.close()
        return status, headers, payload

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


# ---------------------------------------------------------------------------------------------
# Remote control (docs/protocol.md section 6): commands, shells, tunnels, actions, self-update
# ---------------------------------------------------------------------------------------------

MAX_PAYLOAD = 48 * KIB  # protocol: decoded payload per frame
READ_CHUNK = 16 * KIB  # raw bytes per read: decoded with U+FFFD (3 bytes each) it stays <= 48 KiB
MAX_COMMANDS = 8
MAX_SHELLS = 4
MAX_TUNNELS = 16
KILL_GRACE = 5.0  # SIGTERM, then SIGKILL this much later
PIPE_GRACE = 2.0  # after a command exits, how long its pipes may stay open (background children)
EXEC_IDS_KEEP = 10000
SHELL_INPUT_MAX = 1 * MIB  # keystrokes not yet written to the PTY
TUNNEL_BUFFER_MAX = 8 * MIB  # bytes waiting for a destination that does not read
TUNNEL_CONNECT_TIMEOUT = 10.0
DEFAULT_CAP = 1 * MIB
UPDATE_MAX_BYTES = 4 * MIB
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
VERSION_LINE_RE = re.compile(rb'^(?:__version__|VERSION)\s*=\s*["\']([0-9A-Za-z.+-]+)["\']', re.M)
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")


class RequestError(Exception):
    """A server request that cannot be served as asked; the message goes back to the operator."""


def request_id(msg: Dict[str, Any]) -> str:
    rid = msg.get("id")
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
        raise RequestError("id: expected a request id (1-64 letters, digits, '.', '_', ':' or '-')")
    return rid


def int_field(msg: Dict[str, Any], name: str, lo: int, hi: int, default: Optional[int] = None) -> int:
    value = msg.get(name, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RequestError("%s: expected an integer from %d to %d, got %r" % (name, lo, hi, value))
    return value


def parse_version(text: str) -> Tuple[int, ...]:
    """'0.2.10' -> (0, 2, 10); the numeric prefix of each part counts (as the server compares)."""
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def rsa_verify_sha256(data: bytes, signature_b64: str, key: Dict[str, Any]) -> bool:
    """RSA PKCS#1 v1.5 with SHA-256, checked with integer arithmetic (no dependency)."""
    try:
        n, e = int(str(key["n"]), 16), int(key["e"])
        sig = base64.b64decode(signature_b64, validate=True)
    except (KeyError, TypeError, ValueError):
        return False
    k = (n.bit_length() + 7) // 8
    s = int.from_bytes(sig, "big")
    if n.bit_length() < 2048 or e < 3 or len(sig) != k or s >= n:
        return False
    em = pow(s, e, n).to_bytes(k, "big")
    t = DIGEST_INFO_SHA256 + hashlib.sha256(data).digest()
    # the whole encoded message is rebuilt and compared: no parsing, so no lenient-parser forgeries
    return em == b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t


def key_statement(key: Dict[str, Any]) -> bytes:
    """The bytes an endorsement signs: the new public key as canonical JSON (central/release.py)."""
    return json.dumps({"n": key["n"], "e": key["e"]}, sort_keys=True, separators=(",", ":")).encode()


def follow_endorsements(pinned: Dict[str, Any], endorsements: Any) -> List[Dict[str, Any]]:
    """The keys trusted from `pinned` on: each endorsement signed by the key before it."""
    chain = [pinned]
    if not isinstance(endorsements, list):
        return chain
    for item in endorsements[:64]:
        if not isinstance(item, dict) or not isinstance(item.get("key"), dict):
            continue
        key = item["key"]
        if not isinstance(key.get("n"), str) or not isinstance(key.get("e"), int):
            continue
        if rsa_verify_sha256(key_statement(key), str(item.get("signature", "")), chain[-1]):
            chain.append({"n": key["n"], "e": key["e"]})
    return chain


def session_pids(sid: int, proc_root: str = "/proc") -> List[int]:
    """Every process of a session (job-control shells put each job in its own process group)."""
    out = []
    try:
        names = os.listdir(proc_root)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        raw = read_text(os.path.join(proc_root, name, "stat"), 4096)
        if not raw or ")" not in raw:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        # after the command: state, ppid, pgrp, session
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] != "Z":
            out.append(int(name))
    return out


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_session(sid: int, sig: int) -> None:
    kill_group(sid, sig)
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


async def wait_fd(fd: int, writable: bool = False, closed: Callable[[], bool] = lambda: False) -> None:
    """Wait until a non-blocking fd is readable (or writable) without a thread.

    `closed` says whether the fd's owner has closed it meanwhile (removing this wait's registration
    before the close): its number may then be another file's already, e.g. a command's output pipe
    opened just after, whose registration must stay."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        if not closed():
            (loop.remove_writer if writable else loop.remove_reader)(fd)


def tail_text(data: bytes, limit: int = 500) -> str:
    text = data.decode("utf-8", "replace").strip()
    return ("..." + text[-limit:]) if len(text) > limit else text


class Link:
    """The current node websocket as the remote-control parts see it: send when connected."""

    def __init__(self) -> None:
        self.ws = None  # type: Optional[WebSocket]
        self.online = asyncio.Event()
        self.on_lost = []  # type: List[Callable[[], None]]

    def attach(self, ws: WebSocket) -> None:
        self.ws = ws
        self.online.set()

    def detach(self) -> None:
        self.ws = None
        self.online.clear()
        for cb in self.on_lost:
            cb()

    async def send(self, msg: Dict[str, Any], wait: float = 0.0) -> bool:
        """Send on the current connection; with `wait`, wait that long for one. False when not sent."""
        if self.ws is None and wait > 0:
            try:
                await asyncio.wait_for(self.online.wait(), wait)
            except asyncio.TimeoutError:
                return False
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send_json(msg)
            return True
        except (OSError, WebSocketError):
            return False


class ExecJournal:
    """The exec ids this node has started, on disk, so an id runs at most once across restarts."""

    def __init__(self, path: str, keep: int = EXEC_IDS_KEEP) -> None:
        self.path = path
        self.keep = keep
        self.ids = collections.OrderedDict()  # type: collections.OrderedDict[str, None]
        self.lines = 0
        self.loaded = False

    def load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        for line in raw.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if REQUEST_ID_RE.match(line):  # a torn last line (crash mid-write) is ignored
                self._remember(line)
        self.lines = raw.count(b"\n")
        self.loaded = True

    def _remember(self, rid: str) -> None:
        self.ids[rid] = None
        self.ids.move_to_end(rid)
        while len(self.ids) > self.keep:
            self.ids.popitem(last=False)

    def seen(self, rid: str) -> bool:
        if not self.loaded:
            self.load()
        return rid in self.ids

    def record(self, rid: str) -> None:
        """Durably note `rid` before it runs (raises OSError when that is impossible)."""
        if not self.loaded:
            self.load()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (rid + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._remember(rid)
        self.lines += 1
        if self.lines > 2 * self.keep:  # compact: keep the newest ids only
            write_file_atomic(self.path, "".join(i + "\n" for i in self.ids).encode())
            self.lines = len(self.ids)


class CommandProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The streams of create_subprocess_exec, and `exited`, set as soon as the process has exited:
    Process.wait() also waits for its pipes to close on newer Pythons (3.12, late 3.11 releases), and a
    background child holding them must not hold up the command's end (the pipes get PIPE_GRACE)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


async def start_command(argv: List[str]) -> Tuple["asyncio.subprocess.Process", CommandProtocol]:
    """`argv` in a new session, stdin /dev/null, stdout and stderr piped (64 KiB buffered each)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: CommandProtocol(64 * KIB, loop), *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    return asyncio.subprocess.Process(transport, protocol, loop), protocol


class RunningCommand:
    def __init__(self, rid: str, proc: "asyncio.subprocess.Process") -> None:
        self.id = rid
        self.proc = proc
        self.reason = ""  # set by timeout or cancel
        self.kill_timer = None  # type: Optional[asyncio.TimerHandle]

    def stop(self, reason: str) -> None:
        """SIGTERM to the command's process group, SIGKILL KILL_GRACE seconds later."""
        if self.reason or self.proc.returncode is not None:
            return
        self.reason = reason
        kill_group(self.proc.pid, signal.SIGTERM)
        kill_group(self.proc.pid, signal.SIGCONT)  # a stopped process must see the SIGTERM
        self.kill_timer = asyncio.get_running_loop().call_later(KILL_GRACE, kill_group, self.proc.pid,
                                                                signal.SIGKILL)


class CommandRunner:
    """`exec` and `cancel`: argv or /bin/sh -c in its own session, output streamed, at most once."""

    def __init__(self, link: Link, journal: ExecJournal, spawn: Callable[[Awaitable[None]], None],
                 max_running: int = MAX_COMMANDS) -> None:
        self.link = link
        self.journal = journal
        self.spawn = spawn
        self.max_running = max_running
        self.running = {}  # type: Dict[str, RunningCommand]
        # accepted, their process not there yet: id -> a cancel came meanwhile (applied once it is)
        self.starting = {}  # type: Dict[str, bool]

    async def _exit(self, rid: str, reason: str, message: str, code: Optional[int] = None,
                    sig: Optional[int] = None, truncated: bool = False, wait: float = 0.0) -> None:
        await self.link.send({"type": "exec_exit", "id": rid, "code": code, "signal": sig, "reason": reason,
                              "message": message[:4000], "truncated": truncated}, wait)

    async def on_exec(self, msg: Dict[str, Any]) -> None:
        rid = request_id(msg)
        try:
            duplicate = rid in self.running or self.journal.seen(rid)
        except OSError as exc:  # unknown whether it ran: at most once means not running it
            await self._exit(rid, "failed", "cannot read the command id journal %s: %s" % (
                self.journal.path, exc.strerror or exc))
            return
        if duplicate:
            await self._exit(rid, "duplicate", "command %s was already run on this node" % rid)
            return
        try:
            argv = self._argv(msg)
            timeout = msg.get("timeout")
            if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                        or not 0 < timeout <= 7 * 86400):
                raise RequestError("timeout: expected seconds from 0 to 604800, got %r" % (timeout,))
            cap = int_field(msg, "cap", 0, 1 << 40, DEFAULT_CAP)
        except RequestError as exc:
            await self._exit(rid, "failed", "bad request: %s" % exc)
            return
        if len(self.running) + len(self.starting) >= self.max_running:
            await self._exit(rid, "refused", "this node already runs %d commands (the limit)" % self.max_running)
            return
        try:
            self.journal.record(rid)
        except OSError as exc:  # without the record, running could break at-most-once: refuse
            await self._exit(rid, "failed", "cannot record the command id in %s: %s" % (self.journal.path,
                                                                                      exc.strerror or exc))
            return
        self.starting[rid] = False
        self.spawn(self._run(rid, argv, float(timeout) if timeout else None, cap))

    @staticmethod
    def _argv(msg: Dict[str, Any]) -> List[str]:
        argv, shell = msg.get("argv"), msg.get("shell")
        if (argv is None) == (shell is None):
            raise RequestError("exactly one of argv and shell must be given")
        if shell is not None:
            if not isinstance(shell, str) or not shell.strip() or "\0" in shell:
                raise RequestError("shell: expected a non-empty command string")
            return ["/bin/sh", "-c", shell]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise RequestError("argv: expected a non-empty list of strings")
        return argv

    async def on_cancel(self, msg: Dict[str, Any]) -> None:
        rid = request_id(msg)
        cmd = self.running.get(rid)
        if cmd is not None:
            LOG.info("command %s: cancelled by the server", rid)
            cmd.stop("cancelled")
        elif rid in self.starting:  # the cancel came with the exec: stopped as soon as it runs, if ever
            LOG.info("command %s: cancelled by the server while starting", rid)
            self.starting[rid] = True

    async def _run(self, rid: str, argv: List[str], timeout: Optional[float], cap: int) -> None:
        started = None  # type: Optional[Tuple[asyncio.subprocess.Process, CommandProtocol]]
        try:
            if not self.starting[rid]:  # else cancelled before its turn came: never started
                started = await start_command(argv)
        except OSError as exc:
            await self._exit(rid, "failed", "cannot run %s: %s" % (argv[0], exc.strerror or exc), wait=30)
            return
        finally:
            cancelled = self.starting.pop(rid)
        if started is None:
            LOG.info("command %s: cancelled before it started", rid)
            await self._exit(rid, "cancelled", "cancelled before it started", wait=300)
            return
        proc, protocol = started
        cmd = RunningCommand(rid, proc)
        self.running[rid] = cmd
        LOG.info("command %s: started pid %d: %s", rid, proc.pid, " ".join(argv)[:200])
        if cancelled:  # while its process was being made
            cmd.stop("cancelled")
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, cmd.stop, "timeout") if timeout else None
        budget = {"left": cap, "truncated": False}
        try:
            await self.link.send({"type": "exec_started", "id": rid, "pid": proc.pid}, 30)
            pumps = [asyncio.ensure_future(self._pump(rid, proc.stdout, "stdout", budget)),  # type: ignore[arg-type]
                     asyncio.ensure_future(self._pump(rid, proc.stderr, "stderr", budget))]  # type: ignore[arg-type]
            await protocol.exited.wait()
            rc = proc.returncode
            assert rc is not None
            # a background child may keep the pipes open: read what comes for a moment, then stop
            _, late = await asyncio.wait(pumps, timeout=PIPE_GRACE)
            for p in late:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:  # the daemon is stopping
            kill_group(proc.pid, signal.SIGKILL)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if cmd.kill_timer is not None:
                cmd.kill_timer.cancel()
            if cmd.reason:  # timeout/cancel: nothing of the group outlives the command
                kill_group(proc.pid, signal.SIGKILL)
            self.running.pop(rid, None)
        code, sig = (rc, None) if rc >= 0 else (None, -rc)
        reason = cmd.reason or "exited"
        message = {"timeout": "killed after the %s s timeout" % (("%g" % timeout) if timeout else "?"),
                   "cancelled": "cancelled"}.get(reason, "exit code %d" % rc if rc >= 0 else "killed by signal %d" % -rc)
        if budget["truncated"]:
            message += "; output truncated at %d bytes" % cap
        LOG.info("command %s: %s", rid, message)
        await self._exit(rid, reason, message, code, sig, bool(budget["truncated"]), wait=300)

    async def _pump(self, rid: str, stream: asyncio.StreamReader, name: str, budget: Dict[str, Any]) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            # reading only after the previous chunk is sent: a chatty command fills its pipe and waits,
            # the websocket reader never does
            data = await stream.read(READ_CHUNK)
            text = decoder.decode(data, final=not data)
            if text:
                raw = text.encode("utf-8")
                if len(raw) > budget["left"]:
                    budget["truncated"] = True
                    raw = raw[:budget["left"]]
                    text = raw.decode("utf-8", "ignore")
                budget["left"] -= len(raw)
                if text:
                    await self.link.send({"type": "exec_output", "id": rid, "stream": name, "data": text}, 60)
            if not data:
                return

    def stop_all(self) -> None:
        for cmd in list(self.running.values()):
            kill_group(cmd.proc.pid, signal.SIGKILL)


class ShellSession:
    def __init__(self, rid: str, proc: subprocess.Popen, master: int) -> None:  # type: ignore[type-arg]
        self.id = rid
        self.proc = proc
        self.master = master
        self.input = bytearray()
        self.input_ready = asyncio.Event()
        self.tasks = []  # type: List[asyncio.Future]
        self.closed = False
        self.ended = asyncio.Event()
        self.message = ""


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ShellManager:
    """Interactive shells: the configured user's login shell on a PTY, in its own session."""

    def __init__(self, link: Link, user: Optional[str], max_sessions: int = MAX_SHELLS) -> None:
        self.link = link
        self.user = user
        self.max_sessions = max_sessions
        self.sessions = {}  # type: Dict[str, ShellSession]

    def _account(self) -> Any:
        if self.user is None:
            try:
                return pwd.getpwuid(os.getuid())
            except KeyError:
                raise RequestError("the daemon's uid %d has no passwd entry: give --shell-user" % os.getuid()) from None
        try:
            account = pwd.getpwnam(self.user)
        except KeyError:
            raise RequestError("no user %r on this node (--shell-user)" % self.user) from None
        if os.getuid() != 0 and account.pw_uid != os.getuid():
            raise RequestError("the daemon runs as uid %d and cannot start a shell as %s" % (os.getuid(), self.user))
        return account

    async def on_open(self, msg: Dict[str, Any]) -> None:
        rid = request_id(msg)
        try:
            if rid in self.sessions:
                raise RequestError("shell %s is already open" % rid)
            if len(self.sessions) >= self.max_sessions:
                raise RequestError("this node already has %d shells open (the limit)" % self.max_sessions)
            cols = int_field(msg, "cols", 1, 1000, 80)
            rows = int_field(msg, "rows", 1, 1000, 24)
            term = msg.get("term") or "xterm-256color"
            if not isinstance(term, str) or not re.match(r"^[A-Za-z0-9._+-]{1,64}$", term):
                raise RequestError("term: expected a terminal type name like xterm-256color")
            session = self._start(rid, self._account(), cols, rows, term)
        except RequestError as exc:
            await self.link.send({"type": "shell_exit", "id": rid, "code": None, "message": str(exc)})
            return
        except OSError as exc:
            await self.link.send({"type": "shell_exit", "id": rid, "code": None,
                                  "message": "cannot start a shell: %s" % (exc.strerror or exc)})
            return
        self.sessions[rid] = session
        LOG.info("shell %s: opened pid %d (%dx%d)", rid, session.proc.pid, cols, rows)
        await self.link.send({"type": "shell_opened", "id": rid, "pid": session.proc.pid})
        session.tasks = [asyncio.ensure_future(self._output(session)), asyncio.ensure_future(self._input(session))]

    def _start(self, rid: str, account: Any, cols: int, rows: int, term: str) -> ShellSession:
        shell = account.pw_shell if account.pw_shell and os.access(account.pw_shell, os.X_OK) else "/bin/sh"
        home = account.pw_dir if os.path.isdir(account.pw_dir) else "/"
        env = {"HOME": home, "USER": account.pw_name, "LOGNAME": account.pw_name, "SHELL": shell, "TERM": term,
               "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")}
        for name in ("LANG", "LC_ALL", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        drop = os.getuid() == 0 and account.pw_uid != 0
        name, uid, gid = account.pw_name, account.pw_uid, account.pw_gid

        def child_setup() -> None:  # runs in the child between fork and exec: system calls only
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # after setsid: the PTY becomes the controlling terminal
            os.umask(0o022)
            if drop:
                os.setgid(gid)
                os.initgroups(name, gid)
                os.setuid(uid)

        import pty  # shells only

        master, slave = pty.openpty()
        try:
            set_winsize(slave, rows, cols)
            proc = subprocess.Popen(["-" + os.path.basename(shell)], executable=shell, stdin=slave, stdout=slave,
                                    stderr=slave, cwd=home, env=env, start_new_session=True,
                                    preexec_fn=child_setup, close_fds=True)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return ShellSession(rid, proc, master)

    async def _output(self, s: ShellSession) -> None:
        exited = asyncio.ensure_future(self._wait_exit(s))
        hung = asyncio.ensure_future(s.ended.wait())
        try:
            while not s.closed:
                reader = asyncio.ensure_future(wait_fd(s.master, closed=lambda: s.closed))
                await asyncio.wait([reader, exited, hung], return_when=asyncio.FIRST_COMPLETED)
                if s.closed or not reader.done():  # hung up: s.master may be another file's number now
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                    if not s.closed:  # the shell exited: send what is left, then hang up
                        await self._drain(s)
                    break
                try:
                    data = os.read(s.master, MAX_PAYLOAD)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every process holding the terminal has gone
                    break
                if not data:
                    break
                await self.link.send({"type": "shell_output", "id": s.id, "data": base64.b64encode(data).decode()})
            self.hang_up(s)
            try:  # the hang-up ends the shell; its exit status is worth a short wait
                await asyncio.wait_for(asyncio.shield(exited), 2.0)
            except asyncio.TimeoutError:
                pass
        finally:
            hung.cancel()
            exited.cancel()
        rc = s.proc.poll()
        if not s.message:
            s.message = ("exit code %d" % rc) if rc is not None and rc >= 0 else \
                ("ended by signal %d" % -rc) if rc is not None else "closed"
        LOG.info("shell %s: %s", s.id, s.message)
        await self.link.send({"type": "shell_exit", "id": s.id, "code": rc if rc is not None and rc >= 0 else None,
                              "message": s.message})

    async def _drain(self, s: ShellSession) -> None:
        for _ in range(64):  # bounded: at most 3 MiB of late output
            if s.closed:  # hung up while sending: s.master may be another file's number now
                return
            try:
                data = os.read(s.master, MAX_PAYLOAD)
            except OSError:
                return
            if not data:
                return
            await self.link.send({"type": "shell_output", "id": s.id, "data": base64.b64encode(data).decode()})

    @staticmethod
    async def _wait_exit(s: ShellSession) -> None:
        while s.proc.poll() is None:  # noqa: ASYNC110 - a Popen child: polled, no thread per shell
            await asyncio.sleep(0.1)

    async def _input(self, s: ShellSession) -> None:
        while not s.closed:
            await s.input_ready.wait()
            s.input_ready.clear()
            while s.input and not s.closed:
                try:
                    n = os.write(s.master, bytes(s.input[:MAX_PAYLOAD]))
                except BlockingIOError:
                    await wait_fd(s.master, writable=True, closed=lambda: s.closed)
                    continue
                except OSError:
                    return
                del s.input[:n]

    def _get(self, msg: Dict[str, Any]) -> Optional[ShellSession]:
        return self.sessions.get(msg.get("id"))  # type: ignore[arg-type]

    async def on_input(self, msg: Dict[str, Any]) -> None:
        s = self._get(msg)
        if s is None:
            return
        try:
            data = base64.b64decode(str(msg.get("data", "")), validate=True)
        except ValueError:
            LOG.warning("shell %s: input that is not base64; ignored", s.id)
            return
        if len(s.input) + len(data) > SHELL_INPUT_MAX:
            s.message = "closed: more than %d bytes of input the shell did not read" % SHELL_INPUT_MAX
            self.hang_up(s)
            return
        s.input += data
        s.input_ready.set()

    async def on_resize(self, msg: Dict[str, Any]) -> None:
        s = self._get(msg)
        if s is None:
            return
        try:
            set_winsize(s.master, int_field(msg, "rows", 1, 1000), int_field(msg, "cols", 1, 1000))
        except (RequestError, OSError) as exc:
            LOG.warning("shell %s: resize ignored: %s", s.id, exc)

    async def on_close(self, msg: Dict[str, Any]) -> None:
        s = self._get(msg)
        if s is not None:
            s.message = "closed by the server"
            self.hang_up(s)

    def hang_up(self, s: ShellSession) -> None:
        """End a session: SIGHUP to everything in it, the PTY closed, SIGKILL for what remains."""
        if s.closed:
            return
        s.closed = True
        self.sessions.pop(s.id, None)
        s.input_ready.set()
        s.ended.set()
        kill_session(s.proc.pid, signal.SIGHUP)
        kill_session(s.proc.pid, signal.SIGCONT)
        loop = asyncio.get_running_loop()
        # before the close: the number may be reused at once, and the waits on it (wait_fd, told by
        # s.closed) then leave alone what is registered under it
        loop.remove_reader(s.master)
        loop.remove_writer(s.master)
        try:
            os.close(s.master)
        except OSError:
            pass
        loop.call_later(1.0, self._reap, s, 0)

    def _reap(self, s: ShellSession, attempt: int) -> None:
        kill_session(s.proc.pid, signal.SIGKILL)
        if s.proc.poll() is None and attempt < 50:
            asyncio.get_running_loop().call_later(0.2, self._reap, s, attempt + 1)

    def close_all(self, message: str, kill: bool = False) -> None:
        """Hang up every session; with `kill` (the daemon is stopping) SIGKILL what is left at once."""
        for s in list(self.sessions.values()):
            s.message = message
            self.hang_up(s)
            if kill:
                kill_session(s.proc.pid, signal.SIGKILL)
                s.proc.poll()


class Tunnel:
    def __init__(self, rid: str, writer: asyncio.StreamWriter) -> None:
        self.id = rid
        self.writer = writer
        self.task = None  # type: Optional[asyncio.Future]
        self.closed = False


class TunnelManager:
    """TCP tunnels: a connection from this node to HOST:PORT, relayed over the websocket."""

    def __init__(self, link: Link, spawn: Callable[[Awaitable[None]], None], max_tunnels: int = MAX_TUNNELS) -> None:
        self.link = link
        self.spawn = spawn
        self.max_tunnels = max_tunnels
        self.tunnels = {}  # type: Dict[str, Tunnel]
        self.opening = set()  # type: set

    async def _closed(self, rid: str, message: str) -> None:
        await self.link.send({"type": "tunnel_closed", "id": rid, "message": message})

    async def on_open(self, msg: Dict[str, Any]) -> None:
        rid = request_id(msg)
        try:
            host = msg.get("host")
            if not isinstance(host, str) or not 0 < len(host) <= 255 or not re.match(r"^[A-Za-z0-9.:_%-]+$", host):
                raise RequestError("host: expected a host name or address")
            port = int_field(msg, "port", 1, 65535)
            if rid in self.tunnels or rid in self.opening:
                raise RequestError("tunnel %s is already open" % rid)
            if len(self.tunnels) + len(self.opening) >= self.max_tunnels:
                raise RequestError("this node already has %d tunnels open (the limit)" % self.max_tunnels)
        except RequestError as exc:
            await self._closed(rid, str(exc))
            return
        self.opening.add(rid)
        self.spawn(self._open(rid, host, port))

    async def _open(self, rid: str, host: str, port: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TUNNEL_CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            await self._closed(rid, "%s:%d did not answer within %.0f s" % (host, port, TUNNEL_CONNECT_TIMEOUT))
            return
        except OSError as exc:
            await self._closed(rid, "cannot connect to %s:%d: %s" % (host, port, describe_connect_error(exc)))
            return
        finally:
            self.opening.discard(rid)
        t = Tunnel(rid, writer)
        self.tunnels[rid] = t
        LOG.info("tunnel %s: connected to %s:%d", rid, host, port)
        if not await self.link.send({"type": "tunnel_opened", "id": rid}):
            self._close(t)
            return
        t.task = asyncio.ensure_future(self._pump(t, reader, "%s:%d" % (host, port)))

    async def _pump(self, t: Tunnel, reader: asyncio.StreamReader, where: str) -> None:
        message = "closed by %s" % where
        try:
            while True:
                data = await reader.read(MAX_PAYLOAD)
                if not data:
                    break
                if not await self.link.send({"type": "tunnel_data", "id": t.id,
                                             "data": base64.b64encode(data).decode()}):
                    self._close(t)
                    return
        except OSError as exc:
            message = "connection to %s failed: %s" % (where, exc.strerror or exc)
        if not t.closed:
            self._close(t)
            await self._closed(t.id, message)

    async def on_data(self, msg: Dict[str, Any]) -> None:
        t = self.tunnels.get(msg.get("id"))  # type: ignore[arg-type]
        if t is None:
            return
        try:
            data = base64.b64decode(str(msg.get("data", "")), validate=True)
        except ValueError:
            self._close(t)
            await self._closed(t.id, "tunnel data that is not base64")
            return
        t.writer.write(data)
        if t.writer.transport.get_write_buffer_size() > TUNNEL_BUFFER_MAX:
            self._close(t)
            await self._closed(t.id, "the destination does not read: more than %d bytes waiting" % TUNNEL_BUFFER_MAX)

    async def on_close(self, msg: Dict[str, Any]) -> None:
        t = self.tunnels.get(msg.get("id"))  # type: ignore[arg-type]
        if t is not None:
            self._close(t)

    def _close(self, t: Tunnel) -> None:
        if t.closed:
            return
        t.closed = True
        self.tunnels.pop(t.id, None)
        if t.task is not None and t.task is not asyncio.current_task():
            t.task.cancel()
        t.writer.close()

    def close_all(self) -> None:
        for t in list(self.tunnels.values()):
            self._close(t)


class ActionRunner:
    """Tracked actions: reboot (a configurable command) and start/stop/restart of configured demos.

    Demos are configured in a JSON file (default STATE_DIR/demos.json):
    {"robot-arm": {"unit": "robot-arm.service"}, "kiosk": {"start": "...", "stop": "...", "restart": "..."}}
    """

    VERBS = {"restart_demo": "restart", "stop_demo": "stop", "start_demo": "start"}

    def __init__(self, link: Link, spawn: Callable[[Awaitable[None]], None], reboot_command: str,
                 demos_path: str, timeout: float = 120.0, supervisor: Optional["Supervisor"] = None) -> None:
        self.link = link
        self.supervisor = supervisor  # demos installed by the daemon (demos_desired) come before demos.json
        self.spawn = spawn
        self.reboot_command = reboot_command
        self.demos_path = demos_path
        self.timeout = timeout

    async def _state(self, rid: str, state: str, message: str) -> None:
        LOG.info("action %s: %s %s", rid, state, message)
        await self.link.send({"type": "action_state", "id": rid, "state": state, "message": message[:4000]}, 30)

    async def on_action(self, msg: Dict[str, Any]) -> None:
        rid = request_id(msg)
        action = msg.get("action")
        if action == "reboot":
            self.spawn(self._reboot(rid))
        elif action in self.VERBS:
            demo = msg.get("demo")
            if not isinstance(demo, str) or not demo:
                await self._state(rid, "failed", "%s needs a demo name" % action)
                return
            self.spawn(self._demo(rid, self.VERBS[action], demo[:128]))
        else:
            await self._state(rid, "failed", "unknown action %r" % str(action)[:64])

    async def _run(self, argv: List[str]) -> Tuple[Optional[int], str]:
        """Run a short command; (exit code or None on timeout, a tail of its output)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return 127, "cannot run %s: %s" % (argv[0], exc.strerror or exc)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except asyncio.TimeoutError:
            kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            return None, "no result within %.0f s" % self.timeout
        return proc.returncode, tail_text(out)

    async def _reboot(self, rid: str) -> None:
        await self._state(rid, "in_progress", "rebooting: %s" % self.reboot_command)
        code, out = await self._run(["/bin/sh", "-c", self.reboot_command])
        if code != 0:
            await self._state(rid, "failed", "the reboot command %s: %s" % (
                "timed out" if code is None else "exited with %d" % code, out or "(no output)"))
        # on success the machine goes down; the server says done when the node is back with a new boot time

    def _demo_config(self, demo: str) -> Dict[str, Any]:
        try:
            with open(self.demos_path, "rb") as f:
                config = json.loads(f.read(1 * MIB).decode("utf-8"))
        except FileNotFoundError:
            raise RequestError("demo %r is not configured on this node (no %s)" % (demo, self.demos_path)) from None
        except (OSError, ValueError) as exc:
            raise RequestError("cannot read %s: %s" % (self.demos_path, exc)) from None
        entry = config.get(demo) if isinstance(config, dict) else None
        if not isinstance(entry, dict):
            raise RequestError("demo %r is not configured on this node (add it to %s)" % (demo, self.demos_path))
        return entry

    async def _demo(self, rid: str, verb: str, demo: str) -> None:
        if self.supervisor is not None and self.supervisor.knows(demo):
            await self._state(rid, "in_progress", "%s %s (supervised by the daemon)" % (verb, demo))
            ok, message = await self.supervisor.act(verb, demo)
            await self._state(rid, "done" if ok else "failed", message)
            return
        try:
            entry = self._demo_config(demo)
            unit = entry.get("unit")
            if isinstance(unit, str) and unit:
                steps = [["systemctl", verb, "--", unit]]
            elif isinstance(entry.get(verb), str):
                steps = [["/bin/sh", "-c", entry[verb]]]
            elif verb == "restart" and isinstance(entry.get("stop"), str) and isinstance(entry.get("start"), str):
                steps = [["/bin/sh", "-c", entry["stop"]], ["/bin/sh", "-c", entry["start"]]]
            else:
                raise RequestError("demo %r has no unit and no %s command in %s" % (demo, verb, self.demos_path))
        except RequestError as exc:
            await self._state(rid, "failed", str(exc))
            return
        await self._state(rid, "in_progress", "%s %s" % (verb, demo))
        for argv in steps:
            code, out = await self._run(argv)
            if code != 0:
                await self._state(rid, "failed", "%s %s: %s%s" % (
                    verb, demo, "timed out" if code is None else "exit code %d" % code, (": " + out) if out else ""))
                return
        await self._state(rid, "done", "%s %s: ok" % (verb, demo))


async def http_get(url: str, ssl_context: Optional[ssl.SSLContext], limit: int, timeout: float = 60.0,
                   headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes]:
    """One GET (HTTP/1.0, no redirects) with a size bound: (status, body)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("not an http(s) URL: %r" % url[:200])
    secure = parts.scheme == "https"
    host = parts.hostname
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    request = ("GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: dvic-node/%s\r\n%s\r\n"
               % (path, parts.netloc, VERSION, extra)).encode()

    async def exchange() -> Tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, parts.port or (443 if secure else 80),
                                                       ssl=ssl_context if secure else None,
                                                       server_hostname=host if secure else None)
        try:
            writer.write(request)
            await writer.drain()
            status, _reason, head = parse_http_head(await reader.readuntil(b"\r\n\r\n"))
            body = await reader.read(limit + 1)
            while len(body) <= limit:
                more = await reader.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > limit:
                raise ValueError("response larger than %d bytes" % limit)
            if "chunked" in head.get("transfer-encoding", "").lower():
                body = decode_chunked(body)
            return status, body
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)


class Updater:
    """Self-update: download, verify (sha256 + RSA signature), replace this file, restart, roll back.

    STATE_DIR/update.json carries an update across the restart: {"id", "version", "from", "deadline",
    "phase": "restarting" | "rolled_back", "message"}. The new daemon deletes it once welcomed; if it is
    not welcomed before the deadline it restores dvic_node.py.prev and restarts; a watchdog process
    forked before the restart does the same if the new file cannot even run.
    """

    def __init__(self, daemon: "Daemon", path: str, deadline: float) -> None:
        self.daemon = daemon
        self.path = path  # this daemon's own file
        self.deadline = deadline
        self.state_path = os.path.join(daemon.opts.state_dir, "update.json")
        self.key_path = os.path.join(daemon.opts.state_dir, "release_key.json")
        self.busy = False
        self.pending = None  # type: Optional[Dict[str, Any]]
        self._rollback_timer = None  # type: Optional[asyncio.TimerHandle]

    def trusted_key(self) -> Dict[str, Any]:
        """The newest release key this node trusts: the persisted rotation, else the bundle's."""
        raw = read_text(self.key_path)
        if raw:
            try:
                key = json.loads(raw)
                if isinstance(key, dict) and isinstance(key.get("n"), str) and isinstance(key.get("e"), int):
                    return key
            except ValueError:
                LOG.warning("update: ignoring an unreadable %s", self.key_path)
        key = self.daemon.bundle.get("release_key")
        return key if isinstance(key, dict) else {}

    async def _state(self, rid: str, state: str, message: str, wait: float = 0.0) -> None:
        (LOG.warning if state in ("refused", "failed", "rolled_back") else LOG.info)(
            "update %s: %s: %s", rid, state, message)
        await self.daemon.link.send({"type": "update_state", "id": rid, "state": state, "message": message[:4000]},
                                    wait)

    async def on_update(self, msg: Dict[str, Any]) -> None:
        rid = request_id(msg)
        version, url, sha, sig = msg.get("version"), msg.get("url"), msg.get("sha256"), msg.get("signature")
        if not all(isinstance(v, str) and v for v in (version, url, sha, sig)):
            await self._state(rid, "refused", "bad request: version, url, sha256 and signature are required")
            return
        if parse_version(version) <= parse_version(VERSION):  # type: ignore[arg-type]
            await self._state(rid, "refused", "version %s is not newer than the running %s" % (version, VERSION))
            return
        if self.busy:
            await self._state(rid, "refused", "an update is already in progress")
            return
        self.busy = True
        try:
            await self._update(rid, version, url, sha.lower(), sig, msg.get("endorsements"))  # type: ignore[arg-type]
        finally:
            self.busy = False

    async def _update(self, rid: str, version: str, url: str, sha: str, sig: str, endorsements: Any) -> None:
        await self._state(rid, "downloading", url)
        if url.startswith("http://") and not self.daemon.bundle["ws_url"].startswith("ws://"):
            await self._state(rid, "refused", "plain-HTTP download refused: the server is reached over TLS")
            return
        try:
            status, data = await http_get(url, self.daemon.ssl_context, UPDATE_MAX_BYTES)
        except (OSError, ValueError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ssl.SSLError) as exc:
            await self._state(rid, "failed", "download failed: %s" % describe_connect_error(exc))
            return
        if status != 200:
            await self._state(rid, "failed", "download failed: HTTP %d %s" % (status, tail_text(data, 200)))
            return
        problem = await self.verify(data, version, sha, sig, endorsements)
        if problem:
            await self._state(rid, "refused", problem)
            return
        await self._state(rid, "verified", "%d bytes, sha256 %s, signed by the release key" % (len(data), sha[:16]))
        try:
            self.install(data)
            self.save_state({"id": rid, "version": version, "from": VERSION, "phase": "restarting",
                             "deadline": time.time() + self.deadline, "message": ""})
        except OSError as exc:
            await self._state(rid, "failed", "cannot replace %s: %s" % (self.path, exc.strerror or exc))
            return
        await self._state(rid, "restarting", "restarting into version %s" % version)
        self.daemon.restart(watchdog=True)

    async def verify(self, data: bytes, version: str, sha: str, sig: str, endorsements: Any) -> str:
        """'' when the file may be installed, else why not."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            return "sha256 mismatch: the file has %s, the server announced %s" % (actual, sha[:64])
        key = self.trusted_key()
        if not key:
            return "no release key is pinned in the bundle"
        if not rsa_verify_sha256(data, sig, key):
            if endorsements is None:
                endorsements = await self._fetch_endorsements()
            chain = follow_endorsements(key, endorsements)
            if not rsa_verify_sha256(data, sig, chain[-1]):
                return "bad signature: the file is not signed by the pinned release key or a key it endorsed"
            write_file_atomic(self.key_path, json.dumps(chain[-1]).encode())  # rotation: trust the newest key
            LOG.warning("update: the release key was rotated; now trusting key %s...", chain[-1]["n"][:16])
        match = VERSION_LINE_RE.search(data)
        if match is None:
            return "the downloaded file has no VERSION line"
        if match.group(1).decode() != version:
            return "the file says version %s, the server announced %s" % (match.group(1).decode(), version)
        try:
            compile(data, self.path, "exec")
        except (SyntaxError, ValueError) as exc:
            return "the file is not valid Python: %s" % exc
        return ""

    async def _fetch_endorsements(self) -> Any:
        """GET /api/v1/node/release for the key rotation endorsements (None when not available).

        The node route: this node authenticates as on its websocket, with its client certificate
        (the token only counts in plain-HTTP development mode).
        """
        base = str(self.daemon.bundle.get("server_url") or "")
        if not base:
            return None
        try:
            status, body = await http_get(base.rstrip("/") + "/api/v1/node/release", self.daemon.ssl_context,
                                          1 * MIB,
                                          headers={"Authorization": "Bearer " + str(self.daemon.bundle["token"])})
            if status == 200:
                return json.loads(body.decode("utf-8")).get("endorsements")
            LOG.info("update: endorsements not available: HTTP %d", status)
        except (OSError, ValueError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ssl.SSLError, AttributeError) as exc:
            LOG.info("update: endorsements not available: %s", exc)
        return None

    def install(self, data: bytes) -> None:
        """Replace this file atomically, keeping the running one as dvic_node.py.prev, and compile it."""
        with open(self.path, "rb") as f:
            current = f.read()
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        write_file_atomic(self.path + ".prev", current, mode, sync=True)
        write_file_atomic(self.path, data, mode, sync=True)
        self.compile()

    def compile(self) -> None:
        """The bytecode the restarted daemon loads (without it, it compiles the source: slower, more memory)."""
        problem = compile_bytecode(self.path)
        if problem:
            LOG.warning("update: cannot write the bytecode of %s (%s); the daemon compiles it at each start",
                        self.path, problem)

    def save_state(self, state: Optional[Dict[str, Any]]) -> None:
        if state is None:
            try:
                os.unlink(self.state_path)
            except FileNotFoundError:
                pass
        else:
            write_file_atomic(self.state_path, json.dumps(state).encode(), sync=True)

    def load_state(self) -> Optional[Dict[str, Any]]:
        raw = read_text(self.state_path)
        if raw is None:
            return None
        try:
            state = json.loads(raw)
        except ValueError:
            state = None
        if not isinstance(state, dict) or not isinstance(state.get("id"), str):
            LOG.warning("update: ignoring an unreadable %s", self.state_path)
            self.save_state(None)
            return None
        return state

    def on_start(self) -> None:
        """After a restart: arm the rollback deadline, or remember a rollback to report."""
        state = self.load_state()
        if state is None:
            return
        self.pending = state
        if state.get("phase") == "restarting":
            if state.get("version") != VERSION:  # not the file we installed (restarted by hand?)
                self.pending = dict(state, phase="rolled_back",
                                    message="the daemon restarted at version %s, not %s" % (VERSION, state.get("version")))
                self.save_state(self.pending)
                return
            left = float(state.get("deadline", 0)) - time.time()
            LOG.info("update: running the new version %s; rolling back unless welcomed within %.0f s", VERSION, left)
            self._rollback_timer = asyncio.get_running_loop().call_later(max(0.0, left), self.roll_back)

    def roll_back(self) -> None:
        state = self.pending or {}
        why = "version %s was not welcomed by the server within %.0f s" % (VERSION, self.deadline)
        if self.daemon._last_conn_error:
            why += " (%s)" % self.daemon._last_conn_error
        try:
            with open(self.path + ".prev", "rb") as f:
                previous = f.read()
            write_file_atomic(self.path, previous, stat.S_IMODE(os.stat(self.path).st_mode), sync=True)
            self.save_state(dict(state, phase="rolled_back", message=why))
        except OSError as exc:
            LOG.error("update: cannot roll back to %s.prev: %s", self.path, exc)
            return
        self.compile()
        LOG.warning("update: %s; rolled back to the previous file, restarting", why)
        self.daemon.restart(watchdog=False)

    async def on_welcome(self) -> None:
        state = self.pending
        if state is None:
            return
        self.pending = None
        if self._rollback_timer is not None:
            self._rollback_timer.cancel()
        self.save_state(None)  # confirmed (or reported below): the watchdog stands down
        if state.get("phase") == "rolled_back":
            await self._state(state["id"], "rolled_back", str(state.get("message", ""))[:3000], 30)
        else:
            LOG.info("update: version %s welcomed by the server", VERSION)


def process_gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie waiting for its parent counts as gone)."""
    raw = read_text("/proc/%d/stat" % pid, 4096)
    return raw is None or raw.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def update_watchdog(state_path: str, daemon_path: str, pid: int, argv: List[str], grace: float = 10.0) -> None:
    """Forked before the restart, with this (old) code in memory: if the new file dies, or neither gets
    welcomed nor rolls itself back by the deadline (+ grace), restore the previous file and run it.
    Under systemd (INVOCATION_ID set) the restart is left to systemd; elsewhere this process becomes
    the daemon."""
    try:
        os.setsid()  # not killed with the terminal/process group of the daemon
    except OSError:
        pass
    deadline = None  # type: Optional[float]
    why = "the new version did not start"
    while True:
        raw = read_text(state_path)
        try:
            state = json.loads(raw) if raw else None
        except ValueError:
            state = None
        if not isinstance(state, dict) or state.get("phase") != "restarting":
            os._exit(0)  # welcomed, or already rolled back
        if deadline is None:
            deadline = float(state.get("deadline", 0)) + grace
        if process_gone(pid):
            why = "version %s exited before it was welcomed" % state.get("version")
            break
        if time.time() > deadline:
            why = "version %s hung: not welcomed and not rolled back" % state.get("version")
            break
        time.sleep(0.2)  # a lone watchdog process, not a test: polling a file is all it does
    try:
        with open(daemon_path + ".prev", "rb") as f:
            write_file_atomic(daemon_path, f.read(), stat.S_IMODE(os.stat(daemon_path).st_mode), sync=True)
        write_file_atomic(state_path, json.dumps(dict(state, phase="rolled_back",
                                                      message=why + "; restored by the watchdog")).encode())
    except OSError:
        os._exit(1)
    compile_bytecode(daemon_path)  # best effort: a stale .pyc is only ignored
    if not process_gone(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if os.environ.get("INVOCATION_ID"):  # systemd restarts the unit with the restored file
        os._exit(0)
    os.execv(argv[0], argv)


# ---------------------------------------------------------------------------------------------
# The demo shim: runs one supervised demo and writes its output as a dvic_log file
# ---------------------------------------------------------------------------------------------
# The daemon starts it for every run of a supervised demo (see Supervisor._spawn) as
# `python3 -I -S -c SHIM_LAUNCHER dvic_node.py SPEC`: the launcher executes only the lines between
# the two markers below, so a shim costs a bare interpreter (about 10 MB) instead of the whole
# daemon's imports (about 24 MB). The section may use only the modules SHIM_LAUNCHER imports and what
# it defines itself. `python3 dvic_node.py --run-demo SPEC` runs the same code (imported whole).
# The shim owns the demo's stdout/stderr pipes, so a daemon restart does not break them (the demo would
# get SIGPIPE); it is the session leader, the demo runs in its own process group of that session.

# >>> demo shim
SHIM_LINE_MAX = 64 * 1024  # a longer output line is written as several records (as dvic_log run does)
SHIM_DRAIN_S = 2.0  # after the demo exits, how long a background child may keep its output open
SHIM_LOG_MAX_BYTES = 8 * 1024 * 1024  # the size cap of each log file (dvic_log's default)
SHIM_EXIT_BUSY = 75  # another shim holds this demo's lock: nothing was started
SHIM_EXIT_CANNOT_START = 127
SHIM_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")  # passed on to the demo
SHIM_LOGGER = "dvic-node"  # the logger of the shim's own records (the demo's exit)


def shim_pid_start(pid: int) -> Optional[int]:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None when unknown."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def shim_write_json(path: str, obj: Dict[str, Any]) -> None:
    """Replace `path` atomically (the daemon reads it at any moment)."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def shim_record(level: str, msg: str, logger: Optional[str] = None) -> bytes:
    """One dvic_log record line (docs/log-format.md): UTF-8, the line separators JSON leaves raw escaped."""
    record = {"ts": round(time.time(), 3), "level": level, "msg": msg}  # type: Dict[str, Any]
    if logger:
        record["logger"] = logger
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")
    return (text + "\n").encode("utf-8", "replace")


class ShimLog:
    """A dvic_log version 1 file of the demo (header pid = the demo's process), with the format's rotation."""

    def __init__(self, directory: str, header: Dict[str, Any], max_bytes: int) -> None:
        self.max_bytes = max(4096, max_bytes)
        self.header = dict(header)
        self.rotated = 0
        self.fd = -1
        for _ in range(16):  # a name that exists (even a planted symlink) is never opened: draw again
            token = os.urandom(8).hex()
            self.path = os.path.join(directory, "dvic_log_" + token)
            self.header["token"] = token
            try:
                self.fd = self._create(self.path, self._header_line())
                break
            except FileExistsError:
                continue
        if self.fd < 0:
            raise OSError("no free dvic_log name in %s" % directory)

    def _header_line(self) -> bytes:
        header = dict(self.header, rotated=self.rotated) if self.rotated else self.header
        return (json.dumps(header, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace")

    @staticmethod
    def _create(path: str, first: bytes) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, first)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, level: str, msg: str, logger: Optional[str] = None) -> None:
        """Append one record (cut to fit the cap, as dvic_log does); rotate first when the file is full."""
        line = shim_record(level, msg, logger)
        room = self.max_bytes - len(self._header_line()) - 24
        text = msg
        while len(line) > room and text:  # rare: output lines are at most 64 KiB
            raw = text.encode("utf-8")
            text = raw[:max(0, len(raw) - (len(line) - room) - 32)].decode("utf-8", "ignore")
            line = shim_record(level, text + " [dvic_log: truncated]", logger)
        if os.fstat(self.fd).st_size + len(line) > self.max_bytes:
            self._rotate()
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view):]

    def _rotate(self) -> None:
        """The full file gets the name .1 (a hard link), a prepared .new replaces the live name."""
        self.rotated += 1
        prepared = self.path + ".new"
        for stale in (prepared, self.path + ".1"):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        new_fd = self._create(prepared, self._header_line())
        os.link(self.path, self.path + ".1", follow_symlinks=False)
        os.rename(prepared, self.path)
        os.close(self.fd)
        self.fd = new_fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def shim_spawn(spec: Dict[str, Any], out_w: int, err_w: int) -> Tuple[int, str]:
    """Fork and exec the demo in its own process group: (pid, '' or why it could not start)."""
    err_r, err_pipe = os.pipe()  # close-on-exec: empty at EOF means the exec worked
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then exec or _exit
        step = "start"
        try:
            os.close(err_r)
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for name in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2",
                         "SIGCHLD"):
                signal.signal(getattr(signal, name), signal.SIG_DFL)  # Python ignores SIGPIPE and SIGXFSZ
            signal.set_wakeup_fd(-1)
            if spec.get("uid") is not None:
                step = "switch to user %s" % spec["user"]
                os.setgid(spec["gid"])
                os.initgroups(spec["user"], spec["gid"])
                os.setuid(spec["uid"])
            step = "enter the directory %s" % spec["cwd"]
            os.chdir(spec["cwd"])
            os.umask(0o022)
            step = "run %s" % spec["argv"][0]
            os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
        except OSError as exc:
            os.write(err_pipe, ("cannot %s: %s" % (step, exc.strerror or exc)).encode("utf-8", "replace"))
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent must hear it
            os.write(err_pipe, ("cannot %s: %r" % (step, exc)).encode("utf-8", "replace"))
        finally:
            os._exit(SHIM_EXIT_CANNOT_START)
    os.close(err_pipe)
    why = b""
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        why += chunk
    os.close(err_r)
    if why:
        os.waitpid(pid, 0)
    return pid, why.decode("utf-8", "replace")


def shim_exit_text(argv0: str, code: Optional[int], sig: Optional[int]) -> str:
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "%s was killed by %s" % (argv0, name)
    return "%s exited with status %s" % (argv0, code)


class ShimOutput:
    """One output stream of the demo: complete lines become records at its level."""

    def __init__(self, fd: int, level: str) -> None:
        self.fd = fd
        self.level = level
        self.buf = b""

    def lines(self, data: bytes) -> List[str]:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\n")
            if end < 0 or end > SHIM_LINE_MAX:
                break
            out.append(self._text(self.buf[:end]))
            self.buf = self.buf[end + 1:]
        while len(self.buf) > SHIM_LINE_MAX:  # no newline in sight: write it in pieces, never hold it all
            out.append(self._text(self.buf[:SHIM_LINE_MAX]))
            self.buf = self.buf[SHIM_LINE_MAX:]
        return out

    def rest(self) -> List[str]:
        rest, self.buf = self.buf, b""
        return [self._text(rest)] if rest else []

    @staticmethod
    def _text(raw: bytes) -> str:
        return (raw[:-1] if raw.endswith(b"\r") else raw).decode("utf-8", "replace")


def shim_main(argv: List[str]) -> int:
    """`--run-demo SPEC`: run the demo the daemon described in SPEC (JSON), write its stdout (INFO) and
    stderr (ERROR) lines to a dvic_log file, pass on stop signals, record its exit; exit with its status.

    SPEC: name, version, release, argv, cwd, env, user/uid/gid (only to drop privileges), log_dir,
    log_max_bytes, status (the JSON file this shim keeps up to date), lock (held while this shim runs).
    """
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    lock = os.open(spec["lock"], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return SHIM_EXIT_BUSY  # another shim runs this demo: never two at once
    status = {"shim_pid": os.getpid(), "shim_start": shim_pid_start(os.getpid()), "name": spec["name"],
              "version": spec["version"], "release": spec["release"], "pid": None, "pid_start": None,
              "started_at": round(time.time(), 3), "log": None, "exit": None, "error": None}  # type: Dict[str, Any]
    shim_write_json(spec["status"], status)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    pending = []  # type: List[int]
    for name in SHIM_SIGNALS:
        signal.signal(getattr(signal, name), lambda signum, frame: pending.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler makes SIGCHLD wake the select
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid, why = shim_spawn(spec, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    status["pid"], status["pid_start"] = pid, shim_pid_start(pid)
    log = shim_open_log(spec, pid, status["pid_start"])
    status["log"] = log.path if log is not None else None
    if why:
        status["error"] = why
        status["exit"] = {"code": SHIM_EXIT_CANNOT_START, "signal": None, "at": round(time.time(), 3)}
        if log is not None:
            shim_log_write(log, "CRITICAL", why, SHIM_LOGGER)
            log.close()
        shim_write_json(spec["status"], status)
        return SHIM_EXIT_CANNOT_START
    shim_write_json(spec["status"], status)
    code, sig = shim_relay(pid, [ShimOutput(out_r, "INFO"), ShimOutput(err_r, "ERROR")], wake_r, pending, log)
    if log is not None:
        shim_log_write(log, "INFO" if code == 0 else "ERROR", shim_exit_text(spec["argv"][0], code, sig),
                       SHIM_LOGGER)
        log.close()
    status["exit"] = {"code": code, "signal": sig, "at": round(time.time(), 3)}
    shim_write_json(spec["status"], status)
    return code if code is not None else 128 + (sig or 0)


def shim_open_log(spec: Dict[str, Any], pid: int, pid_start: Optional[int]) -> Optional[ShimLog]:
    """The demo's log file; without one (a full disk, a bad log dir) the demo still runs, unlogged."""
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        exe = spec["argv"][0]
    header = {"dvic_log": 1, "token": "", "name": spec["name"], "pid": pid, "pid_start": pid_start, "exe": exe,
              "argv": [a[:256] for a in spec["argv"][:64]], "user": spec.get("user") or str(os.getuid()),
              "host": os.uname().nodename, "start": round(time.time(), 3)}
    try:
        return ShimLog(spec["log_dir"], header, int(spec.get("log_max_bytes") or SHIM_LOG_MAX_BYTES))
    except OSError as exc:
        sys.stderr.write("dvic-node demo shim %s: cannot create its log file in %s: %s\n"
                         % (spec["name"], spec["log_dir"], exc))
        return None


def shim_log_write(log: ShimLog, level: str, msg: str, logger: Optional[str] = None) -> bool:
    try:
        log.write(level, msg, logger)
        return True
    except OSError:  # a full disk: the line is lost, the demo keeps running (dvic_log run does the same)
        return False


def shim_relay(pid: int, outputs: List[ShimOutput], wake_r: int, pending: List[int],
               log: Optional[ShimLog]) -> Tuple[Optional[int], Optional[int]]:
    """Write the demo's output until it exited and its pipes closed (or SHIM_DRAIN_S after its exit);
    pass on the stop signals meanwhile. (exit code, signal) of the demo."""
    open_fds = {o.fd: o for o in outputs}
    result = None  # type: Optional[Tuple[Optional[int], Optional[int]]]
    drain_until = 0.0
    while open_fds or result is None:
        if result is None:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
            if done:
                result = ((os.WEXITSTATUS(wstatus), None) if os.WIFEXITED(wstatus)
                          else (None, os.WTERMSIG(wstatus)))
                drain_until = time.monotonic() + SHIM_DRAIN_S
        while pending:
            signum = pending.pop(0)
            if result is None:
                try:
                    os.killpg(pid, signum)
                except OSError:
                    pass
        if result is not None and (not open_fds or time.monotonic() >= drain_until):
            break
        timeout = 5.0 if result is None else max(0.0, drain_until - time.monotonic())
        try:
            ready, _, _ = select.select(list(open_fds) + [wake_r], [], [], timeout)
        except InterruptedError:
            continue
        for fd in ready:
            if fd == wake_r:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                continue
            out = open_fds[fd]
            data = os.read(fd, 65536)
            lines = out.lines(data) if data else out.rest()
            if not data:
                del open_fds[fd]
                os.close(fd)
            for text in lines:
                if log is not None:
                    shim_log_write(log, out.level, text)
    for fd, out in open_fds.items():
        for text in out.rest():
            if log is not None:
                shim_log_write(log, out.level, text)
        os.close(fd)
    assert result is not None
    return result
# <<< demo shim


# ---------------------------------------------------------------------------------------------
# Supervised demos: releases (manifest, download, verification, unpacking)
# ---------------------------------------------------------------------------------------------
# The server pushes the complete desired set (`demos_desired`, docs/protocol.md section 6); the daemon
# installs each release and runs it through the shim above. Layout, states and the decisions taken:
# docs/node-daemon.md, "Supervised demos".

# `python3 -I -S -c SHIM_LAUNCHER dvic_node.py SPEC`: only the shim's section of the file runs (see above)
# (annotations are compiled lazily, as with `from __future__ import annotations`: no typing module, 0.6 MB less)
SHIM_LAUNCHER = (
    "import __future__, errno, fcntl, json, os, select, signal, sys, time\n"
    "_p = sys.argv[1]\n"
    "with open(_p, encoding='utf-8') as _f:\n"
    "    _t = _f.read()\n"
    "_s, _e = _t.index('\\n# >>> demo shim\\n'), _t.index('\\n# <<< demo shim\\n')\n"
    "exec(compile('\\n' * _t.count('\\n', 0, _s) + _t[_s:_e], _p, 'exec',\n"
    "             __future__.annotations.compiler_flag, True))\n"
    "del _f, _t, _s, _e\n"
    "sys.exit(shim_main(sys.argv[2:]))\n")
DEMO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # the server's rule for names
DEMO_VERSION_RE = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,7}(-[A-Za-z0-9._]{1,64})?$")
SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESTART_POLICIES = ("always", "on-failure", "never")
INSTALL_STATES = ("queued", "downloading", "verifying", "installing", "stopping_old", "starting")
DEMO_MAX_UNPACKED = 4 * 1024 * MIB  # archive limits when the server sends none (it sends its own)
DEMO_MAX_MEMBERS = 100000
DEMO_HEADER_MAX = 1 * MIB  # a tar extended header (long name, pax record) larger than this is refused
MAX_DESIRED_DEMOS = 64
BACKOFF_MAX_S = 60.0  # restarts: at once, then 1 s doubling to this; in a crash loop always this
STABLE_RUN_S = 60.0  # a run this long resets the backoff and ends a crash loop
CRASHLOOP_EXITS, CRASHLOOP_WINDOW_S = 5, 60.0
HEALTHY_AFTER_S = 3.0  # without heartbeat_s a demo alive this long is healthy (at most start_timeout_s / 2)
STATUS_HEARTBEAT_REPORT_S = 10.0  # a demo_status only for a newer last_heartbeat: at most this often
DOWNLOAD_PROGRESS_S = 2.0  # demo_install downloading progress: at most this often
DOWNLOAD_STALL_S = 60.0  # no byte for this long ends a download attempt (it resumes)
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_CHUNK = 256 * KIB
SUPERVISE_TICK_S = 1.0  # liveness of re-adopted shims and health: checked this often (own shims: SIGCHLD)
SHIM_LOG_RUNS_KEPT = 5  # log files of earlier runs of a supervised demo kept (older ones: once read)
RESULTS_KEPT = 16  # final install results remembered per demo (a failed rollout is not retried)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class InstallError(Exception):
    """An install step failed; the message is the reason the server is told. `retry`: a later push of
    the same rollout tries again (a network problem); otherwise the rollout's result stands."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class BadArchive(Exception):
    """The release archive breaks a member rule or a limit (docs/node-daemon.md, "Unpacking")."""


def install_pause(state: str, version: str) -> bool:
    """Test only (DVIC_NODE_TEST_INSTALL_PAUSE=STATE or STATE@VERSION): stop installs at that state so a test
    can kill -9 the daemon there (docs/node-daemon.md). Never set it on a real node."""
    want = os.environ.get("DVIC_NODE_TEST_INSTALL_PAUSE", "")
    return bool(want) and want in (state, "%s@%s" % (state, version))


def boot_id() -> str:
    """This boot's id (changes at each reboot, not with the clock); DVIC_NODE_TEST_BOOT_TIME, which simulates a
    reboot for the facts, also gives another id here (test only)."""
    override = os.environ.get("DVIC_NODE_TEST_BOOT_TIME")  # test-only: simulates a reboot (docs/node-daemon.md)
    if override:
        return "test:" + override
    return (read_text("/proc/sys/kernel/random/boot_id") or "").strip() or str(proc_boot_time())


def number_field(doc: Dict[str, Any], key: str, lo: float, hi: float, default: Optional[float]) -> Optional[float]:
    value = doc.get(key, default)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise InstallError("manifest: %s: expected a number of seconds from %g to %g, got %r"
                           % (key, lo, hi, value))
    return float(value)


def relative_path(value: Any, what: str) -> str:
    """A path inside the release: relative, no '..' (the manifest's workdir and keep entries)."""
    if not isinstance(value, str) or not value or len(value) > 1024 or "\x00" in value:
        raise InstallError("manifest: %s: expected a relative path, got %r" % (what, value))
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if value.startswith("/") or ".." in parts:
        raise InstallError("manifest: %s: %r must stay inside the release (relative, no '..')" % (what, value))
    return "/".join(parts)


class DemoSpec:
    """How to run one release: its manifest (as the server sends it, JSON), checked again here."""

    def __init__(self, manifest: Any) -> None:
        if not isinstance(manifest, dict):
            raise InstallError("manifest: expected an object")
        self.manifest = manifest
        self.name = str(manifest.get("name"))
        self.version = str(manifest.get("version"))
        run = manifest.get("run")
        if isinstance(run, str) and run.strip():
            self.argv = ["/bin/sh", "-c", run]
        elif isinstance(run, list) and run and len(run) <= 256 and all(isinstance(a, str) for a in run) and run[0]:
            self.argv = list(run)
        else:
            raise InstallError("manifest: run: expected a command line or a list of arguments, got %r"
                               % (run if not isinstance(run, str) else "an empty line",))
        self.workdir = relative_path(manifest.get("workdir", "."), "workdir")  # "" for the release's root
        env = manifest.get("env") or {}
        if not isinstance(env, dict) or len(env) > 256 or not all(
                isinstance(k, str) and ENV_NAME_RE.match(k) and isinstance(v, str) and "\x00" not in v
                for k, v in env.items()):
            raise InstallError("manifest: env: expected a table of NAME = \"text\" entries")
        self.env = dict(env)  # type: Dict[str, str]
        user = manifest.get("user")
        if user is not None and (not isinstance(user, str) or not re.match(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$",
                                                                            user)):
            raise InstallError("manifest: user: expected a user name, got %r" % (user,))
        self.user = user  # type: Optional[str]
        self.restart = manifest.get("restart", "always")
        if self.restart not in RESTART_POLICIES:
            raise InstallError("manifest: restart: expected one of %s, got %r"
                               % (", ".join(RESTART_POLICIES), self.restart))
        self.start_timeout_s = number_field(manifest, "start_timeout_s", 1, 3600, 30) or 30.0
        self.heartbeat_s = number_field(manifest, "heartbeat_s", 1, 86400, None)
        self.stop_grace_s = number_field(manifest, "stop_grace_s", 0, 600, 10) or 0.0
        keep = manifest.get("keep") or []
        if not isinstance(keep, list) or len(keep) > 64:
            raise InstallError("manifest: keep: expected a list of relative paths")
        self.keep = [(relative_path(k, "keep"), k.endswith("/")) for k in keep]  # (path, is a directory)

    @property
    def healthy_after(self) -> float:
        return min(HEALTHY_AFTER_S, self.start_timeout_s / 2)


def parse_desired(item: Any) -> Dict[str, Any]:
    """One entry of `demos_desired.demos`, checked (InstallError says which field is wrong)."""
    if not isinstance(item, dict):
        raise InstallError("expected an object")
    out = {}  # type: Dict[str, Any]
    for key, rule in (("name", DEMO_NAME_RE), ("version", DEMO_VERSION_RE), ("sha256", SHA256_HEX_RE)):
        value = item.get(key)
        if not isinstance(value, str) or not rule.match(value):
            raise InstallError("%s: invalid value %r" % (key, str(value)[:80]))
        out[key] = value
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= 1024 * 1024 * MIB:
        raise InstallError("size: expected a number of bytes, got %r" % (size,))
    out["size"] = size
    url = item.get("url")
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise InstallError("url: expected the release's URL")
    out["url"] = url
    rollout = item.get("rollout")
    if rollout is not None and (not isinstance(rollout, str) or len(rollout) > 128):
        raise InstallError("rollout: expected a deployment id")
    out["rollout"] = rollout
    for key, default in (("max_unpacked_bytes", DEMO_MAX_UNPACKED), ("max_members", DEMO_MAX_MEMBERS)):
        value = item.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InstallError("%s: expected a positive integer, got %r" % (key, value))
        out[key] = value
    manifest = item.get("manifest")
    spec = DemoSpec(manifest)
    if spec.name != out["name"] or spec.version != out["version"]:
        raise InstallError("manifest: its name and version (%s %s) are not the release's (%s %s)"
                           % (spec.name, spec.version, out["name"], out["version"]))
    out["manifest"] = manifest
    return out


def release_dir_name(entry: Dict[str, Any]) -> str:
    return "%s-%s" % (entry["version"], entry["sha256"][:8])


def release_record(entry: Dict[str, Any]) -> Dict[str, Any]:
    """What state.json keeps of an installed release."""
    return {"version": entry["version"], "sha256": entry["sha256"], "dir": release_dir_name(entry),
            "manifest": entry["manifest"], "rollout": entry.get("rollout")}


def server_base(bundle: Dict[str, Any]) -> str:
    """https://host:port of the server (the bundle's server_url, else from ws_url)."""
    base = bundle.get("server_url")
    if isinstance(base, str) and base.startswith(("https://", "http://")):
        return base.rstrip("/")
    parts = urllib.parse.urlsplit(bundle["ws_url"])
    return "%s://%s" % ("https" if parts.scheme == "wss" else "http", parts.netloc)


def release_url(bundle: Dict[str, Any], url: str) -> str:
    """The absolute URL of a release; only on the server itself (the node presents its certificate there)."""
    base = server_base(bundle)
    full = urllib.parse.urljoin(base + "/", url)
    if urllib.parse.urlsplit(full)[:2] != urllib.parse.urlsplit(base)[:2]:
        raise InstallError("url: %s is not on the server %s" % (url[:200], base), retry=False)
    return full


class DownloadError(Exception):
    """A download attempt ended early (network, server); the next attempt resumes with a Range request."""


async def http_download(url: str, ssl_context: Optional[ssl.SSLContext], path: str, size: int,
                        headers: Dict[str, str], progress: Callable[[int], None], pause: bool = False) -> None:
    """GET `url` into `path`, resuming from its current length with `Range: bytes=N-` (206), or from
    the start when the server answers 200. DownloadError: try again; InstallError: the server refused;
    OSError: the local disk (a full disk)."""
    try:
        have = os.stat(path).st_size
    except FileNotFoundError:
        have = 0
    if have > size:
        have = 0
    if have == size:
        return  # complete already (a restart after the last byte)
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    head_lines = ["GET %s HTTP/1.0" % target, "Host: %s" % parts.netloc, "User-Agent: dvic-node/%s" % VERSION]
    if have:
        head_lines.append("Range: bytes=%d-" % have)
    head_lines.extend("%s: %s" % kv for kv in headers.items())
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            parts.hostname, parts.port or (443 if secure else 80), ssl=ssl_context if secure else None,
            server_hostname=parts.hostname if secure else None), 30)
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        raise DownloadError(describe_connect_error(exc)) from None
    fd = -1
    try:
        writer.write(("\r\n".join(head_lines) + "\r\n\r\n").encode())
        status, reason, head = parse_http_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                                                      DOWNLOAD_STALL_S))
        if status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+)$", head.get("content-range", ""))
            if not m or int(m.group(1)) != have or int(m.group(3)) != size:
                raise DownloadError("the server resumed at another place (%s)" % head.get("content-range"))
            start = have
        elif status == 200:
            start = 0
        elif status == 416:
            os.truncate(path, 0)  # our partial file does not match the server's: start again
            raise DownloadError("the server could not resume the partial download; starting again")
        else:
            body = await asyncio.wait_for(reader.read(2048), 10)
            raise InstallError("download refused: HTTP %d %s%s" % (status, reason, (": " + tail_text(body, 300))
                                                                   if body else ""), retry=True)
        if "chunked" in head.get("transfer-encoding", "").lower():
            raise DownloadError("the server sent a chunked response")
        length = head.get("content-length")
        if length is not None and (not length.isdigit() or start + int(length) != size):
            raise InstallError("the server sends %s bytes from %d, the release has %d" % (length, start, size))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, start)  # whatever lies beyond the resume point is not ours
        os.lseek(fd, start, os.SEEK_SET)
        got = start
        paused = False
        while got < size:
            try:
                chunk = await asyncio.wait_for(reader.read(min(DOWNLOAD_CHUNK, size - got)), DOWNLOAD_STALL_S)
            except asyncio.TimeoutError:
                raise DownloadError("no data for %.0f s after %d of %d bytes" % (DOWNLOAD_STALL_S, got, size)) \
                    from None
            if not chunk:
                raise DownloadError("the connection closed after %d of %d bytes" % (got, size))
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            got += len(chunk)
            progress(got)
            if pause and not paused:  # test only: a partial download
                paused = True
                LOG.warning("test pause in the download (DVIC_NODE_TEST_INSTALL_PAUSE=downloading)")
                await asyncio.sleep(3600)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, EOFError, ssl.SSLError,
            asyncio.TimeoutError) as exc:
        raise DownloadError(describe_connect_error(exc)) from None
    except ValueError as exc:  # not an HTTP response
        raise DownloadError(str(exc)) from None
    finally:
        if fd >= 0:
            os.close(fd)
        writer.close()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 * MIB)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Delete a directory tree (never following a symlink out of it); a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(top, name))
        for name in dirs:
            full = os.path.join(top, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(path)


def make_dir(path: str, mode: int = 0o755) -> None:
    """mkdir with exactly `mode` (whatever the umask: a demo running as another user must read its files)."""
    os.mkdir(path, mode)
    os.chmod(path, mode)


def member_path(raw: str) -> Optional[str]:
    """An archive member's path inside the release ('a/b'), None for the root itself; BadArchive for a
    path that could land outside it."""
    if "\x00" in raw or len(raw) > 4096:
        raise BadArchive("bad archive member %r: the name is too long or holds a NUL" % raw[:200])
    if raw.startswith("/"):
        raise BadArchive("bad archive member %r: absolute path" % raw)
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadArchive("bad archive member %r: '..' component" % raw)
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise BadArchive("bad archive member %r: a name component is longer than 255 bytes" % raw[:200])
    return "/".join(parts) if parts else None


class BoundedReader:
    """The decompressed tar stream, refusing to go past `limit` bytes: an archive bomb stops here, also in
    reads tarfile makes on its own (a huge extended header)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or self.count + n > self.limit:
            n = self.limit - self.count + 1
        data = self.raw.read(n)
        self.count += len(data)
        if self.count > self.limit:
            raise BadArchive("the archive unpacks to more than %d bytes (an archive bomb?)" % self.limit)
        return data


def unpack_release(archive: str, dest: str, max_bytes: int, max_members: int,
                   cancelled: threading.Event, pause: bool = False) -> None:
    """Unpack a tar.gz into `dest` (created here), checking every member as the server did at publish:
    regular files and directories; symlinks only to a target inside the release (and no member below a
    symlink); hard links only to a file unpacked before; no absolute path, no '..', no device, FIFO or
    other type; at most `max_bytes` of file content and `max_members` members. Files are fsynced, the
    directories too at the end. Runs in a worker thread (`cancelled` stops it between members)."""
    import gzip  # installs only: not worth their memory the rest of the time
    import tarfile

    class CheckedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tar: Any) -> Any:  # tarfile's hook for every header it reads
            if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                             tarfile.SOLARIS_XHDTYPE) and self.size > DEMO_HEADER_MAX:
                raise BadArchive("bad archive: an extended header of %d bytes (an archive bomb?)" % self.size)
            return super()._proc_member(tar)  # type: ignore[misc]

    regular = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
    kinds = {}  # type: Dict[str, str]  # member path -> "dir" | "file" | "link"
    make_dir(dest)
    dirs = [dest]
    total = members = 0
    paused = False
    # the stream itself: file content, plus 512-byte headers and padding for each member, plus slack
    limit = max_bytes + 2048 * max_members + 1 * MIB
    with gzip.open(archive, "rb") as raw:
        tar = tarfile.open(fileobj=BoundedReader(raw, limit), mode="r|", tarinfo=CheckedTarInfo)  # type: ignore
        for m in tar:
            if cancelled.is_set():
                raise InstallError("cancelled")
            members += 1
            if members > max_members:
                raise BadArchive("the archive has more than %d members (an archive bomb?)" % max_members)
            name = member_path(m.name)
            if name is None:
                continue
            what = "bad archive member %r: " % m.name
            parts = name.split("/")
            for i in range(1, len(parts)):
                above = "/".join(parts[:i])
                if kinds.get(above) == "link":
                    raise BadArchive(what + "it lies below the symlink %r" % above)
                if kinds.get(above) == "file":
                    raise BadArchive(what + "it lies below the file %r" % above)
                if above not in kinds:
                    kinds[above] = "dir"
                    make_dir(os.path.join(dest, above))
                    dirs.append(os.path.join(dest, above))
            if name in kinds and not (kinds[name] == "dir" and m.isdir()):
                raise BadArchive(what + "it appears twice")
            path = os.path.join(dest, name)
            if m.isdir():
                if name not in kinds:
                    make_dir(path)
                    dirs.append(path)
                kinds[name] = "dir"
            elif m.type in regular:
                total += m.size
                if total > max_bytes:
                    raise BadArchive("the archive unpacks to more than %d bytes (an archive bomb?)" % max_bytes)
                write_member(tar.extractfile(m), path, 0o755 if m.mode & 0o111 else 0o644, m.mtime)
                kinds[name] = "file"
                if pause and not paused:  # test only: a half-written directory
                    paused = True
                    LOG.warning("test pause while unpacking (DVIC_NODE_TEST_INSTALL_PAUSE=installing)")
                    cancelled.wait(3600)
            elif m.issym():
                target = m.linkname
                resolved = os.path.normpath(os.path.join(os.path.dirname(name), target)) if target else ".."
                if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
                    raise BadArchive(what + "a symlink to %r, outside the release" % target)
                os.symlink(target, path)
                kinds[name] = "link"
            elif m.islnk():
                try:
                    target = member_path(m.linkname)  # type: Optional[str]
                except BadArchive:  # absolute, '..': outside the release in any case
                    target = None
                if target is None or kinds.get(target) != "file":
                    raise BadArchive(what + "a hard link to %r, which is not a file unpacked before it" % m.linkname)
                os.link(os.path.join(dest, target), path, follow_symlinks=False)
                kinds[name] = "file"
            else:
                kind = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                        tarfile.FIFOTYPE: "a FIFO", tarfile.GNUTYPE_SPARSE: "a sparse file"}.get(
                            m.type, "a member of type %r" % m.type)
                raise BadArchive(what + "%s (only files, directories and links are allowed)" % kind)
    for d in reversed(dirs):
        fsync_dir(d)


def write_member(src: Any, path: str, mode: int, mtime: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        while True:
            chunk = src.read(1 * MIB)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.utime(path, (mtime, mtime))
    except (OSError, OverflowError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------
# Supervised demos: the install pipeline, supervision (restarts, crash loops) and health
# ---------------------------------------------------------------------------------------------

def restart_delay(step: int, crashloop: bool) -> float:
    """The wait before a restart: at once after a stable run (step 0), then 1 s doubling to
    BACKOFF_MAX_S; always BACKOFF_MAX_S in a crash loop."""
    if crashloop:
        return BACKOFF_MAX_S
    return 0.0 if step <= 0 else min(BACKOFF_MAX_S, 2.0 ** (step - 1))


def process_group(pid: Any) -> Optional[int]:
    """The process group of `pid` (field 5 of /proc/<pid>/stat), None when it is gone."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    raw = read_text("/proc/%d/stat" % pid, 4096)
    try:
        return int(raw.rsplit(")", 1)[1].split()[2]) if raw else None
    except (IndexError, ValueError):
        return None


def running(pid: Any, start: Any) -> bool:
    """`pid` runs and is the process that started at `start` (never a reused pid)."""
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and isinstance(start, int) \
        and pid_state("/proc", pid, start)


def lock_held(path: str) -> bool:
    """Whether a shim holds this demo's lock (it runs the demo)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def read_json(path: str) -> Optional[Dict[str, Any]]:
    raw = read_text(path, 4 * MIB)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class SupervisedDemo:
    """One demo the daemon installs and runs: its releases, its install in progress, its process, its health.

    STATE_DIR/demos/<name>/state.json keeps what must survive a restart (PERSISTED); proc.json is the shim's
    own record of the run (pids, exit), run.lock is held by the running shim.
    """

    PERSISTED = ("installed", "previous", "install", "results", "wanted", "stopped_by", "stop_reason",
                 "restarts", "exits", "step", "crashloop", "alarm", "logs", "boot_id", "seen_exit", "last_exit")

    def __init__(self, root: str, name: str) -> None:
        self.name = name
        self.dir = os.path.join(root, name)
        self.state_path = os.path.join(self.dir, "state.json")
        self.proc_path = os.path.join(self.dir, "proc.json")
        self.lock_path = os.path.join(self.dir, "run.lock")
        self.spec_path = os.path.join(self.dir, "run-spec.json")
        self.installed = None  # type: Optional[Dict[str, Any]]  # the release last healthy (release_record)
        self.previous = None  # type: Optional[Dict[str, Any]]  # the one before it: where a rollback goes
        self.install = None  # type: Optional[Dict[str, Any]]  # in progress: {"entry", "state", "deadline", ...}
        self.results = []  # type: List[Dict[str, Any]]  # final install results, newest last
        self.wanted = False  # should run (the restart policy, an operator's stop or a failed start say no)
        self.stopped_by = ""  # "operator" | "policy" | "failed" | "" (why not wanted)
        self.stop_reason = ""
        self.restarts = 0
        self.exits = []  # type: List[float]  # times of the exits within the crash-loop window
        self.step = 0  # backoff step
        self.crashloop = False
        self.alarm = ""  # "unhealthy" | "crashloop" while one of those events awaits its demo_recovered
        self.logs = []  # type: List[str]  # log files of the recent runs
        self.boot_id = ""
        self.seen_exit = 0  # shim pid whose exit was handled
        self.last_exit = None  # type: Optional[Dict[str, Any]]
        # at run time only
        self.release = None  # type: Optional[Dict[str, Any]]  # the release the process runs (or is to run)
        self.spec = None  # type: Optional[DemoSpec]
        self.popen = None  # type: Optional[subprocess.Popen]  # type: ignore[type-arg]  # a shim of this daemon
        self.proc = {}  # type: Dict[str, Any]  # proc.json of the running shim
        self.running = False
        self.started_mono = 0.0
        self.next_start = None  # type: Optional[float]  # time.monotonic() of a scheduled (re)start
        self.status = "stopped"
        self.message = ""
        self.since = time.time()
        self.tokens = {}  # type: Dict[str, bool]  # dvic_log files (demo keys) -> written by this run
        self.task = None  # type: Optional[asyncio.Future]  # type: ignore[type-arg]  # install or removal
        self.target = ""  # sha256 the task installs ("" for a removal)
        self.superseded = ""  # why the task was cancelled
        self.sent = None  # type: Optional[Tuple[Any, ...]]  # the last demo_status, as compared
        self.sent_heartbeat = None  # type: Optional[float]
        self.sent_at = 0.0
        self.progress_at = 0.0

    def load(self) -> bool:
        doc = read_json(self.state_path)
        if doc is None:
            return False
        for key in self.PERSISTED:
            if key in doc:
                setattr(self, key, doc[key])
        return True

    def save(self, sync: bool = False) -> None:
        doc = {key: getattr(self, key) for key in self.PERSISTED}
        write_file_atomic(self.state_path, json.dumps(doc).encode(), 0o600, sync=sync)

    def release_path(self, release: Dict[str, Any]) -> str:
        return os.path.join(self.dir, "releases", release["dir"])

    def child(self) -> Tuple[Optional[int], Optional[int]]:
        """(pid, start) of the demo process of the current run, once its shim has recorded them."""
        if self.running and not self.proc.get("pid"):
            doc = read_json(self.proc_path)
            if doc and doc.get("shim_pid") == self.proc.get("shim_pid"):
                self.proc = doc
        return self.proc.get("pid"), self.proc.get("pid_start")


class Supervisor:
    """Converges to the server's desired set of demos and keeps each one running (docs/node-daemon.md)."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon
        self.root = os.path.join(daemon.opts.state_dir, "demos")
        self.downloads = os.path.join(daemon.opts.state_dir, "downloads")
        self.demos = {}  # type: Dict[str, SupervisedDemo]
        self.heavy = asyncio.Semaphore(1)  # one download/verification/unpacking at a time (disk, network)
        self.converging = asyncio.Lock()
        self.changed = asyncio.Event()  # woken by SIGCHLD, a start, an action
        self.stopping = False  # the daemon stops: tasks are cancelled, nothing is rolled back or stopped
        self.boot = boot_id()

    # -- start and stop of the daemon --
    def load(self) -> None:
        """After the daemon (re)started: re-adopt running demos, start the others, resume installs."""
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return
        for name in names:
            if not DEMO_NAME_RE.match(name):
                continue
            sd = SupervisedDemo(self.root, name)
            if not sd.load():
                continue
            self.demos[name] = sd
            try:
                self._recover(sd)
            except (OSError, InstallError) as exc:
                LOG.error("demo %s: cannot take it back after the restart: %s", name, exc)

    def _recover(self, sd: SupervisedDemo) -> None:
        releases = os.path.join(sd.dir, "releases")
        for leftover in os.listdir(releases) if os.path.isdir(releases) else []:
            if leftover.startswith(".tmp-"):  # an unpacking the daemon was killed in: never a release
                remove_tree(os.path.join(releases, leftover))
        rebooted = bool(sd.boot_id) and sd.boot_id != self.boot
        proc = None if rebooted else read_json(sd.proc_path)
        target = sd.installed
        if proc and running(proc.get("shim_pid"), proc.get("shim_start")):
            target = self._release_named(sd, proc.get("release")) or target
            self._use_release(sd, target, keep_counters=True)
            self._adopt(sd, proc)
            LOG.info("demo %s: re-adopted the running version %s (pid %s)", sd.name, proc.get("version"),
                     proc.get("pid"))
        else:
            if proc:
                self._reap_orphan(proc)
            self._use_release(sd, target, keep_counters=True)
            if sd.release is not None and not sd.install:
                self._start_after_restart(sd, proc, rebooted)
        sd.boot_id = self.boot
        sd.save()
        if sd.install:
            entry = sd.install["entry"]
            LOG.info("demo %s: resuming the install of %s at %s", sd.name, entry["version"], sd.install.get("state"))
            self._launch(sd, entry["sha256"], self._install(sd, entry, resume=True))

    def _start_after_restart(self, sd: SupervisedDemo, proc: Optional[Dict[str, Any]], rebooted: bool) -> None:
        if rebooted:  # a reboot starts every installed demo an operator did not stop
            sd.wanted = sd.stopped_by != "operator"
            if sd.wanted:
                sd.stopped_by = sd.stop_reason = ""
                LOG.info("demo %s: starting it after the machine's reboot", sd.name)
                sd.next_start = time.monotonic()
            return
        if not sd.wanted:
            self._set_status(sd, "failed" if sd.stopped_by == "failed" else "stopped", sd.stop_reason)
            return
        if proc and proc.get("shim_pid") != sd.seen_exit and proc.get("exit"):  # it ended while we were away
            sd.proc = proc
            self._handle_exit(sd, proc, ran_for=max(0.0, float(proc["exit"].get("at") or 0)
                                                    - float(proc.get("started_at") or 0)))
        else:
            sd.next_start = time.monotonic()

    async def shutdown(self) -> None:
        """The daemon stops: installs are interrupted where they are (the next start resumes them) and
        the demos keep running (the next daemon re-adopts them)."""
        self.stopping = True
        tasks = [sd.task for sd in self.demos.values() if sd.task is not None and not sd.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- the supervision loop --
    def wake(self) -> None:
        self.changed.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGCHLD, self.wake)  # a shim of ours ended: restart within ms
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not the main thread
            pass
        try:
            while True:
                self.changed.clear()
                self.tick()
                await self._nap(self._next_tick())
        finally:
            try:
                loop.remove_signal_handler(signal.SIGCHLD)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                pass

    def _next_tick(self) -> float:
        now = time.monotonic()
        due = [sd.next_start for sd in self.demos.values() if sd.next_start is not None and sd.wanted]
        return max(0.0, min([SUPERVISE_TICK_S] + [d - now for d in due]))

    async def _nap(self, seconds: float) -> None:
        """Sleep `seconds` or until something happens (a child exited, a start is due)."""
        timer = asyncio.get_running_loop().call_later(seconds, self.changed.set)
        try:
            await self.changed.wait()
        finally:
            timer.cancel()

    def tick(self) -> None:
        for sd in list(self.demos.values()):
            try:
                self._tick(sd, time.monotonic())
            except Exception:  # noqa: BLE001 - one demo's bug must not end the supervision of the others
                LOG.exception("demo %s: unexpected error in its supervision (continuing)", sd.name)

    def _tick(self, sd: SupervisedDemo, now: float) -> None:
        if sd.running and self._gone(sd):
            self._exited(sd)
        if not sd.running and sd.wanted and sd.release is not None and sd.next_start is not None \
                and now >= sd.next_start:
            self._spawn(sd)
        if sd.running:
            self._health(sd)
        self._report_status(sd)
        self._prune_logs(sd)

    def _gone(self, sd: SupervisedDemo) -> bool:
        if sd.popen is not None:
            return sd.popen.poll() is not None
        pid = sd.proc.get("shim_pid")
        try:  # still our child after an update's re-exec (same pid): reap it, or /proc keeps a zombie
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, TypeError):
            pass
        return not running(pid, sd.proc.get("shim_start"))

    # -- starting, exits, stopping --
    def _spawn(self, sd: SupervisedDemo) -> None:
        """Start a run of the demo through its shim (never a second one: see lock_held)."""
        sd.next_start = None
        assert sd.release is not None and sd.spec is not None
        if lock_held(sd.lock_path):  # a shim runs it already (e.g. started just before a kill -9 of ours)
            proc = read_json(sd.proc_path)
            if proc and running(proc.get("shim_pid"), proc.get("shim_start")):
                self._adopt(sd, proc)
                return
        self._reap_orphan(read_json(sd.proc_path))
        try:
            if not os.path.isdir(os.path.join(sd.dir, "data")):  # DVIC_DEMO_DATA: the kept paths live there
                make_dir(os.path.join(sd.dir, "data"), 0o711)
            account = self.account(sd.spec)
            shim_spec = self._shim_spec(sd, account)
            self._allow_traversal(account)
            write_file_atomic(sd.spec_path, json.dumps(shim_spec).encode(), 0o600)
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", SHIM_LAUNCHER, self.daemon.updater.path, sd.spec_path],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd="/", start_new_session=True,
                close_fds=True)
        except InstallError as exc:
            self._cannot_start(sd, str(exc))
            return
        except OSError as exc:
            self._cannot_start(sd, "cannot start its shim: %s" % (exc.strerror or exc))
            return
        sd.popen, sd.running = popen, True
        sd.proc = {"shim_pid": popen.pid, "shim_start": shim_pid_start(popen.pid), "pid": None}
        sd.started_mono = time.monotonic()
        sd.tokens = {}
        LOG.info("demo %s: started version %s (shim pid %d)", sd.name, sd.release["version"], popen.pid)
        self._set_status(sd, "crashloop" if sd.crashloop else "running", "")
        sd.save()

    def _shim_spec(self, sd: SupervisedDemo, account: Dict[str, Any]) -> Dict[str, Any]:
        assert sd.release is not None and sd.spec is not None
        base = sd.release_path(sd.release)
        cwd = os.path.join(base, sd.spec.workdir) if sd.spec.workdir else base
        if not os.path.isdir(cwd):
            raise InstallError("workdir %s is not a directory of the release" % (sd.spec.workdir or "."))
        env = {"PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin", "HOME": account["home"],
               "USER": account["name"], "LOGNAME": account["name"], "SHELL": account["shell"],
               "PYTHONUNBUFFERED": "1"}
        for name in ("LANG", "LC_ALL", "TZ"):
            if name in os.environ:
                env[name] = os.environ[name]
        env.update({"DVIC_LOG_DIR": self.daemon.opts.log_dir, "DVIC_DEMO_NAME": sd.name,
                    "DVIC_DEMO_VERSION": sd.release["version"], "DVIC_DEMO_DIR": base,
                    "DVIC_DEMO_DATA": os.path.join(sd.dir, "data")})
        env.update(sd.spec.env)
        out = {"name": sd.name, "version": sd.release["version"], "release": sd.release["dir"],
               "argv": sd.spec.argv, "cwd": cwd, "env": env, "user": account["name"], "log_dir": self.daemon.opts.log_dir,
               "log_max_bytes": SHIM_LOG_MAX_BYTES, "status": sd.proc_path, "lock": sd.lock_path}
        if account["drop"]:
            out.update(uid=account["uid"], gid=account["gid"])
        return out

    def account(self, spec: DemoSpec) -> Dict[str, Any]:
        """Who the demo runs as: `user` (only a root daemon may switch), else the daemon's own user."""
        me = os.getuid()
        try:
            pw = pwd.getpwnam(spec.user) if spec.user else pwd.getpwuid(me)
        except KeyError:
            if spec.user:
                raise InstallError("user %r does not exist on this node" % spec.user) from None
            return {"name": str(me), "uid": me, "gid": os.getgid(), "home": "/", "shell": "/bin/sh", "drop": False}
        if me != 0 and pw.pw_uid != me:
            raise InstallError("user %r: the daemon runs as uid %d, not root, so its demos run as that user "
                               "(leave user out, or give that user)" % (spec.user, me))
        return {"name": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid, "home": pw.pw_dir or "/",
                "shell": pw.pw_shell or "/bin/sh", "drop": me == 0 and pw.pw_uid != 0}

    def _allow_traversal(self, account: Dict[str, Any]) -> None:
        """A demo running as another user must reach its release below STATE_DIR (0700): let others
        traverse (not list) the directories on the way."""
        if not account["drop"]:
            return
        for path in (self.daemon.opts.state_dir, self.root):
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o011 != 0o011:
                os.chmod(path, mode | 0o011)

    def _adopt(self, sd: SupervisedDemo, proc: Dict[str, Any]) -> None:
        sd.proc, sd.popen, sd.running, sd.next_start = proc, None, True, None
        sd.started_mono = time.monotonic() - max(0.0, time.time() - float(proc.get("started_at") or time.time()))
        sd.tokens = {}
        self.wake()

    @staticmethod
    def _reap_orphan(proc: Optional[Dict[str, Any]]) -> None:
        """A shim killed under its demo leaves the demo running: end it before another run starts."""
        if proc and running(proc.get("pid"), proc.get("pid_start")):
            LOG.warning("demo %s: its shim is gone but pid %d still runs; killing its process group",
                        proc.get("name"), proc["pid"])
            kill_group(proc["pid"], signal.SIGKILL)

    def _exited(self, sd: SupervisedDemo) -> None:
        code = sd.popen.returncode if sd.popen is not None else None
        sd.popen, sd.running = None, False
        proc = read_json(sd.proc_path) or {}
        if code == SHIM_EXIT_BUSY and running(proc.get("shim_pid"), proc.get("shim_start")):
            self._adopt(sd, proc)  # another shim had it (a start raced with a kill -9 of the daemon)
            return
        if proc.get("shim_pid") != sd.proc.get("shim_pid"):
            proc = dict(sd.proc, exit=None)
        sd.proc = proc
        self._handle_exit(sd, proc, ran_for=time.monotonic() - sd.started_mono)

    def _handle_exit(self, sd: SupervisedDemo, proc: Dict[str, Any], ran_for: float) -> None:
        sd.running = False
        sd.seen_exit = proc.get("shim_pid") or 0
        if proc.get("log") and proc["log"] not in sd.logs:
            sd.logs.append(proc["log"])
        end = proc.get("exit")
        if not isinstance(end, dict):
            self._reap_orphan(proc)
            end = {"code": None, "signal": None, "at": round(time.time(), 3)}
            why = "its shim (pid %s) ended without recording the demo's exit" % proc.get("shim_pid")
        else:
            why = shim_exit_text("it", end.get("code"), end.get("signal"))[3:]
        sd.last_exit = {"code": end.get("code"), "signal": end.get("signal"), "at": end.get("at")}
        if proc.get("error"):
            self._cannot_start(sd, str(proc["error"]))
            return
        if not sd.wanted:
            self._set_status(sd, "stopped", sd.stop_reason or "stopped")
            sd.save()
            return
        assert sd.spec is not None
        failure = end.get("code") != 0
        restart = sd.spec.restart == "always" or (sd.spec.restart == "on-failure" and failure)
        if ran_for >= STABLE_RUN_S:
            sd.step = 0
        now = time.time()
        sd.exits = [t for t in sd.exits if now - t < CRASHLOOP_WINDOW_S] + [now]
        if not restart:
            LOG.info("demo %s: %s; restart policy %s: not restarted", sd.name, why, sd.spec.restart)
            self._not_wanted(sd, "policy", "%s (restart policy: %s)" % (why, sd.spec.restart))
            self._set_status(sd, "stopped", sd.stop_reason)
            sd.save()
            return
        sd.restarts += 1
        if len(sd.exits) >= CRASHLOOP_EXITS and not sd.crashloop:
            sd.crashloop, sd.alarm = True, "crashloop"
            self._event(sd, "demo_crashloop", "demo %s %s: %d exits within %.0f s; restarting every %.0f s"
                        % (sd.name, sd.spec.version, len(sd.exits), CRASHLOOP_WINDOW_S, BACKOFF_MAX_S),
                        exits=len(sd.exits), window_s=CRASHLOOP_WINDOW_S, last_exit=sd.last_exit)
        delay = restart_delay(sd.step, sd.crashloop)
        sd.step += 1
        sd.next_start = time.monotonic() + delay
        LOG.info("demo %s: %s; restart %d in %.0f s", sd.name, why, sd.restarts, delay)
        self._set_status(sd, "crashloop" if sd.crashloop else "unhealthy",
                         "%s; restarting in %.0f s" % (why, delay) if delay else "%s; restarting" % why)
        sd.save()
        self.wake()

    def _cannot_start(self, sd: SupervisedDemo, why: str) -> None:
        LOG.warning("demo %s: cannot start: %s", sd.name, why)
        sd.running, sd.popen = False, None
        self._not_wanted(sd, "failed", why)
        self._set_status(sd, "failed", why)
        sd.save()

    @staticmethod
    def _not_wanted(sd: SupervisedDemo, by: str, why: str) -> None:
        sd.wanted, sd.stopped_by, sd.stop_reason, sd.next_start = False, by, why, None

    def _signal(self, sd: SupervisedDemo, sig: int) -> None:
        pid, start = sd.child()
        if running(pid, start):
            kill_group(pid, sig)  # type: ignore[arg-type]  # the demo's own process group
        elif running(sd.proc.get("shim_pid"), sd.proc.get("shim_start")) and sig != signal.SIGKILL:
            os.kill(sd.proc["shim_pid"], sig)  # not started yet: the shim passes it on

    async def stop_process(self, sd: SupervisedDemo, why: str, by: str = "") -> None:
        """SIGTERM to the demo's process group, SIGKILL after stop_grace_s; not restarted afterwards."""
        self._not_wanted(sd, by, why)
        sd.save()  # a daemon stopped meanwhile must not start it again
        if not sd.running:
            self._set_status(sd, "stopped", why)
            return
        grace = sd.spec.stop_grace_s if sd.spec is not None else 10.0
        LOG.info("demo %s: stopping it (%s)", sd.name, why)
        self._signal(sd, signal.SIGTERM)
        if not await self._ended(sd, grace):
            LOG.warning("demo %s: still running %.0f s after SIGTERM; sending SIGKILL", sd.name, grace)
            self._signal(sd, signal.SIGKILL)
            if not await self._ended(sd, 5.0) and running(sd.proc.get("shim_pid"), sd.proc.get("shim_start")):
                os.kill(sd.proc["shim_pid"], signal.SIGKILL)
                await self._ended(sd, 5.0)
        if sd.running:  # neither signal helped (a process stuck in the kernel): forget it rather than hang
            LOG.error("demo %s: its processes did not end", sd.name)
            sd.running, sd.popen = False, None
        self._set_status(sd, "stopped", why)
        sd.save()

    async def _ended(self, sd: SupervisedDemo, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if sd.running and self._gone(sd):
                self._exited(sd)
            if not sd.running:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.05, left))

    # -- health --
    def _health(self, sd: SupervisedDemo) -> None:
        assert sd.spec is not None
        ran = time.monotonic() - sd.started_mono
        if ran >= STABLE_RUN_S:
            sd.step = 0
            if sd.crashloop:
                sd.crashloop = False
                sd.exits = []
                sd.save()
        beat = self._heartbeat(sd)
        message = ""
        if sd.spec.heartbeat_s is None:
            state = "healthy" if ran >= sd.spec.healthy_after else "running"
        elif beat is not None and time.time() - beat <= sd.spec.heartbeat_s:
            state = "healthy"
        elif ran < sd.spec.heartbeat_s:
            state = "running"
        else:
            state = "unhealthy"  # the message stays the same while it lasts: one demo_status, not one a second
            message = ("silent: no dvic_log record within heartbeat_s (%g s) since %s" % (
                sd.spec.heartbeat_s, time.strftime("%H:%M:%S", time.localtime(beat))) if beat is not None
                else "silent: no dvic_log record since it started (heartbeat_s %g s)" % sd.spec.heartbeat_s)
        if sd.crashloop:
            state, message = "crashloop", "%d exits within %.0f s" % (len(sd.exits), CRASHLOOP_WINDOW_S)
        if state == "unhealthy" and not sd.alarm:
            sd.alarm = "unhealthy"
            self._event(sd, "demo_unhealthy", "demo %s %s: %s" % (sd.name, sd.spec.version, message),
                        heartbeat_s=sd.spec.heartbeat_s, last_heartbeat=beat)
        elif state == "healthy" and sd.alarm:
            self._event(sd, "demo_recovered", "demo %s %s is healthy again (was %s)"
                        % (sd.name, sd.spec.version, sd.alarm), was=sd.alarm)
            sd.alarm = ""
            sd.save()
        self._set_status(sd, state, message)

    def _heartbeat(self, sd: SupervisedDemo) -> Optional[float]:
        """The ts of the latest dvic_log record of this run: its shim's file (stdout/stderr lines) and any
        file written by a process of its process group (a demo logging through dvic_log)."""
        pid, _ = sd.child()
        if not pid:
            return None
        best = None  # type: Optional[float]
        for key, demo in self.daemon.demos.demos.items():
            if demo.header is None:
                continue
            mine = sd.tokens.get(key)
            if mine is None:
                writer = demo.header.get("pid")
                mine = sd.tokens[key] = writer == pid or process_group(writer) == pid
            if mine and demo.last_heartbeat is not None and (best is None or demo.last_heartbeat > best):
                best = demo.last_heartbeat
        return best

    def _prune_logs(self, sd: SupervisedDemo) -> None:
        """Delete the log files of old runs (all but the last few) once the daemon follows them: it holds
        them open, so whatever was not read yet is still read (docs/node-daemon.md)."""
        while len(sd.logs) > SHIM_LOG_RUNS_KEPT:
            path = sd.logs[0]
            demo = self.daemon.demos.demos.get("demo:" + os.path.basename(path)[len("dvic_log_"):])
            if os.path.exists(path) and (demo is None or demo.follower.fd is None):
                return  # not followed (yet): keep it
            for name in (path, path + ".1"):
                try:
                    os.unlink(name)
                except OSError:
                    pass
            sd.logs.pop(0)

    # -- messages --
    def _set_status(self, sd: SupervisedDemo, state: str, message: str) -> None:
        if (state, message) != (sd.status, sd.message):
            if state != sd.status:
                sd.since = round(time.time(), 3)
            sd.status, sd.message = state, message
            self._report_status(sd)

    def status_message(self, sd: SupervisedDemo) -> Dict[str, Any]:
        pid, _ = sd.child() if sd.running else (None, None)
        return {"type": "demo_status", "demo": sd.name, "version": sd.release["version"] if sd.release else None,
                "state": sd.status, "pid": pid, "restarts": sd.restarts, "since": sd.since,
                "last_exit": sd.last_exit, "last_heartbeat": self._heartbeat(sd) if sd.running else None,
                "message": sd.message[:1000]}

    def _report_status(self, sd: SupervisedDemo) -> None:
        if sd.release is None and sd.sent is None:
            return
        msg = self.status_message(sd)
        key = tuple(msg[k] for k in ("version", "state", "pid", "restarts", "message")) + (json.dumps(sd.last_exit),)
        beat = msg["last_heartbeat"]
        if key == sd.sent and (beat == sd.sent_heartbeat or time.monotonic() - sd.sent_at < STATUS_HEARTBEAT_REPORT_S):
            return
        sd.sent, sd.sent_heartbeat, sd.sent_at = key, beat, time.monotonic()
        self.daemon._emit(msg)

    def _event(self, sd: SupervisedDemo, kind: str, message: str, **data: Any) -> None:
        (LOG.info if kind == "demo_recovered" else LOG.warning)("%s", message)
        data.update(demo=sd.name, version=sd.release["version"] if sd.release else None, restarts=sd.restarts)
        self.daemon._emit({"type": "event", "kind": kind, "message": message[:1000], "data": data})

    def _report_install(self, sd: SupervisedDemo, entry: Dict[str, Any], state: str, message: str = "",
                        **extra: Any) -> None:
        msg = {"type": "demo_install", "demo": sd.name, "version": entry["version"], "rollout": entry.get("rollout"),
               "state": state, "message": message[:2000]}
        msg.update(extra)
        if state != "downloading" or message:  # not every progress report
            (LOG.warning if state in ("failed", "rolled_back") else LOG.info)(
                "demo %s %s: %s%s", sd.name, entry["version"], state, (": " + message) if message else "")
        self.daemon._emit(msg)

    def announce(self) -> List[Dict[str, Any]]:
        """Right after `welcome`: the state of every supervised demo and of every install in progress."""
        out = []
        for sd in self.demos.values():
            if sd.release is not None:
                out.append(self.status_message(sd))
            if sd.install:
                entry = sd.install["entry"]
                out.append({"type": "demo_install", "demo": sd.name, "version": entry["version"],
                            "rollout": entry.get("rollout"), "state": sd.install.get("state", "queued"),
                            "message": "in progress"})
        return out

    # -- the desired set --
    async def on_desired(self, msg: Dict[str, Any]) -> None:
        """`demos_desired`: converge to the complete desired set (a new push supersedes the old one)."""
        items = msg.get("demos")
        if not isinstance(items, list) or len(items) > MAX_DESIRED_DEMOS:
            # never read a malformed push as "no demos": that would remove them all
            LOG.warning("server sent demos_desired without a list of at most %d demos; ignored", MAX_DESIRED_DEMOS)
            return
        entries = []  # type: List[Dict[str, Any]]
        for item in items:
            try:
                entry = parse_desired(item)
            except InstallError as exc:
                name = item.get("name") if isinstance(item, dict) else None
                if isinstance(name, str) and DEMO_NAME_RE.match(name):
                    self.daemon._emit({"type": "demo_install", "demo": name, "version": str(item.get("version"))[:64],
                                      "rollout": item.get("rollout") if isinstance(item.get("rollout"), str) else None,
                                      "state": "failed", "message": "bad demos_desired entry: %s" % exc})
                LOG.warning("demos_desired: bad entry %r: %s", str(name)[:64], exc)
                if isinstance(name, str):
                    entries.append({"name": name, "invalid": True})  # keeps what runs: not a removal
                continue
            entries.append(entry)
        last = {e["name"]: e for e in entries}  # the same name twice: the last entry counts
        self.daemon.spawn(self._converge(list(last.values())))

    async def _converge(self, entries: List[Dict[str, Any]]) -> None:
        async with self.converging:
            names = {e["name"] for e in entries}
            for entry in entries:
                if not entry.get("invalid"):
                    await self._want(entry)
            for sd in list(self.demos.values()):
                removing = sd.task is not None and not sd.task.done() and not sd.target
                if sd.name in names or removing:
                    continue
                if sd.installed or sd.install or sd.release or sd.task is not None:
                    await self._cancel(sd, "removed from the desired set")
                    self._launch(sd, "", self._remove(sd))
                else:  # only the results of installs that never succeeded: forget them quietly
                    self._forget(sd)
            self._prune_downloads({e["sha256"] for e in entries if not e.get("invalid")}
                                  | {sd.target for sd in self.demos.values() if sd.task and not sd.task.done()})

    async def _want(self, entry: Dict[str, Any]) -> None:
        sd = self.demos.get(entry["name"])
        if sd is None:
            sd = self.demos[entry["name"]] = SupervisedDemo(self.root, entry["name"])
            sd.boot_id = self.boot
        busy = sd.task is not None and not sd.task.done()
        if busy and sd.target == entry["sha256"]:  # already on its way: the new rollout follows it
            if sd.install and sd.install["entry"].get("rollout") != entry.get("rollout"):
                sd.install["entry"]["rollout"] = entry.get("rollout")
                sd.save()
                self._report_install(sd, entry, sd.install.get("state", "queued"), "in progress")
            return
        if busy:  # another release: that install ends (and what ran before it runs again)
            await self._cancel(sd, "superseded by version %s" % entry["version"])
        if sd.installed and sd.installed["sha256"] == entry["sha256"] and sd.release is not None \
                and sd.release["sha256"] == entry["sha256"]:
            self._report_install(sd, entry, "healthy", "version %s is installed" % entry["version"])
            return
        for result in reversed(sd.results):
            if result["sha256"] == entry["sha256"] and result.get("rollout") == entry.get("rollout") \
                    and result["state"] in ("failed", "rolled_back"):
                self._report_install(sd, entry, result["state"], result.get("message", ""))
                return  # this rollout ended (failed, rolled back): a new deployment tries again
        self._launch(sd, entry["sha256"], self._install(sd, entry))

    def _launch(self, sd: SupervisedDemo, target: str, coro: Awaitable[None]) -> None:
        sd.target, sd.superseded = target, ""
        sd.task = asyncio.ensure_future(coro)

        def done(task: "asyncio.Future[None]") -> None:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                LOG.error("demo %s: unexpected error: %s", sd.name, "".join(traceback.format_exception(
                    type(exc), exc, exc.__traceback__)).rstrip())  # type: ignore[arg-type]

        sd.task.add_done_callback(done)

    async def _cancel(self, sd: SupervisedDemo, why: str) -> None:
        if sd.task is not None and not sd.task.done():
            sd.superseded = why
            sd.task.cancel()
            await asyncio.wait([sd.task])

    def _prune_downloads(self, keep: set) -> None:
        try:
            names = os.listdir(self.downloads)
        except OSError:
            return
        for name in names:
            if name.split(".")[0] not in keep:
                try:
                    os.unlink(os.path.join(self.downloads, name))
                except OSError:
                    pass

    # -- the install pipeline --
    async def _install(self, sd: SupervisedDemo, entry: Dict[str, Any], resume: bool = False) -> None:
        try:
            try:
                spec = DemoSpec(entry["manifest"])
                if resume and sd.install and sd.install.get("rollback"):
                    await self._roll_back(sd, entry, str(sd.install.get("message") or "rolling back"))
                    return
                self.account(spec)  # a user that cannot be used fails now, before the download
                if not resume or sd.install is None:
                    sd.install = {"entry": entry, "state": "queued"}
                    self._step(sd, "queued")
                if not self._unpacked(sd, release_dir_name(entry)):
                    async with self.heavy:
                        part = await self._download(sd, entry)
                        await self._verify(sd, entry, part)
                        await self._unpack(sd, entry, spec, part)
                await self._activate(sd, entry, spec)
            except InstallError as exc:
                await self._abandon(sd, entry)
                self._finish(sd, entry, "failed", str(exc), remember=not exc.retry)
            except OSError as exc:  # the state directory itself (a full disk while switching, saving)
                await self._abandon(sd, entry)
                self._finish(sd, entry, "failed", self._disk_problem("installing", exc), remember=False)
        except asyncio.CancelledError:
            if not self.stopping:  # superseded or removed (a stopping daemon leaves it all for the next start)
                await self._abandon(sd, entry)
                self._finish(sd, entry, "failed", sd.superseded or "cancelled", remember=False)
            raise

    def _step(self, sd: SupervisedDemo, state: str, message: str = "", **extra: Any) -> None:
        assert sd.install is not None
        sd.install["state"] = state
        self.make_dirs(sd)
        sd.save(sync=True)
        self._report_install(sd, sd.install["entry"], state, message, **extra)

    def make_dirs(self, sd: SupervisedDemo) -> None:
        """STATE_DIR/demos/<name>: others may pass through (a demo running as another user), not list."""
        for path in (self.root, sd.dir):
            if not os.path.isdir(path):
                make_dir(path, 0o711)

    async def _pause(self, state: str, entry: Dict[str, Any]) -> None:
        if install_pause(state, entry["version"]):  # test only (DVIC_NODE_TEST_INSTALL_PAUSE)
            LOG.warning("test pause at install state %s (DVIC_NODE_TEST_INSTALL_PAUSE)", state)
            await asyncio.sleep(3600)

    async def _download(self, sd: SupervisedDemo, entry: Dict[str, Any]) -> str:
        os.makedirs(self.downloads, 0o700, exist_ok=True)
        part = os.path.join(self.downloads, entry["sha256"] + ".part")
        url = release_url(self.daemon.bundle, entry["url"])
        if url.startswith("http://") and not self.daemon.bundle["ws_url"].startswith("ws://"):
            raise InstallError("plain-HTTP download refused: the server is reached over TLS")
        # the node authenticates with its client certificate; the token counts only in plain-HTTP development
        headers = {"Authorization": "Bearer " + self.daemon.bundle["token"]} if url.startswith("http://") else {}
        have = self._size(part)
        self._step(sd, "downloading", "resuming at byte %d" % have if have else url, bytes=have, total=entry["size"])

        def progress(got: int) -> None:
            now = time.monotonic()
            if self.daemon.online and now - sd.progress_at >= DOWNLOAD_PROGRESS_S:
                sd.progress_at = now
                self._report_install(sd, entry, "downloading", "", bytes=got, total=entry["size"])

        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                await http_download(url, self.daemon.ssl_context, part, entry["size"], headers, progress,
                                    install_pause("downloading", entry["version"]))
                return part
            except DownloadError as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise InstallError("download failed %d times, last: %s (the partial file is kept)"
                                       % (attempt, exc), retry=True) from None
                delay = min(30.0, 2.0 ** attempt)
                self._report_install(sd, entry, "downloading", "interrupted (%s); resuming in %.0f s" % (exc, delay),
                                     bytes=self._size(part), total=entry["size"])
                await asyncio.sleep(delay)
            except OSError as exc:  # the local disk
                self._unlink(part)
                raise InstallError(self._disk_problem("saving the download", exc)) from None
        raise AssertionError("unreachable")

    async def _verify(self, sd: SupervisedDemo, entry: Dict[str, Any], part: str) -> None:
        self._step(sd, "verifying")
        await self._pause("verifying", entry)
        actual = await asyncio.get_running_loop().run_in_executor(None, file_sha256, part)
        if actual != entry["sha256"]:
            self._unlink(part)  # a bad copy is no use for resuming
            raise InstallError("sha256 mismatch: the download has %s, the release is %s" % (actual, entry["sha256"]))

    async def _unpack(self, sd: SupervisedDemo, entry: Dict[str, Any], spec: DemoSpec, part: str) -> None:
        self._step(sd, "installing")
        cancelled = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(None, self._build, sd, entry, spec, part, cancelled)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()  # the thread stops at the next member and removes its directory
            await asyncio.wait([future])
            raise
        except BadArchive as exc:
            raise InstallError(str(exc)) from None
        except OSError as exc:
            raise InstallError(self._disk_problem("unpacking", exc)) from None
        except (EOFError, ValueError, zlib.error) as exc:
            raise InstallError("the archive is damaged or not a tar.gz: %s" % exc) from None
        except Exception as exc:  # noqa: BLE001 - tarfile.ReadError and friends: a damaged archive
            if type(exc).__module__ in ("tarfile", "gzip"):
                raise InstallError("the archive is damaged or not a tar.gz: %s" % exc) from None
            raise
        self._unlink(part)

    def _build(self, sd: SupervisedDemo, entry: Dict[str, Any], spec: DemoSpec, part: str,
               cancelled: threading.Event) -> None:
        """In a worker thread: unpack into releases/.tmp-<name>, link the kept paths, then rename it into
        place, so the release's own name only ever holds a complete directory."""
        releases = os.path.join(sd.dir, "releases")
        if not os.path.isdir(releases):
            make_dir(releases, 0o711)
        name = release_dir_name(entry)
        tmp = os.path.join(releases, ".tmp-" + name)
        remove_tree(tmp)
        try:
            unpack_release(part, tmp, entry["max_unpacked_bytes"], entry["max_members"], cancelled,
                           install_pause("installing", entry["version"]))
            if not os.path.isfile(os.path.join(tmp, "dvic-demo.toml")):
                raise BadArchive("the archive has no dvic-demo.toml at its root")
            self._link_kept(sd, spec, tmp)
            fsync_dir(tmp)
            os.rename(tmp, os.path.join(releases, name))
            fsync_dir(releases)
        except BaseException:
            remove_tree(tmp)
            raise

    def _link_kept(self, sd: SupervisedDemo, spec: DemoSpec, tmp: str) -> None:
        """Each `keep` path of the release becomes a link into STATE_DIR/demos/<name>/data/, which outlives
        releases; the first release's own content seeds it."""
        if not spec.keep:
            return
        account = self.account(spec)
        data = os.path.join(sd.dir, "data")
        if not os.path.isdir(data):
            make_dir(data, 0o711)
        for path, is_dir in spec.keep:
            kept, here = os.path.join(data, path), os.path.join(tmp, path)
            if not os.path.lexists(kept):
                os.makedirs(os.path.dirname(kept), 0o755, exist_ok=True)
                if os.path.lexists(here) and not os.path.islink(here):
                    os.rename(here, kept)
                elif is_dir:
                    make_dir(kept)
                if account["drop"] and os.path.lexists(kept):
                    for top, dirs, files in os.walk(kept):
                        for name in [top] + [os.path.join(top, n) for n in dirs + files]:
                            os.lchown(name, account["uid"], account["gid"])
            remove_tree(here)
            os.makedirs(os.path.dirname(here), 0o755, exist_ok=True)
            # relative: the same from the release's final name, at the same depth as this temp name
            os.symlink(os.path.relpath(kept, os.path.dirname(here)), here)

    @staticmethod
    def _unpacked(sd: SupervisedDemo, dirname: str) -> bool:
        """Whether releases/<dirname> exists: only ever a complete release (see _build)."""
        return os.path.isdir(os.path.join(sd.dir, "releases", dirname))

    @staticmethod
    def _size(path: str) -> int:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0

    @staticmethod
    def _disk_problem(what: str, exc: OSError) -> str:
        if exc.errno in NO_ROOM:
            return "disk full while %s: %s%s" % (what, exc.strerror or exc, (" (%s)" % exc.filename)
                                                 if exc.filename else "")
        return "%s failed: %s" % (what, exc)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    async def _activate(self, sd: SupervisedDemo, entry: Dict[str, Any], spec: DemoSpec) -> None:
        """stopping_old -> starting -> healthy, or back to the previous release (rolled_back)."""
        assert sd.install is not None
        new = release_record(entry)
        replace = sd.running and (sd.release is None or sd.release["dir"] != new["dir"])
        self._step(sd, "stopping_old", "stopping version %s" % sd.release["version"] if replace and sd.release
                   else "version %s runs already" % entry["version"] if sd.running else "nothing runs")
        if replace:
            await self.stop_process(sd, "replaced by version %s" % entry["version"])
        await self._pause("stopping_old", entry)
        self.switch_current(sd, new["dir"])
        deadline = sd.install.get("deadline") or time.time() + spec.start_timeout_s
        sd.install["deadline"] = deadline
        adopted = sd.running and sd.release is not None and sd.release["dir"] == new["dir"]
        self._use_release(sd, new, keep_counters=adopted)
        sd.wanted, sd.stopped_by, sd.stop_reason = True, "", ""
        self._step(sd, "starting", "healthy within %.0f s" % max(0.0, deadline - time.time()))
        if not adopted:
            self._spawn(sd)
        await self._pause("starting", entry)
        why = await self._healthy_by(sd, deadline)
        if why:
            await self._roll_back(sd, entry, why)
            return
        old = sd.installed
        if old is not None and old["dir"] != new["dir"]:
            sd.previous = old
        sd.installed = new
        self._finish(sd, entry, "healthy", "version %s is healthy" % entry["version"], remember=True)
        self._prune_releases(sd)

    async def _healthy_by(self, sd: SupervisedDemo, deadline: float) -> str:
        """'' once the new release is healthy, else why it will not be (in time)."""
        version = sd.release["version"] if sd.release else "?"
        while True:
            if sd.running and sd.status == "healthy":
                return ""
            if sd.crashloop:
                return "version %s is in a crash loop (%d exits within %.0f s; last: %s)" % (
                    version, len(sd.exits), CRASHLOOP_WINDOW_S, sd.message)
            if not sd.wanted:
                return "version %s stopped: %s" % (version, sd.stop_reason or sd.message)
            if time.time() >= deadline:
                return "version %s did not become healthy within %.0f s (it is %s%s)" % (
                    version, sd.spec.start_timeout_s if sd.spec else 0, sd.status,
                    ": " + sd.message if sd.message else "")
            await asyncio.sleep(0.1)

    async def _roll_back(self, sd: SupervisedDemo, entry: Dict[str, Any], why: str) -> None:
        """The new release did not become healthy: stop it, start the previous one again (rolled_back), or
        with none to go back to, leave the demo stopped (failed)."""
        assert sd.install is not None
        sd.install.update(rollback=True, message=why)
        sd.save(sync=True)
        await self._pause("rolling_back", entry)
        await self.stop_process(sd, why, by="failed")
        old = sd.installed
        if old is None or not self._unpacked(sd, old["dir"]):
            self._clear_current(sd)
            self._use_release(sd, None)
            self._not_wanted(sd, "failed", why)
            self._set_status(sd, "failed", why)
            remove_tree(os.path.join(sd.dir, "releases", release_dir_name(entry)))
            self._finish(sd, entry, "failed", why + "; there is no previous release to go back to", remember=True)
            return
        self.switch_current(sd, old["dir"])
        self._use_release(sd, old)
        sd.wanted, sd.stopped_by, sd.stop_reason = True, "", ""
        self._spawn(sd)
        remove_tree(os.path.join(sd.dir, "releases", release_dir_name(entry)))
        self._finish(sd, entry, "rolled_back", "%s; version %s runs again" % (why, old["version"]), remember=True)

    async def _abandon(self, sd: SupervisedDemo, entry: Dict[str, Any]) -> None:
        """An install that ends early (failed, superseded): the last healthy release runs again if the new
        one had already replaced it; an unpacked, unused release is removed."""
        if sd.release is not None and sd.release["sha256"] == entry["sha256"] and sd.installed \
                and sd.installed["sha256"] != entry["sha256"]:
            await self.stop_process(sd, "install of %s abandoned" % entry["version"])
            self.switch_current(sd, sd.installed["dir"])
            self._use_release(sd, sd.installed)
            sd.wanted, sd.stopped_by, sd.stop_reason = True, "", ""
            self._spawn(sd)
        if not sd.installed or sd.installed["sha256"] != entry["sha256"]:
            if sd.release is None or sd.release["sha256"] != entry["sha256"]:
                remove_tree(os.path.join(sd.dir, "releases", release_dir_name(entry)))

    def _finish(self, sd: SupervisedDemo, entry: Dict[str, Any], state: str, message: str, remember: bool) -> None:
        sd.install = None
        if remember:  # the rollout has its result (not retried), and its download is of no more use
            sd.results = (sd.results + [{"sha256": entry["sha256"], "rollout": entry.get("rollout"),
                                         "version": entry["version"], "state": state, "message": message[:2000],
                                         "at": round(time.time(), 3)}])[-RESULTS_KEPT:]
            self._unlink(os.path.join(self.downloads, entry["sha256"] + ".part"))
        try:
            sd.save(sync=True)
        except OSError as exc:
            LOG.error("demo %s: cannot save its state: %s", sd.name, exc)
        self._report_install(sd, entry, state, message)

    def _use_release(self, sd: SupervisedDemo, release: Optional[Dict[str, Any]], keep_counters: bool = False) -> None:
        """The release the supervision runs from now on (counters start again with a new release)."""
        if release is not None and (sd.release is None or release["dir"] != sd.release["dir"]) and not keep_counters:
            sd.restarts, sd.exits, sd.step, sd.crashloop, sd.alarm, sd.last_exit = 0, [], 0, False, "", None
        sd.release = release
        sd.spec = DemoSpec(release["manifest"]) if release is not None else None

    @staticmethod
    def _release_named(sd: SupervisedDemo, dirname: Any) -> Optional[Dict[str, Any]]:
        for release in (sd.installed, sd.previous, release_record(sd.install["entry"]) if sd.install else None):
            if release is not None and release["dir"] == dirname:
                return release
        return None

    @staticmethod
    def switch_current(sd: SupervisedDemo, dirname: str) -> None:
        """Point `current` at releases/<dirname> atomically (a symlink under a temp name renamed over it)."""
        tmp = os.path.join(sd.dir, ".current.tmp")
        Supervisor._unlink_path(tmp)
        os.symlink(os.path.join("releases", dirname), tmp)
        os.rename(tmp, os.path.join(sd.dir, "current"))
        fsync_dir(sd.dir)

    @staticmethod
    def _clear_current(sd: SupervisedDemo) -> None:
        Supervisor._unlink_path(os.path.join(sd.dir, "current"))

    @staticmethod
    def _unlink_path(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _prune_releases(self, sd: SupervisedDemo) -> None:
        keep = {r["dir"] for r in (sd.installed, sd.previous) if r is not None}
        releases = os.path.join(sd.dir, "releases")
        for name in os.listdir(releases) if os.path.isdir(releases) else []:
            if name not in keep:
                try:
                    remove_tree(os.path.join(releases, name))
                except OSError as exc:
                    LOG.warning("demo %s: cannot remove the old release %s: %s", sd.name, name, exc)

    async def _remove(self, sd: SupervisedDemo) -> None:
        """Undeployed: stop it, delete its releases; its kept data stays for a later install."""
        version = (sd.installed or sd.release or {}).get("version") or "?"
        await self.stop_process(sd, "removed from this node")
        self._set_status(sd, "stopped", "removed from this node")
        self._forget(sd)
        self.daemon._emit({"type": "demo_install", "demo": sd.name, "version": version, "rollout": None,
                          "state": "removed", "message": "stopped and removed; its kept data stays"})
        LOG.info("demo %s: removed (its data directory stays)", sd.name)

    def _forget(self, sd: SupervisedDemo) -> None:
        """Delete everything of a demo but its kept data (data/)."""
        self._clear_current(sd)
        for name in ("releases", "state.json", "proc.json", "run-spec.json", "run.lock"):
            try:
                remove_tree(os.path.join(sd.dir, name))
            except OSError as exc:
                LOG.warning("demo %s: cannot remove %s: %s", sd.name, name, exc)
        self.demos.pop(sd.name, None)

    # -- operator actions (start_demo, stop_demo, restart_demo) --
    def knows(self, name: str) -> bool:
        sd = self.demos.get(name)
        return sd is not None and sd.release is not None

    async def act(self, verb: str, name: str) -> Tuple[bool, str]:
        sd = self.demos[name]
        if sd.task is not None and not sd.task.done():
            return False, "%s: an install or removal is in progress; try again when it ends" % name
        version = sd.release["version"] if sd.release else "?"
        if verb == "start" and sd.running:
            return True, "%s %s already runs" % (name, version)
        if verb in ("stop", "restart"):
            await self.stop_process(sd, "stopped by an operator", by="operator")
        if verb == "stop":
            return True, "%s %s stopped; it stays stopped (also across restarts and reboots) until start_demo" % (
                name, version)
        sd.wanted, sd.stopped_by, sd.stop_reason = True, "", ""
        sd.step, sd.crashloop, sd.exits = 0, False, []
        self._spawn(sd)
        if not sd.running:
            return False, "%s %s cannot start: %s" % (name, version, sd.message)
        return True, "%s %s %s" % (name, version, "restarted" if verb == "restart" else "started")


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------

class Options:
    """The command line, as the daemon's parts use it."""

    def __init__(self, state_dir: str, log_dir: str, spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
                 system_log: str = "auto", system_log_rate: float = 20.0, system_log_burst: int = 200,
                 docker_socket: str = "/var/run/docker.sock", reconnect_max: float = 60.0,
                 poll_interval: float = 0.2, use_psutil: bool = True, shell_user: Optional[str] = None,
                 reboot_command: str = "systemctl reboot", demos_config: str = "",
                 update_deadline: float = 60.0, max_demo_files: int = MAX_DEMO_FILES,
                 max_demo_files_per_owner: int = MAX_DEMO_FILES_PER_OWNER) -> None:
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.spool_max_bytes = spool_max_bytes
        self.system_log = system_log
        self.system_log_rate = system_log_rate
        self.system_log_burst = system_log_burst
        self.docker_socket = docker_socket
        self.reconnect_max = reconnect_max
        self.poll_interval = poll_interval
        self.use_psutil = use_psutil
        self.shell_user = shell_user
        self.reboot_command = reboot_command
        self.demos_config = demos_config or os.path.join(state_dir, "demos.json")
        self.update_deadline = update_deadline
        self.max_demo_files = max_demo_files
        self.max_demo_files_per_owner = max_demo_files_per_owner


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter, never below `base`: uniform(base, min(cap, base * 2**n))."""
    import random  # reconnects only

    top = min(cap, base * (2 ** min(attempt, 16)))
    return random.uniform(min(base, top), top)


ServerMessageHandler = Callable[[WebSocket, Dict[str, Any]], Awaitable[None]]


def next_attempt(attempt: int, welcomed_at: Optional[float], now: float) -> int:
    """The backoff step for the next reconnect: back to 0 after a session that worked for 10 s."""
    if welcomed_at is not None and now - welcomed_at > 10:
        return 0
    return attempt


class Daemon:
    """Runs the parts side by side on one event loop: collectors, followers, connection, keep-alive."""

    def __init__(self, bundle: Dict[str, Any], options: Options) -> None:
        self.bundle = bundle
        self.opts = options
        self.interval = float(bundle.get("interval", 5))
        self.keepalive_interval = self.interval
        self.max_batch = MAX_BATCH_LINES
        self.spool = Spool(os.path.join(options.state_dir, "spool"), options.spool_max_bytes)
        self.ssl_context = None  # type: Optional[ssl.SSLContext]
        self.online = False
        self.metrics_buffer = collections.deque(maxlen=720)
        self.outbox = collections.deque(maxlen=2000)
        self.demos = DemoWatcher(self.spool, self._emit, self.report_error)
        self.demos.poll_interval = options.poll_interval
        self.demos.max_files = options.max_demo_files
        self.demos.max_per_owner = options.max_demo_files_per_owner
        self.system = SystemLogs(self.spool, options.system_log, options.system_log_rate,
                                 options.system_log_burst)
        self._wake = None  # type: Optional[asyncio.Event]
        self._stop = None  # type: Optional[asyncio.Event]
        self._last_conn_error = ""
        self._revoked = False  # the server's last word was "revoked": reconnect at the longest delay
        self._docker_error = ""
        self._sent_max = 0  # highest seq sent on the current connection (or stored, per welcome)
        self._welcomed_at = None  # type: Optional[float]
        self.log_handler = None  # type: Optional[SpoolLogHandler]
        # server -> node messages this daemon handles (after `welcome`); anything else with an `id` is
        # answered `unsupported` (docs/protocol.md section 6)
        self._handlers = {
            "ack": self._on_ack, "error": self._on_error, "welcome": self._on_welcome,
        }  # type: Dict[str, ServerMessageHandler]
        self.restart_request = None  # type: Optional[Dict[str, Any]]
        self._remote_tasks = set()  # type: set

    def _setup_remote(self) -> None:
        """The remote-control parts (section 6); built inside the loop (asyncio objects bind to it)."""
        self.link = Link()
        self.commands = CommandRunner(self.link, ExecJournal(os.path.join(self.opts.state_dir, "exec_ids")),
                                      self.spawn)
        self.shells = ShellManager(self.link, self.opts.shell_user)
        self.tunnels = TunnelManager(self.link, self.spawn)
        self.updater = Updater(self, os.path.realpath(os.path.abspath(sys.argv[0] if __name__ == "__main__"
                                                                      else __file__)), self.opts.update_deadline)
        self.supervisor = Supervisor(self)
        self.actions = ActionRunner(self.link, self.spawn, self.opts.reboot_command, self.opts.demos_config,
                                    supervisor=self.supervisor)
        self.link.on_lost.append(lambda: self.shells.close_all("the node lost its connection to the server"))
        self.link.on_lost.append(self.tunnels.close_all)
        self._handlers.update({
            "exec": self._spawned(self.commands.on_exec), "cancel": self._spawned(self.commands.on_cancel),
            "shell_open": self._spawned(self.shells.on_open), "shell_input": self._spawned(self.shells.on_input),
            "shell_resize": self._spawned(self.shells.on_resize), "shell_close": self._spawned(self.shells.on_close),
            "tunnel_open": self._spawned(self.tunnels.on_open), "tunnel_data": self._spawned(self.tunnels.on_data),
            "tunnel_close": self._spawned(self.tunnels.on_close), "action": self._spawned(self.actions.on_action),
            "update": self._detached(self.updater.on_update),
            "demos_desired": self._spawned(self.supervisor.on_desired),
        })

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a remote-control task beside the receiver; a bug in it is logged, never fatal."""
        task = asyncio.ensure_future(coro)
        self._remote_tasks.add(task)

        def done(t: "asyncio.Future[None]") -> None:
            self._remote_tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                LOG.error("remote control: unexpected error: %s", "".join(
                    traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())  # type: ignore[arg-type]

        task.add_done_callback(done)

    def _spawned(self, handler: Callable[[Dict[str, Any]], Awaitable[None]]) -> ServerMessageHandler:
        """A request handler run in order by the receiver (they only queue work; never block)."""
        async def run(ws: WebSocket, msg: Dict[str, Any]) -> None:
            try:
                await handler(msg)
            except RequestError as exc:
                LOG.warning("server sent a bad %s request: %s; ignored", str(msg.get("type"))[:32], exc)
            except (asyncio.CancelledError, WebSocketError):
                raise
            except Exception:  # noqa: BLE001 - a bug serving one request must not end the connection
                LOG.exception("remote control: unexpected error serving %s", str(msg.get("type"))[:32])
        return run

    def _detached(self, handler: Callable[[Dict[str, Any]], Awaitable[None]]) -> ServerMessageHandler:
        """A long request handler (download, verification) run beside the receiver."""
        inner = self._spawned(handler)

        async def run(ws: WebSocket, msg: Dict[str, Any]) -> None:
            self.spawn(inner(ws, msg))
        return run

    def restart(self, watchdog: bool) -> None:
        """Stop cleanly, then re-execute this file with the same command line (see main)."""
        self.restart_request = {"watchdog": watchdog}
        if self._stop is not None:
            self._stop.set()

    # -- plumbing shared by the parts --
    def _emit(self, msg: Dict[str, Any]) -> None:
        """Queue a `demo`/`event` message (bounded); sent in order once connected, so a demo that
        started and exited while the link was down still shows both transitions."""
        self.outbox.append(msg)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def report_error(self, message: str, data: Dict[str, Any]) -> None:
        """A problem an operator should see: a daemon warning line and an `error` event."""
        LOG.warning("%s", message)
        self.outbox.append({"type": "event", "kind": "error", "message": message[:1000], "data": data})
        self._poke()

    # -- entry point --
    async def run(self) -> int:
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
                pass
        os.makedirs(self.opts.state_dir, mode=0o700, exist_ok=True)
        if self.bundle["ws_url"].startswith("wss://"):
            self.ssl_context = make_ssl_context(self.bundle, os.path.join(self.opts.state_dir, "tls"))
        self.spool.open()
        self.spool.on_append = self._poke
        self.log_handler = SpoolLogHandler(self.spool)
        LOG.addHandler(self.log_handler)
        self.demos.restore_states()
        self.demos.set_logdirs([LogDir(self.opts.log_dir)])
        self._setup_remote()
        self.updater.on_start()
        LOG.info("dvic-node %s starting: node %s, server %s, logs in %s, state in %s (spool: %d lines pending)",
                 VERSION, self.bundle["node_id"], self.bundle["ws_url"], self.opts.log_dir,
                 self.opts.state_dir, self.spool.pending)
        self.supervisor.load()  # re-adopt or start the supervised demos, resume an install
        tasks = [asyncio.ensure_future(c) for c in (
            self._metrics_loop(), self._tail_loop(), self._connection_loop(), self._keepalive_loop(),
            self._checkpoint_loop(), self._system_log_loop(), self._docker_loop(), self.supervisor.run())]
        failed = []  # type: List[BaseException]

        def on_done(task: "asyncio.Future[None]") -> None:
            # parts may finish normally (e.g. no system logs); an exception is a bug: stop, systemd restarts
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())  # type: ignore[arg-type]
                self._stop.set()  # type: ignore[union-attr]

        for t in tasks:
            t.add_done_callback(on_done)
        await self._stop.wait()
        await self.supervisor.shutdown()  # installs stop where they are; the demos keep running
        for t in tasks:
            t.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=10)  # bounded: a stop (or an update) must finish
        if stuck:
            LOG.error("%d part(s) did not stop within 10 s; stopping anyway", len(stuck))
        # nothing the operators started outlives the daemon
        self.commands.stop_all()
        self.shells.close_all("the node daemon stopped", kill=True)
        self.tunnels.close_all()
        for t in list(self._remote_tasks):
            t.cancel()
        if self._remote_tasks:
            await asyncio.wait(list(self._remote_tasks), timeout=5)
        LOG.removeHandler(self.log_handler)
        for exc in failed:
            LOG.error("internal error, stopping: %s", "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
        try:
            self.spool.close()
        except OSError as exc:  # e.g. a full disk: the spool files are still consistent
            LOG.error("could not save the state on exit: %s", exc)
        LOG.info("dvic-node stopped")
        return 1 if failed else 0

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop; True when stopping."""
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))
            return True
        except asyncio.TimeoutError:
            return False

    # -- collecting --
    async def _metrics_loop(self) -> None:
        collector = MetricsCollector(self.opts.use_psutil)
        loop = asyncio.get_running_loop()
        next_at = time.monotonic() + min(1.0, self.interval)
        while not await self._sleep(next_at - time.monotonic()):
            # in a thread: vcgencmd and statvfs on a hung network mount must not stall the loop
            sample = await loop.run_in_executor(None, collector.collect)
            self.metrics_buffer.append(sample)
            self._poke()
            next_at = max(next_at + self.interval, time.monotonic())

    async def _tail_loop(self) -> None:
        """Reads the demo files that changed: inotify wakes it on a write (a burst is then read every
        READ_GAP_S); without inotify, files are polled (every --poll-interval, IDLE_POLL_S when quiet)."""
        notify = open_inotify()
        self.demos.notify = notify
        try:
            await self._follow_demos(notify)
        finally:
            self.demos.notify = None
            if notify is not None:
                notify.close()

    async def _follow_demos(self, notify: Optional[Inotify]) -> None:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        next_scan = next_live = last_scan = 0.0
        last_bug = ""
        while True:
            now = time.monotonic()
            n = 0
            try:
                if notify is not None:
                    self.demos.take_events(notify.read_events())
                if now >= next_scan:
                    self.demos.scan()
                    last_scan, next_scan = now, now + (WATCHED_SCAN_S if self.demos.dirs_watched else 2.0)
                elif self.demos.rescan and now >= last_scan + RESCAN_GAP_S:
                    # new names only, and not more often than RESCAN_GAP_S: a user creating files without end
                    # must not keep the daemon listing /tmp
                    self.demos.scan(full=False)
                    last_scan = now
                # at most a segment per file and round: a small spool bound still drops only the oldest
                n = self.demos.poll(min(256 * KIB, self.spool.segment_bytes), due_only=True)
                if now >= next_live:
                    self.demos.check_liveness()
                    next_live = now + 1.0
                if self.online:
                    self.demos.report_heartbeats()
            except Exception as exc:  # noqa: BLE001 - a bug on one odd file must not stop everything else
                if repr(exc) != last_bug:
                    last_bug = repr(exc)
                    LOG.exception("demo logs: unexpected error (continuing)")
            # a pause between rounds: while catching up none; after lines, READ_GAP_S or more so that a
            # burst is read in chunks (the kernel merges its events meanwhile); polling, the poll interval
            if n >= 500:
                gap = 0.0
            elif notify is None:
                gap = self.opts.poll_interval
            else:
                gap = min(READ_GAP_MAX_S, max(READ_GAP_S, n * READ_GAP_PER_LINE_S)) if n else 0.0
            if gap and await self._sleep(gap):
                return
            rescan_at = last_scan + RESCAN_GAP_S if self.demos.rescan else math.inf
            wait = min(self.demos.next_due(), next_scan, next_live, rescan_at) - time.monotonic()
            if wait <= 0:
                continue
            # sleep until then or until inotify has news (the reader is registered only while waiting,
            # so events arriving during a round or a gap never make the loop spin)
            woken.clear()
            timer = loop.call_later(wait, woken.set)  # not wait_for: see _sender
            if notify is not None and notify.fd is not None:
                loop.add_reader(notify.fd, woken.set)
            try:
                await woken.wait()
            finally:
                timer.cancel()
                if notify is not None and notify.fd is not None:
                    loop.remove_reader(notify.fd)

    async def _system_log_loop(self) -> None:
        source = self.system.resolve()
        if source == "none":
            LOG.info("system logs: not shipped")
            return
        if source == "journal":
            LOG.info("system logs: following the journal")
            assert self._stop is not None
            await self.system.run_journal(self._stop)
            return
        LOG.info("system logs: following %s", source)
        while True:
            try:
                n = self.system.poll_file(source)
            except OSError as exc:
                LOG.warning("system logs: reading %s failed: %s", source, exc)
                n = -1
            if await self._sleep(30.0 if n < 0 else (0.0 if n >= 200 else 0.5)):
                return

    async def _docker_loop(self) -> None:
        path = self.opts.docker_socket
        if not path or path == "none":
            return
        loop = asyncio.get_running_loop()
        host_dir = LogDir(self.opts.log_dir)
        inner = os.environ.get("DVIC_DOCKER_LOG_DIR", "/tmp")
        while True:
            if os.path.exists(path):  # noqa: ASYNC240 - one stat of a local socket path
                try:
                    dirs = await loop.run_in_executor(None, docker_log_dirs, path, inner)
                    self.demos.set_logdirs([host_dir] + dirs)
                    self._docker_error = ""
                except DockerError as exc:
                    if str(exc) != self._docker_error:
                        self._docker_error = str(exc)
                        LOG.warning("docker: %s", exc)
            if await self._sleep(10.0):
                return

    async def _checkpoint_loop(self) -> None:
        failing = False
        while not await self._sleep(2.0):
            try:
                self.spool.checkpoint()
            except OSError as exc:
                if not failing:  # once per episode; the spooled positions still cover a crash
                    LOG.warning("cannot save state in %s: %s", self.opts.state_dir, exc)
                failing = True
                continue
            if failing:
                LOG.warning("state saved again in %s", self.opts.state_dir)
            failing = False

    async def _keepalive_loop(self) -> None:
        url = self.bundle.get("keepalive_url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            LOG.info("keep-alive: no keepalive_url in the bundle; not sent")
            return
        ka = KeepAlive(url, self.bundle["token"], self.ssl_context)
        last_error = ""
        delay = min(1.0, self.keepalive_interval)  # the first one early: a liveness signal even without wss
        try:
            while not await self._sleep(delay):
                delay = self.keepalive_interval
                body = {"firmware": "dvic-node/%s" % VERSION}  # type: Dict[str, Any]
                sample = self.metrics_buffer[-1] if self.metrics_buffer else {}
                if "uptime" in sample:
                    body["uptime"] = sample["uptime"]
                if "mem" in sample:
                    body["free_mem"] = sample["mem"].get("available")
                if "cpu" in sample:
                    body["cpu"] = sample["cpu"].get("total")
                if sample.get("temps"):
                    body["temp"] = max(t["celsius"] for t in sample["temps"])
                try:
                    await ka.post(body)
                    if last_error:
                        LOG.info("keep-alive: working again")
                    last_error = ""
                except KeepAliveError as exc:
                    if exc.revoked:  # refused for good: ask no more often than the websocket does
                        delay = max(delay, self.opts.reconnect_max)
                    if str(exc) != last_error:
                        LOG.info("keep-alive failed: %s", exc)
                    last_error = str(exc)
        finally:
            ka.close()

    # -- connection --
    async def _connection_loop(self) -> None:
        attempt = 0
        while True:
            ws = None  # type: Optional[WebSocket]
            self._welcomed_at = None
            try:
                headers = {}
                if self.bundle["ws_url"].startswith("ws://"):
                    headers["Authorization"] = "Bearer " + self.bundle["token"]
                ws = await ws_connect(self.bundle["ws_url"], self.ssl_context, headers)
                await self._session(ws)
            except asyncio.CancelledError:
                if ws is not None and not ws.closed:
                    try:
                        await asyncio.wait_for(ws.close(1000, "daemon stopping"), 3)
                    except (asyncio.TimeoutError, OSError, WebSocketError):
                        pass
                raise
            except (OSError, ssl.SSLError, asyncio.TimeoutError, WebSocketError, ValueError) as exc:
                self._connection_failed(exc)
            except Exception:  # noqa: BLE001 - a bug in one session must not stop the daemon
                LOG.exception("connection: unexpected error")
            finally:
                self.online = False
                if ws is not None and not ws.closed:
                    ws._abort(1006, "session ended")
            if self._revoked:  # said once by _connection_failed; no backoff ladder to climb again
                delay = self.opts.reconnect_max
                LOG.debug("reconnecting in %.1f s (revoked)", delay)
            else:
                attempt = next_attempt(attempt, self._welcomed_at, time.monotonic())
                delay = backoff_delay(attempt, 1.0, self.opts.reconnect_max)
                attempt += 1
                LOG.info("reconnecting in %.1f s", delay)
            if await self._sleep(delay):
                return

    def _connection_failed(self, exc: BaseException) -> None:
        text = describe_connect_error(exc)
        if isinstance(exc, WebSocketClosed) and exc.code == CLOSE_REPLACED:
            text = "replaced by a newer connection of this node (close 4409)"
        elif isinstance(exc, WebSocketClosed) and exc.code == CLOSE_REVOKED:
            text = "the server revoked this node (close 4403)"
        was_revoked, self._revoked = self._revoked, is_revocation(exc)
        if self._revoked:
            if not was_revoked:  # once: a revoked node stays revoked, and it would otherwise say so forever
                LOG.warning("connection: %s; retrying only every %.0f s (the longest reconnect delay) while this "
                            "node is revoked; re-add the machine (dvic add-node) to give it a new identity",
                            text, self.opts.reconnect_max)
            else:
                LOG.debug("connection: %s", text)
            self._last_conn_error = text
            return
        if text != self._last_conn_error:  # warn (and spool) once per distinct problem
            self._last_conn_error = text
            LOG.warning("connection: %s", text)
        else:
            LOG.info("connection: %s", text)

    async def _session(self, ws: WebSocket) -> None:
        """hello, welcome, then send and receive until the connection ends (always raises)."""
        loop = asyncio.get_running_loop()
        facts = await loop.run_in_executor(None, collect_facts)
        await ws.send_json({"type": "hello", "protocol": PROTOCOL, "daemon_version": VERSION, "facts": facts})
        welcome = self._parse(await asyncio.wait_for(ws.recv(), 30))
        if welcome.get("type") != "welcome":
            raise WebSocketError("expected welcome, got %r" % str(welcome.get("type"))[:40])
        self._apply_settings(welcome.get("settings"))
        last_seq = welcome.get("last_seq", 0)
        if not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0:
            raise WebSocketError("welcome has an invalid last_seq")
        self.spool.ack(last_seq)
        self.spool.raise_seq(last_seq)
        self._sent_max = last_seq
        self._welcomed_at = time.monotonic()
        self.online = True
        if self._last_conn_error:
            LOG.warning("connection: connected again (was: %s)", self._last_conn_error)
        else:
            LOG.info("connected to %s as %s", self.bundle["ws_url"], welcome.get("name", "?"))
        self._last_conn_error = ""
        for msg in self.demos.announce():
            self.outbox.append(msg)
        for msg in self.supervisor.announce():
            self.outbox.append(msg)
        self.link.attach(ws)
        self.spawn(self.updater.on_welcome())
        tasks = [asyncio.ensure_future(self._receiver(ws)), asyncio.ensure_future(self._sender(ws, last_seq + 1)),
                 asyncio.ensure_future(self._pinger(ws))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
            raise WebSocketClosed(1006, "session ended")
        finally:
            self.link.detach()  # shells and tunnels end with the connection; commands wait for the next
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _parse(text: Any) -> Dict[str, Any]:
        if not isinstance(text, str):
            raise WebSocketError("server sent a binary frame")
        try:
            msg = json.loads(text)
        except ValueError:
            raise WebSocketError("server sent invalid JSON: %r" % text[:80]) from None
        if not isinstance(msg, dict):
            raise WebSocketError("server sent a JSON value that is not an object")
        return msg

    def _apply_settings(self, settings: Any) -> None:
        if not isinstance(settings, dict):
            return
        for name, attr, lo, hi in (("interval", "interval", 0.1, 3600), ("keepalive_interval",
                                   "keepalive_interval", 0.1, 3600), ("max_batch", "max_batch", 1, MAX_BATCH_LINES)):
            v = settings.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi:
                setattr(self, attr, int(v) if name == "max_batch" else float(v))
            elif v is not None:
                LOG.warning("welcome: ignoring invalid setting %s=%r", name, v)

    async def _receiver(self, ws: WebSocket) -> None:
        while True:
            raw = await ws.recv()
            try:
                msg = self._parse(raw)
            except WebSocketError as exc:
                LOG.warning("connection: %s; ignored", exc)
                continue
            kind = msg.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is not None:
                await handler(ws, msg)
            elif isinstance(msg.get("id"), str):
                # protocol section 6: a request this daemon does not implement is answered, not fatal
                LOG.info("server asked for %r, which this daemon does not support", str(kind)[:64])
                await ws.send_json({"type": "unsupported", "id": msg["id"][:64], "what": str(kind)[:64]})
            else:
                LOG.debug("ignoring server message of type %r", kind)

    async def _on_ack(self, ws: WebSocket, msg: Dict[str, Any]) -> None:
        seq = msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            LOG.warning("server sent an ack without an integer seq; ignored")
            return
        if seq > self._sent_max:  # only sent lines can be acknowledged: never forget unsent ones
            LOG.warning("server acknowledged seq %d, beyond the last line sent (%d); ignored", seq,
                        self._sent_max)
            return
        self.spool.ack(seq)
        self._poke()

    async def _on_error(self, ws: WebSocket, msg: Dict[str, Any]) -> None:
        LOG.warning("server error %s: %s", str(msg.get("code"))[:64], str(msg.get("message"))[:500])

    async def _on_welcome(self, ws: WebSocket, msg: Dict[str, Any]) -> None:
        self._apply_settings(msg.get("settings"))

    async def _sender(self, ws: WebSocket, cursor: int) -> None:
        assert self._wake is not None
        last_logs_at = 0.0  # when the last `logs` message went out
        while True:
            self._wake.clear()
            while self.outbox:
                await ws.send_json(self.outbox[0])
                self.outbox.popleft()  # only once sent: a failed send keeps it for the next session
            while self.metrics_buffer:
                await ws.send_json(self.metrics_buffer[0])
                self.metrics_buffer.popleft()
            for gap in self.spool.pop_gaps():
                await ws.send_json({"type": "event", "kind": "log_gap",
                                    "message": "spool full: %d lines dropped" % gap["dropped"], "data": gap})
            wait = 1.0
            if cursor <= self.spool.last_seq and cursor - 1 - self.spool.acked < INFLIGHT_MAX:
                # adaptive batching (Nagle-like; the server's cost is per message): lines go at once while
                # no `logs` message awaits its ack; while one does, they gather until its ack comes or
                # for at most COALESCE_S. A full batch goes at once, and so does anything while the
                # spool is half full (waiting must never make it drop lines).
                now = time.monotonic()
                held = now - last_logs_at
                if self._sent_max > self.spool.acked and held < COALESCE_S \
                        and self.spool.last_seq - cursor + 1 < self.max_batch \
                        and self.spool.size < self.spool.max_bytes // 2:
                    wait = COALESCE_S - held  # the ack wakes us earlier
                else:
                    last_logs_at = now
                    lines = self.spool.read(cursor, self.max_batch, BATCH_BYTES)
                    if lines:
                        await ws.send_json({"type": "logs", "lines": lines})
                        cursor = lines[-1]["seq"] + 1
                        self._sent_max = max(self._sent_max, lines[-1]["seq"])
                        continue
                    cursor = self.spool.last_seq + 1  # everything at or after cursor was dropped
            # a timer rather than wait_for: wait_for with a tiny timeout racing a cancellation can leave
            # the task unable to finish on some Pythons (seen on 3.11), which hangs the daemon's stop
            timer = asyncio.get_running_loop().call_later(wait, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    async def _pinger(self, ws: WebSocket) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            try:
                await ws.ping(timeout=PING_INTERVAL)
            except asyncio.TimeoutError:
                raise WebSocketError("server did not answer a ping within %.0f s" % PING_INTERVAL) from None


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dvic_node.py", description="DVIC node daemon (runs in the foreground).")
    p.add_argument("--config", required=True, metavar="BUNDLE", help="enrollment bundle (JSON)")
    p.add_argument("--state-dir", default="/var/lib/dvic-node", help="spool, positions, TLS files")
    p.add_argument("--log-dir", default=os.environ.get("DVIC_LOG_DIR", "/tmp"),
                   help="where demos write dvic_log files (default: $DVIC_LOG_DIR or /tmp)")
    p.add_argument("--spool-max-bytes", type=int, default=DEFAULT_SPOOL_BYTES,
                   help="bound of the unacknowledged-lines spool (default 64 MiB)")
    p.add_argument("--system-log", default="auto", metavar="SOURCE",
                   help="auto, journal, none, or the path of a syslog file")
    p.add_argument("--system-log-rate", type=float, default=20.0, help="system log lines per second (average)")
    p.add_argument("--docker-socket", default="/var/run/docker.sock",
                   help="Docker Engine API socket, or 'none' to not look into containers")
    p.add_argument("--reconnect-max", type=float, default=60.0, help="longest reconnect delay in seconds")
    p.add_argument("--poll-interval", type=float, default=0.2, help="seconds between reads of log files")
    p.add_argument("--no-psutil", action="store_true", help="read /proc and /sys even when psutil is present")
    p.add_argument("--shell-user", default=None, metavar="USER",
                   help="user whose login shell remote shells run (default: the daemon's user)")
    p.add_argument("--reboot-command", default="systemctl reboot", metavar="CMD",
                   help="what the reboot action runs with /bin/sh -c (default: systemctl reboot)")
    p.add_argument("--demos-config", default="", metavar="FILE",
                   help="demo start/stop/restart configuration (default: STATE_DIR/demos.json)")
    p.add_argument("--update-deadline", type=float, default=60.0, metavar="S",
                   help="seconds a self-updated daemon has to be welcomed before it rolls back (default 60)")
    p.add_argument("--max-demo-files", type=int, default=MAX_DEMO_FILES, metavar="N",
                   help="demo log files followed at once, in all (default %d)" % MAX_DEMO_FILES)
    p.add_argument("--max-demo-files-per-owner", type=int, default=MAX_DEMO_FILES_PER_OWNER, metavar="N",
                   help="demo log files followed at once per file owner (uid) and log dir (default %d)"
                   % MAX_DEMO_FILES_PER_OWNER)
    p.add_argument("-v", "--verbose", action="store_true", help="debug output on stderr")
    return p.parse_args(argv)


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # journald timestamps lines itself; elsewhere put the time in
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOG.propagate = False


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-demo"]:  # the demo shim (the daemon itself starts it through SHIM_LAUNCHER)
        return shim_main(argv[1:])
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        bundle = load_bundle(args.config)
    except BundleError as exc:
        LOG.error("%s", exc)
        return 2
    opts = Options(state_dir=args.state_dir, log_dir=args.log_dir, spool_max_bytes=args.spool_max_bytes,
                   system_log=args.system_log, system_log_rate=args.system_log_rate,
                   docker_socket=args.docker_socket, reconnect_max=max(1.0, args.reconnect_max),
                   poll_interval=max(0.01, args.poll_interval), use_psutil=not args.no_psutil,
                   shell_user=args.shell_user, reboot_command=args.reboot_command,
                   demos_config=args.demos_config, update_deadline=max(1.0, args.update_deadline),
                   max_demo_files=max(1, args.max_demo_files),
                   max_demo_files_per_owner=max(1, args.max_demo_files_per_owner))
    daemon = Daemon(bundle, opts)
    try:
        code = asyncio.run(daemon.run())
    except BundleError as exc:
        LOG.error("%s", exc)
        return 2
    except OSError as exc:
        LOG.error("stopped by a system error: %s", exc, exc_info=args.verbose)
        return 1
    if daemon.restart_request is not None:
        reexec(daemon)
    return code


def reexec(daemon: "Daemon") -> None:
    """Replace this process with the (new or restored) daemon file, same pid, same arguments, started
    through the LAUNCHER (from its bytecode) whether this one was or was run as a script."""
    argv = [sys.executable, "-c", LAUNCHER, daemon.updater.path] + sys.argv[1:]
    for h in LOG.handlers:
        h.flush()
    if daemon.restart_request and daemon.restart_request.get("watchdog"):
        pid = os.getpid()
        child = os.fork()
        if child == 0:  # the watchdog: old code, in memory, outliving the exec below
            try:
                if os.fork() == 0:  # twice: orphaned at once, so the new daemon has no zombie to reap
                    update_watchdog(daemon.updater.state_path, daemon.updater.path, pid, argv)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
    LOG.info("restarting: %s", " ".join(argv))
    for h in LOG.handlers:
        h.flush()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
