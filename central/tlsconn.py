"""The server's TLS layer: TLS over a plain TCP transport, one small object per connection.

The event loop's own TLS (uvloop's, asyncio's) keeps per connection a read buffer of its own
(uvloop: 256 KiB, whose touched pages stay resident), a TLS protocol and an application
transport object, and the peer certificate as a dict: about 7 KB of an idle node's 37 KB, and
up to 256 KB more after one large read (docs/performance.md, "memory per node"). Here the loop
makes plain TCP transports and `TlsConnection` does TLS with an `ssl.SSLObject` over two memory
BIOs. It is at once the buffered protocol of the TCP transport (reads go into one buffer shared
by every connection, and the incoming BIO gets exactly the bytes read, at most `WIRE_READ_BYTES`
at a time) and the transport of the protocol above it (aiohttp's `RequestHandler`), which sees
the plain asyncio interface: `connection_made(transport)` once the handshake is over,
`data_received(bytes)`, `eof_received()`, `connection_lost(exc)` exactly once, and
`pause_writing()` / `resume_writing()`.

Life of a connection: HANDSHAKE (bounded by the listener's handshake timeout; a failed handshake
is logged at debug level, our alert sent, the socket closed) -> OPEN (records decrypted and
handed up; writes encrypted a record at a time, so neither memory BIO grows past about one
record or one read) -> SHUTDOWN (`close()`: our close_notify sent, the peer's awaited, then the
socket closed; all bounded by the shutdown timeout, after which the socket is aborted) -> CLOSED.
Write flow control is the TCP transport's: what is encrypted goes straight to it, so its buffer
is what is pending, and its pause/resume are passed up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import constants, transports
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Upper(Protocol):
    """The protocol above TLS (the listener's Doorway): asyncio's plain Protocol calls."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

# The most read from the socket at once. The incoming BIO keeps room for the largest write it
# got (4/3 of it) for the connection's life: reads of this size bound that (docs/performance.md).
WIRE_READ_BYTES = 32 * 1024
# The most plaintext encrypted at once: one TLS record's worth, so the outgoing BIO stays small
# however large a response is written.
RECORD_BYTES = 16 * 1024

# Shared by every connection: the event loop runs one read at a time, decrypted bytes are
# copied out before the next, and nothing is left in these between reads.
_wire = bytearray(WIRE_READ_BYTES)
_wire_view = memoryview(_wire)
_clear = bytearray(WIRE_READ_BYTES + RECORD_BYTES)
_clear_view = memoryview(_clear)

# States (small ints: compared on every read).
HANDSHAKE, OPEN, SHUTDOWN, CLOSED = 0, 1, 2, 3
# The peer's end: not seen; seen (its close_notify or the end of its TCP stream) but not yet told
# to the upper protocol (its reading is paused, or records are still to be handed up); told.
NO_EOF, EOF_SEEN, EOF_TOLD = 0, 1, 2


class TlsListener:
    """What every connection of one listening socket shares: the TLS context, the timeouts, and
    what makes the protocol above TLS (called once a connection's handshake is over)."""

    __slots__ = ("context", "handshake_timeout", "shutdown_timeout", "protocol_factory")

    def __init__(self, context: ssl.SSLContext, protocol_factory: Callable[[], Upper], *,
                 handshake_timeout: float, shutdown_timeout: float) -> None:
        self.context = context
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.shutdown_timeout = shutdown_timeout

    def __call__(self) -> TlsConnection:
        """A protocol factory for `loop.create_server` (plain TCP)."""
        return TlsConnection(self)


class TlsConnection(transports._FlowControlMixin, asyncio.BufferedProtocol):
    """One TLS connection: the TCP transport's protocol and the upper protocol's transport.

    `_FlowControlMixin` (asyncio's write-flow-control base of its own transports) only for its
    slots and because asyncio's `loop.sendfile` fallback (aiohttp's FileResponse on the standard
    loop) accepts no other transport; the flow control itself is the TCP transport's.
    """

    __slots__ = ("_listener", "_plain", "_protocol", "_ssl", "_incoming", "_outgoing", "_state",
                 "_timer", "_backlog", "_reading_paused", "_eof", "_app_connected")

    # asyncio's loop.sendfile writes through this transport (never the socket: it is encrypted).
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, listener: TlsListener, make_protocol: Callable[[], Upper] | None = None) -> None:
        """`make_protocol`: what makes this connection's upper protocol, if not the listener's
        factory (a connection from behind a balancer: central/listener.py `_client_at`)."""
        # No super().__init__(): it would give every connection an `_extra` dict and limits of its
        # own, both of which live in the TCP transport here.
        self._listener = listener
        self._plain: Any = None  # uvloop's TCP transport is no asyncio.Transport subclass
        # Until the handshake is over: what makes the upper protocol (None: the listener's factory).
        self._protocol: Any = make_protocol
        self._ssl: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._state = HANDSHAKE
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: list[memoryview] | None = None  # plaintext waiting on the peer (renegotiation)
        self._reading_paused = False
        self._eof = NO_EOF  # the peer's close_notify or the end of its TCP stream
        self._app_connected = False  # the upper protocol got connection_made, not yet connection_lost
        self._protocol_paused = False

    def __repr__(self) -> str:
        return f"<TlsConnection {self._peer()} state={self._state}>"

    # -- the TCP transport's protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._plain = transport
        self._loop = asyncio.get_running_loop()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = self._listener.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._timer = self._loop.call_later(self._listener.handshake_timeout, self._handshake_overdue)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _wire_view

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == HANDSHAKE:
            # (A balancer's PROXY protocol header is read before the connection gets here:
            # central/proxyproto.py.)
            self._incoming.write(_wire_view[:nbytes])  # type: ignore[union-attr]
            self._handshake()
        elif self._state == OPEN:
            self._incoming.write(_wire_view[:nbytes])  # type: ignore[union-attr]
            self._decrypt()
        elif self._state == SHUTDOWN:
            self._incoming.write(_wire_view[:nbytes])  # type: ignore[union-attr]
            self._shutdown_step()

    def eof_received(self) -> bool:
        """The peer ended its TCP stream. True: closing the socket is ours (after our close_notify)."""
        if self._state == HANDSHAKE:
            log.debug("TLS handshake from %s: the peer closed the connection", self._peer())
            self._cancel_timer()
            self._state = CLOSED
            return False  # the TCP transport closes itself
        if self._eof == NO_EOF:
            self._eof = EOF_SEEN
        if self._state == OPEN:
            self._tell_eof()
        elif self._state == SHUTDOWN:
            self._close_plain()  # the peer's close_notify cannot come now
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        self._cancel_timer()
        self._backlog = None
        # The OpenSSL state (about 27 KiB) goes now, not when the last reference to this object does.
        self._ssl = self._incoming = self._outgoing = None
        if self._app_connected:
            self._app_connected = False
            self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        """The TCP transport's buffer is over its high-water mark: tell the upper protocol."""
        if self._app_connected and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._app_connected and self._protocol_paused:
            self._protocol_paused = False
            self._protocol.resume_writing()

    # -- handshake ----------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            # As uvloop did: no log line above debug for what any client on the network can cause.
            log.debug("TLS handshake from %s failed: %s", self._peer(), exc)
            self._flush()  # our alert, so the client learns why
            self._fail()
            return
        self._cancel_timer()
        self._flush()
        self._state = OPEN
        self._connect_app()
        if self._state == OPEN:  # the upper protocol may have closed it already (a refusal)
            self._decrypt()  # the request may have come with the handshake's last flight

    def _handshake_overdue(self) -> None:
        self._timer = None
        if self._state == HANDSHAKE:
            log.debug("TLS handshake from %s took over %.1f s: dropped", self._peer(),
                      self._listener.handshake_timeout)
            self.abort()

    def _connect_app(self) -> None:
        self._protocol = (self._protocol or self._listener.protocol_factory)()
        self._app_connected = True
        self._protocol.connection_made(self)

    # -- reading ------------------------------------------------------------------------------

    def _decrypt(self) -> None:
        """Hand up every whole record in the incoming BIO, while the upper protocol reads."""
        sslobj = self._ssl
        incoming = self._incoming
        filled = 0
        while self._state == OPEN and not self._reading_paused:
            try:
                # Into a buffer: the count, not bytes (typeshed knows only the bytes form).
                count: int = sslobj.read(len(_clear) - filled, _clear_view[filled:])  # type: ignore[union-attr,assignment]
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._eof = self._eof or EOF_SEEN
                break
            except ssl.SSLError as exc:
                log.debug("TLS error from %s: %s", self._peer(), exc)
                self._deliver(filled)
                self._fail()
                return
            if count == 0:  # the peer's close_notify
                self._eof = self._eof or EOF_SEEN
                break
            filled += count
            if not incoming.pending and not sslobj.pending():  # type: ignore[union-attr]
                break  # all read: spare the exception another read would end with
            if filled > len(_clear) - RECORD_BYTES:
                filled = self._deliver(filled)
        if filled:
            self._deliver(filled)
        if self._backlog and self._state == OPEN:
            self._write_backlog()  # a renegotiation the writes waited on may be over
        if self._outgoing is not None and self._outgoing.pending:
            self._flush()  # what reading made OpenSSL send (key updates, renegotiation)
        if self._eof == EOF_SEEN:
            self._tell_eof()

    def _deliver(self, filled: int) -> int:
        """Give the upper protocol the first `filled` decrypted bytes (a copy); 0, the new fill."""
        if filled and self._app_connected and self._state == OPEN:
            self._protocol.data_received(_clear_view[:filled].tobytes())
        return 0

    def _tell_eof(self) -> None:
        """The peer will send nothing more: once what it sent before is handed up, say so, once.
        Unless the upper protocol keeps its side open (TLS 1.3 allows writing on), close."""
        if self._eof != EOF_SEEN or self._state != OPEN or self._reading_paused:
            return
        self._eof = EOF_TOLD
        keep_open = self._protocol.eof_received() if self._app_connected else False
        if not keep_open:
            self.close()

    # -- writing ------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != OPEN or not data:
            return  # like asyncio's transports: writes after close() are dropped
        if self._backlog:
            self._backlog.append(memoryview(data))
            return
        if len(data) <= RECORD_BYTES and not self._plain.is_closing():
            try:  # most writes: one record, straight through
                self._ssl.write(data)  # type: ignore[union-attr]
            except ssl.SSLError:
                pass  # the general path below tells why, and keeps what waits
            else:
                self._plain.write(self._outgoing.read())  # type: ignore[union-attr]
                return
        self._encrypt(memoryview(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))  # one run of full records, not a short record per piece

    def _encrypt(self, view: memoryview) -> None:
        """Encrypt a record at a time, each straight into the TCP transport's buffer."""
        sslobj = self._ssl
        outgoing = self._outgoing
        if self._plain.is_closing():  # reset by the peer; connection_lost is on its way
            return
        sent = 0
        try:
            while sent < len(view):
                sent += sslobj.write(view[sent:sent + RECORD_BYTES])  # type: ignore[union-attr]
                self._plain.write(outgoing.read())  # type: ignore[union-attr]
        except ssl.SSLWantReadError:  # a TLS 1.2 renegotiation waits for the peer
            self._backlog = [view[sent:]]
            self._flush()
        except ssl.SSLError as exc:
            log.debug("TLS error writing to %s: %s", self._peer(), exc)
            self._fail()

    def _write_backlog(self) -> None:
        backlog, self._backlog = self._backlog or [], None
        for index, view in enumerate(backlog):
            self._encrypt(view)
            if self._backlog is not None:  # still waiting: keep the rest in order
                self._backlog.extend(backlog[index + 1:])
                return

    def _flush(self) -> None:
        outgoing = self._outgoing
        if outgoing is not None and outgoing.pending and not self._plain.is_closing():
            self._plain.write(outgoing.read())

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close from this side: close() sends close_notify")

    def get_write_buffer_size(self) -> int:
        pending = sum(len(view) for view in self._backlog) if self._backlog else 0
        return pending + (self._plain.get_write_buffer_size() if self._plain is not None else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._plain.get_write_buffer_limits()  # type: ignore[no-any-return]

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._plain.set_write_buffer_limits(high, low)

    # -- reading flow control -------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._state == OPEN and not self._reading_paused

    def pause_reading(self) -> None:
        if self._reading_paused or self._state != OPEN:
            return
        self._reading_paused = True
        self._plain.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._state != OPEN:
            return
        self._plain.resume_reading()
        # Records that arrived before the pause wait in the incoming BIO, and maybe the peer's
        # end; not from inside the caller's own data_received.
        if (self._incoming is not None and self._incoming.pending) or self._eof == EOF_SEEN:
            self._loop.call_soon(self._resume_decrypt)

    def _resume_decrypt(self) -> None:
        if self._state == OPEN:
            self._decrypt()

    # -- closing ----------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._state != OPEN

    def close(self) -> None:
        """Send close_notify after what is written, then close once the peer answers it (or has
        ended already); the shutdown timeout bounds all of it."""
        if self._state != OPEN:
            if self._state == HANDSHAKE:
                self.abort()
            return
        self._state = SHUTDOWN
        if self._backlog:
            self._backlog = None  # waiting on a renegotiation: what it held cannot be sent now
        self._timer = self._loop.call_later(self._listener.shutdown_timeout, self._shutdown_overdue)
        if self._reading_paused:  # the peer's close_notify must be read
            self._reading_paused = False
            self._plain.resume_reading()
        self._shutdown_step()

    def _shutdown_step(self) -> None:
        try:
            self._ssl.unwrap()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:  # ours sent, the peer's not seen yet
            self._flush()
            if self._eof:
                self._close_plain()
            return
        except ssl.SSLError as exc:
            log.debug("TLS shutdown with %s: %s", self._peer(), exc)
            self._fail()
            return
        self._flush()
        self._close_plain()

    def _shutdown_overdue(self) -> None:
        """The peer did not answer our close_notify, or did not take what was left to send, in
        time (connection_lost cancels this timer)."""
        self._timer = None
        log.debug("TLS shutdown with %s took over %.1f s: aborted", self._peer(), self._listener.shutdown_timeout)
        self._state = CLOSED
        self._plain.abort()

    def _close_plain(self) -> None:
        """Close the socket after what it still has to send; the timer keeps bounding that flush."""
        self._state = CLOSED
        self._plain.close()

    def abort(self) -> None:
        self._state = CLOSED
        self._backlog = None
        if self._plain is not None:
            self._plain.abort()

    def _fail(self) -> None:
        """A TLS error: the connection cannot go on. The alert OpenSSL made is sent, if the peer
        takes it within the shutdown timeout."""
        self._flush()
        self._state = CLOSED
        self._backlog = None
        self._cancel_timer()
        self._timer = self._loop.call_later(self._listener.shutdown_timeout, self._shutdown_overdue)
        self._plain.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the rest of the transport interface ------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._ssl if self._state != HANDSHAKE else None
        if name == "sslcontext":
            return self._listener.context
        if name == "ssl_object":
            return sslobj if sslobj is not None else default
        if name == "peercert":  # made on each call, never kept (uvloop kept the dict for every connection)
            return sslobj.getpeercert() if sslobj is not None else default
        if name == "cipher":
            return sslobj.cipher() if sslobj is not None else default
        if name == "compression":
            return sslobj.compression() if sslobj is not None else default
        if self._plain is None:
            return default
        return self._plain.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol if self._state != HANDSHAKE else None  # type: ignore[return-value]

    def _peer(self) -> str:
        peername = self._plain.get_extra_info("peername") if self._plain is not None else None
        return f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) and len(peername) >= 2 else "?"
