"""Node websockets below aiohttp: RFC 6455 on the connection's transport, one small object a node.

An idle node's websocket through aiohttp kept a request, its handler task and middleware
coroutines, a websocket reader, writer and queue: about 13 KB a node above TLS
(docs/performance.md, "memory per node"). A `NodeLink` is the whole websocket of one node: it is
the connection's upper protocol once the listener (central/listener.py) has answered the node's
upgrade, parses the node's frames from what the TLS layer decrypted, and offers the node session
(central/nodehub.py) what it used of aiohttp's `WebSocketResponse` (`NodeSocket`): `async for`
over the messages, `send_str`, `close`, `closed`, `close_code`, `exception`.

What it keeps of the protocol: frames from a node are masked (1002 if not); text and binary
messages, fragmented or not, up to `max_size` bytes (1009 beyond, checked on each frame's head, so
nothing that large is buffered); text must be UTF-8 (1007); pings are answered; a close frame is
answered and the connection closed; reserved bits, unknown opcodes, bad control frames and bad
close codes are protocol errors (1002). No extension is negotiated. Flow control both ways: while
the session has `INBOX_BYTES` of messages waiting, or while the transport's send buffer is over its
high-water mark, nothing more is read from the node (TCP holds it back); a send waits for the
buffer to drain (`send_now`, what the session's acks use, does not: an ack answers a batch read,
and nothing is read meanwhile). Heartbeats are central/heartbeats.py's sweep (`last_read`, `ping`, `abort`): a
link has no timer and no task of its own (the session's task reads it).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import WSMessage, WSMsgType

log = logging.getLogger(__name__)

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# Messages the session has not taken yet, past which reads stop: aiohttp's websocket read limit.
INBOX_BYTES = 64 * 1024
# How long a close we started waits for the node's close frame (aiohttp's websocket timeout).
CLOSE_TIMEOUT_S = 10.0
# Close codes a peer may send (RFC 6455 7.4.1; 1004-1006 and 1015 are never sent on the wire).
_SENDABLE_CODES = frozenset(range(1000, 1015)) - {1004, 1005, 1006}
# Why reads are paused (bits): the session's inbox is full; our own writes are.
_INBOX_FULL, _WRITES_PAUSED = 1, 2

_mask_in_place: Callable[[bytes, bytearray], None] | None
try:  # aiohttp's compiled unmasking (in place, on a bytearray), when its build has it
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place
except ImportError:  # pragma: no cover - aiohttp without the helper
    _mask_in_place = None


def unmask(key: bytes, payload: bytes | bytearray | memoryview) -> bytearray:
    """The payload XORed with the frame's 4-byte masking key (RFC 6455 5.3), as a new bytearray."""
    data = bytearray(payload)
    if not data:
        return data
    if _mask_in_place is not None:
        _mask_in_place(key, data)
        return data
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return bytearray((int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little"))


class FrameError(Exception):
    """A node broke the websocket protocol: the connection is closed with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class NodeSocket(Protocol):
    """What the node session uses of its websocket: aiohttp's `WebSocketResponse` and `NodeLink`."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    def exception(self) -> BaseException | None: ...

    def __aiter__(self) -> Any: ...

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool: ...


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


class NodeLink:
    """The websocket of one node over its transport (see the module doc)."""

    __slots__ = ("transport", "max_size", "last_read", "ping_sent", "silent", "close_code", "_exception",
                 "_open", "_ended", "_pending", "_parts", "_parts_op", "_parts_size", "_inbox", "_inbox_bytes",
                 "_waiter", "_paused", "_drain", "_close_wait")

    def __init__(self, transport: asyncio.Transport, max_size: int) -> None:
        self.transport = transport
        self.max_size = max_size
        # Heartbeats (central/heartbeats.py): when the node last sent anything, the unanswered ping.
        self.last_read = time.monotonic()
        self.ping_sent = 0.0
        self.silent = False  # dropped by the heartbeat for not answering
        self.close_code: int | None = None
        self._exception: BaseException | None = None
        self._open = True  # no close frame sent or received, the connection not lost
        self._ended = False  # the session has (or is about to have) every message it will get
        self._pending: bytearray | None = None  # the start of a frame not all read yet
        self._parts: list[bytearray] | None = None  # a fragmented message so far
        self._parts_op = 0
        self._parts_size = 0
        self._inbox: deque[WSMessage] | None = None  # messages the session has not taken yet
        self._inbox_bytes = 0
        self._waiter: asyncio.Future[WSMessage] | None = None  # the session waiting for a message
        self._paused = 0  # why reading is paused (_INBOX_FULL, _WRITES_PAUSED)
        self._drain: asyncio.Future[None] | None = None  # senders waiting for the send buffer
        self._close_wait: asyncio.Future[None] | None = None  # our close, waiting for the node's

    # -- what the node session uses (NodeSocket) ---------------------------------------------------

    @property
    def closed(self) -> bool:
        return not self._open

    def exception(self) -> BaseException | None:
        return self._exception

    def __aiter__(self) -> NodeLink:
        return self

    def __anext__(self) -> asyncio.Future[WSMessage]:
        """The next message (a future: an idle node's session waits on it and nothing else)."""
        waiter: asyncio.Future[WSMessage] = asyncio.get_running_loop().create_future()
        inbox = self._inbox
        if inbox:
            message = inbox.popleft()
            self._inbox_bytes -= _size(message)
            if not inbox:
                self._inbox = None  # an idle node keeps no deque
            if self._paused & _INBOX_FULL and self._inbox_bytes < INBOX_BYTES:
                self._resume(_INBOX_FULL)
            waiter.set_result(message)
        elif self._ended:
            waiter.set_exception(StopAsyncIteration())
        else:
            self._waiter = waiter
        return waiter

    def send_now(self, data: str) -> None:
        """Send a text message without waiting for the send buffer to drain.

        For what the session sends on its own (acks): no task or future per send. Bounded without
        the wait: while the send buffer is over its high-water mark nothing is read from the node,
        so no new batch comes in to be acked (see the module doc).
        """
        if not self._open or self.transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        self.transport.write(frame(OP_TEXT, data.encode()))

    async def send_str(self, data: str, compress: int | None = None) -> None:
        self.send_now(data)
        if self._paused & _WRITES_PAUSED:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            # Shielded: a sender cancelled while waiting must not cancel the others' wait.
            await asyncio.shield(self._drain)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """The closing handshake from our side: send close, wait for the node's (bounded), hang up."""
        if not self._open:
            return False
        self._open = False
        self._inbox, self._inbox_bytes = None, 0  # what the session did not take is dropped, as aiohttp does
        self._resume(_INBOX_FULL)  # the node's close frame must be read
        self._end()
        if self.transport.is_closing():
            self.close_code = self.close_code or 1006
            return True
        self._write(OP_CLOSE, code.to_bytes(2, "big") + message[:123])
        waiter = self._close_wait = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(waiter, CLOSE_TIMEOUT_S)
        except TimeoutError as exc:
            self._exception = exc
            self.close_code = 1006
        finally:
            self.transport.close()
        return True

    # -- what the heartbeat sweep uses --------------------------------------------------------------

    def ping(self) -> None:
        if self._open:
            self._write(OP_PING, b"")

    def abort(self) -> None:
        self.transport.abort()

    # -- the transport's side (called by the listener's protocol) -----------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes read from the node (a view is only valid during this call: what is kept is copied)."""
        self.last_read = time.monotonic()
        if self._ended and self._close_wait is None:
            return  # after the node's close frame or a protocol error nothing more is read
        pending = self._pending
        if pending is not None:
            pending += data
            data = pending
        try:
            used = self._frames(data)
        except FrameError as exc:
            self._pending = None
            self._fail(exc)
            return
        if used == len(data):
            self._pending = None  # (a large frame's buffer is not kept)
        elif used or pending is None:
            self._pending = bytearray(data[used:])  # a copy: `data` may be the listener's buffer
        # else: still the start of one frame, growing in `pending`

    def pause_writing(self) -> None:
        # Nothing more is read while the node does not take what we send: a node that sends
        # pings and never reads cannot make us buffer its pongs without end.
        self._pause(_WRITES_PAUSED)

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._resume(_WRITES_PAUSED)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._open = False
        if self.close_code is None:
            self.close_code = 1006
        if exc is not None and self._exception is None:
            self._exception = exc
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("connection lost"))
            drain.exception()  # (retrieved: no "never retrieved" warning if its senders are gone)
        close_wait, self._close_wait = self._close_wait, None
        if close_wait is not None and not close_wait.done():
            close_wait.set_result(None)
        self._end()

    # -- frames ------------------------------------------------------------------------------------

    def _frames(self, data: bytes | bytearray | memoryview) -> int:
        """Handle every whole frame in `data`; how many bytes that used."""
        size, pos = len(data), 0
        while size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            if b0 & 0x70:
                raise FrameError(1002, "reserved bits set (no extension was negotiated)")
            if not b1 & 0x80:
                raise FrameError(1002, "a client frame must be masked")
            fin, opcode, length, head = b0 & 0x80, b0 & 0x0F, b1 & 0x7F, 6
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 8
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 14
            self._check_head(fin, opcode, length)
            end = pos + head + length
            if end > size:
                break
            payload = unmask(bytes(data[pos + head - 4:pos + head]), data[pos + head:end])
            pos = end
            self._frame(fin, opcode, payload)
            if self._ended and self._close_wait is None:
                break  # a close frame: whatever follows it is not read
        return pos

    def _check_head(self, fin: int, opcode: int, length: int) -> None:
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise FrameError(1002, f"unknown opcode {opcode}")
            if not fin or length > 125:
                raise FrameError(1002, "a control frame must be whole and at most 125 bytes")
            return
        if opcode > OP_BINARY:
            raise FrameError(1002, f"unknown opcode {opcode}")
        if opcode == OP_CONTINUATION and self._parts is None:
            raise FrameError(1002, "continuation frame without a message to continue")
        if opcode != OP_CONTINUATION and self._parts is not None:
            raise FrameError(1002, "a new message inside a fragmented one")
        total = length + (self._parts_size if opcode == OP_CONTINUATION else 0)
        if total > self.max_size:
            raise FrameError(1009, f"Message size {total} exceeds limit {self.max_size}")

    def _frame(self, fin: int, opcode: int, payload: bytearray) -> None:
        if opcode == OP_PING:
            if self._open:
                self._write(OP_PONG, bytes(payload))
        elif opcode == OP_PONG:
            pass  # its arrival is all a heartbeat needs (last_read)
        elif opcode == OP_CLOSE:
            self._closed_by_node(payload)
        elif not fin:
            if self._parts is None:
                self._parts, self._parts_op, self._parts_size = [], opcode, 0
            self._parts.append(payload)
            self._parts_size += len(payload)
        else:
            if self._parts is not None:
                self._parts.append(payload)
                opcode, payload = self._parts_op, bytearray().join(self._parts)
                self._parts, self._parts_size = None, 0
            self._message(opcode, payload)

    def _message(self, opcode: int, payload: bytearray) -> None:
        if opcode == OP_BINARY:
            self._deliver(WSMessage(WSMsgType.BINARY, bytes(payload), None))
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise FrameError(1007, "invalid UTF-8 in a text message") from None
        self._deliver(WSMessage(WSMsgType.TEXT, text, None))

    def _closed_by_node(self, payload: bytearray) -> None:
        code = 1005  # none given
        if len(payload) == 1:
            raise FrameError(1002, "a close frame with a 1-byte payload")
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
                raise FrameError(1002, f"invalid close code {code}")
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                raise FrameError(1007, "invalid UTF-8 in a close reason") from None
        if self._close_wait is not None:  # the answer to our close
            self.close_code = code
            waiter, self._close_wait = self._close_wait, None
            if not waiter.done():
                waiter.set_result(None)
            return
        if self._open:  # answered with the same code, then we hang up (RFC 6455 5.5.1, 7.1.1)
            self._open = False
            self.close_code = code
            self._write(OP_CLOSE, payload[:2])
            self.transport.close()
        self._end()

    def _fail(self, exc: FrameError) -> None:
        """A protocol error: close with its code and hang up; the session gets an ERROR message."""
        log.debug("node websocket protocol error: %s", exc)
        self._exception = exc
        if self._open:
            self._open = False
            self.close_code = exc.code
            self._write(OP_CLOSE, exc.code.to_bytes(2, "big") + str(exc).encode()[:123])
            self.transport.close()
        waiter, self._close_wait = self._close_wait, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._ended:
            self._deliver(WSMessage(WSMsgType.ERROR, exc, None))
            self._end()

    # -- the session's inbox, reads and writes -------------------------------------------------------

    def _deliver(self, message: WSMessage) -> None:
        if self._ended:
            return  # read while our close waits for the node's: not for the session (as aiohttp)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # (not cancelled)
                waiter.set_result(message)
                return
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(message)
        self._inbox_bytes += _size(message)
        if self._inbox_bytes >= INBOX_BYTES:
            self._pause(_INBOX_FULL)

    def _end(self) -> None:
        """No more messages: the session's `async for` ends once it has taken those waiting."""
        self._ended = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(StopAsyncIteration())

    def _write(self, opcode: int, payload: bytes | bytearray) -> None:
        if not self.transport.is_closing():
            self.transport.write(frame(opcode, bytes(payload)))

    def _pause(self, why: int) -> None:
        if not self._paused and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused |= why

    def _resume(self, why: int) -> None:
        was = self._paused
        self._paused &= ~why
        if was and not self._paused and not self.transport.is_closing():
            self.transport.resume_reading()


def _size(message: WSMessage) -> int:
    data = message.data
    return len(data) if isinstance(data, (str, bytes)) else 0
