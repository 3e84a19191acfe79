"""The bus between replicas on PostgreSQL LISTEN/NOTIFY (issue 18; why this and not NATS, with the
figures: docs/architecture.md "Between replicas: the message bus").

A message is a JSON object. It goes out as one or more NOTIFYs of at most `CHUNK_BYTES` (PostgreSQL
refuses a payload of 8,000 bytes), each headed `sender seq part count|` so the receiver puts the
parts back together and sees a gap: every sender numbers its messages per channel, one after the
other. The rules the measurement set (docs/architecture.md):
- a LISTEN connection of its own that never runs a transaction (a listener inside a transaction
  holds the whole cluster's notification queue);
- publishing on another connection, outside any transaction of the writer (a NOTIFY in a
  transaction is a commit-time lock on the queue, for every writer);
- after any gap (the listening session was lost and opened again, a number was skipped), the
  `on_gap` handlers run: what a replica knows from the bus must then be read again from the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..dbconn import mask_url
from . import queries

log = logging.getLogger(__name__)

# NOTIFY payloads are refused from 8,000 bytes; the header takes the rest of the margin.
CHUNK_BYTES = 7900
RECONNECT_S = 0.5
REQUEST_TIMEOUT_S = 2.0
APPLICATION = "dvic-central bus"

Handler = Callable[[dict[str, Any]], None]


class BusError(RuntimeError):
    """The bus could not carry a message (the database is away): the caller says so to its user."""


class NoReply(BusError):
    """A request had no answer in time: the replica it went to is gone or too busy."""


def channel_of(replica: str) -> str:
    """The channel a replica LISTENs on for what is addressed to it."""
    return f"dvic_r_{replica}"


def chunks(text: str, limit: int = CHUNK_BYTES) -> list[str]:
    """`text` cut into pieces of at most `limit` UTF-8 bytes, never inside a character."""
    data = text.encode()
    out: list[str] = []
    start = 0
    while start < len(data) or not out:
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # a continuation byte: step back
            end -= 1
        out.append(data[start:end].decode())
        start = end
    return out


@dataclass
class _Incoming:
    """What one sender has sent on one channel: the next number expected, the parts gathered."""
    next_seq: int | None = None
    parts: list[str] = field(default_factory=list)


class PgBus:
    """See the module's docstring. `replica` names this process on the bus (its own channel)."""

    def __init__(self, url: str, replica: str, *, reconnect_s: float = RECONNECT_S) -> None:
        self.url = url
        self.replica = replica
        self.reconnect_s = reconnect_s
        self.sender = f"{replica}.{uuid.uuid4().hex[:8]}"  # a restarted replica is a new sender
        self.gaps = 0
        self._handlers: dict[str, list[Handler]] = {}
        self._gap_handlers: list[Callable[[], None]] = []
        self._incoming: dict[tuple[str, str], _Incoming] = {}
        self._seq: dict[str, itertools.count[int]] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._responders: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self._listen: Any = None
        self._publish: Any = None
        self._publish_lock = asyncio.Lock()
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self.subscribe(channel_of(replica), self._on_own_channel)

    # -- set-up ------------------------------------------------------------------------------------
    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call `handler` with every message on `channel` (before `start`, or while running)."""
        new = channel not in self._handlers
        self._handlers.setdefault(channel, []).append(handler)
        if new and self._listen is not None:
            self._spawn(self._add_listener(self._listen, channel))

    def on_gap(self, handler: Callable[[], None]) -> None:
        self._gap_handlers.append(handler)

    def responder(self, kind: str, answer: Callable[[dict[str, Any]], Any]) -> None:
        """Answer requests of `kind` (see `request`): `answer(message)` returns the reply's fields
        (or an awaitable of them)."""
        self._responders[kind] = answer

    async def start(self) -> None:
        """Open the listening session (waits until it listens, so nothing sent after is missed)."""
        self._task = asyncio.create_task(self._keep_listening(), name=f"dvic-bus-{self.replica}")
        await self._listening.wait()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in (self._listen, self._publish):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._listen = self._publish = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusError("the bus was closed"))

    # -- sending -----------------------------------------------------------------------------------
    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Send `message` to every replica listening on `channel` (this one too, if it listens).
        BusError when the database cannot take it."""
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        counter = self._seq.setdefault(channel, itertools.count())
        async with self._publish_lock:  # numbers go out in the order they are taken
            seq = next(counter)
            parts = chunks(text)
            payloads = [f"{self.sender} {seq} {i} {len(parts)}|{part}" for i, part in enumerate(parts)]
            try:
                conn = await self._publisher()
                # One statement: the parts of a message are delivered together, in order.
                await queries.notify_all(conn, channel, payloads)
            except Exception as exc:  # refused, reset, timed out: the next publish connects again
                await self._drop_publisher()
                raise BusError(f"the bus ({mask_url(self.url)}) could not send on {channel}: {exc}") from exc

    async def request(self, replica: str, kind: str, message: dict[str, Any],
                      timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Ask `replica` (its responder for `kind`) and wait for its reply; NoReply after `timeout`."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.publish(channel_of(replica), {"bus": "request", "kind": kind, "id": request_id,
                                                     "from": self.replica, "body": message})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise NoReply(f"replica {replica!r} did not answer within {timeout:g} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def _publisher(self) -> Any:
        if self._publish is None or self._publish.is_closed():
            self._publish = await _connect(self.url, f"{APPLICATION} {self.replica} out")
        return self._publish

    async def _drop_publisher(self) -> None:
        conn, self._publish = self._publish, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    # -- receiving ---------------------------------------------------------------------------------
    async def _keep_listening(self) -> None:
        first = True
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await _connect(self.url, f"{APPLICATION} {self.replica}")
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                for channel in list(self._handlers):
                    await self._add_listener(conn, channel)
                self._listen = conn
                if not first:
                    self._incoming.clear()  # what was half-received is lost: the gap says so once
                    self._gap("the listening session was opened again")
                first = False
                self._listening.set()
                await lost.wait()
                log.warning("bus %s: the listening session ended", self.replica)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus %s: cannot listen on %s: %s", self.replica, mask_url(self.url), exc)
            self._listen = None
            await asyncio.sleep(self.reconnect_s)

    async def _add_listener(self, conn: Any, channel: str) -> None:
        await conn.add_listener(channel, self._notified)

    def _notified(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        head, _, part = payload.partition("|")
        try:
            sender, seq_text, index_text, count_text = head.split(" ")
            seq, index, count = int(seq_text), int(index_text), int(count_text)
        except ValueError:
            log.warning("bus %s: a notification on %s not from a replica: ignored", self.replica, channel)
            return
        incoming = self._incoming.setdefault((channel, sender), _Incoming())
        if index == 0:
            if incoming.next_seq is not None and seq != incoming.next_seq:
                self._gap(f"{sender} on {channel}: message {seq} after {incoming.next_seq - 1}")
            incoming.parts = []
        elif seq != incoming.next_seq or len(incoming.parts) != index:
            return  # a part of a message whose start was missed (counted when it began)
        incoming.parts.append(part)
        if index < count - 1:
            incoming.next_seq = seq
            return
        incoming.next_seq = seq + 1
        text, incoming.parts = "".join(incoming.parts), []
        try:
            message = json.loads(text)
        except ValueError:
            log.warning("bus %s: an unreadable message on %s from %s: ignored", self.replica, channel, sender)
            return
        for handler in self._handlers.get(channel, ()):
            try:
                handler(message)
            except Exception:  # one handler's bug must not stop the bus
                log.exception("bus %s: a handler for %s failed", self.replica, channel)

    def _gap(self, why: str) -> None:
        self.gaps += 1
        log.warning("bus %s: gap (%s): rereading what the bus told", self.replica, why)
        for handler in self._gap_handlers:
            try:
                handler()
            except Exception:
                log.exception("bus %s: a gap handler failed", self.replica)

    def _on_own_channel(self, message: dict[str, Any]) -> None:
        kind = message.get("bus")
        if kind == "reply":
            future = self._pending.get(str(message.get("id")))
            if future is not None and not future.done():
                future.set_result(message.get("body") or {})
        elif kind == "request":
            self._spawn(self._answer(message))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _answer(self, message: dict[str, Any]) -> None:
        answer = self._responders.get(str(message.get("kind")))
        if answer is None:
            body: dict[str, Any] = {"error": f"replica {self.replica!r} answers no {message.get('kind')!r}"}
        else:
            try:
                body = answer(message.get("body") or {})
                if asyncio.iscoroutine(body):
                    body = await body
            except Exception as exc:
                log.exception("bus %s: answering %s failed", self.replica, message.get("kind"))
                body = {"error": str(exc)}
        with contextlib.suppress(BusError):  # the asker times out and says so
            await self.publish(channel_of(str(message.get("from"))), {"bus": "reply", "id": message.get("id"),
                                                                      "body": body})


async def _connect(url: str, application: str) -> Any:
    import asyncpg  # late: SQLite-only installs never load it

    return await asyncio.wait_for(asyncpg.connect(url, server_settings={"application_name": application}), 10)
