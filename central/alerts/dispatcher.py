"""The notification dispatcher: the alert engine's `NoticeSink` (central/alerts/model.py).

`submit` only writes: each notice is routed to its channels and joins (or opens) its group in the
delivery queue, in one commit; nothing is sent from the caller's task. One worker per channel
then sends each group when it is due, a bounded number at a time, and records every attempt:
sent, due again after a backoff, or failed after the last try. A receiver that hangs, refuses or
answers 500 only ever occupies its own channel's worker, within the attempt timeout.

At start-up everything still pending (a stop, a crash, a kill -9) is scheduled again: the queue
is the database, the workers only remember when to look at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Sequence
from typing import cast

from ..config import Notify
from ..dbconn import ReadDB, WriteConn
from ..tasks import cancel_and_wait
from ..writer import Writer
from .channels import queries, store
from .channels.message import Message, channel_test_message
from .channels.send import DeliveryFailed, Transport
from .channels.spec import Channel
from .model import Notice
from .routing import ANY, ROUTE_SEVERITIES

log = logging.getLogger("dvic-central.notify")

RETENTION_EVERY_S = 3600.0
# A stopping server lets attempts in flight finish this long (within their own timeout).
CLOSE_GRACE_S = 3.0


class RouteInvalid(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def retry_delay(settings: Notify, attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling, capped, with +-10 %
    jitter so channels that failed together do not retry in lockstep."""
    base = min(settings.backoff_max, settings.backoff * 2 ** max(0, attempts - 1))
    return float(base * random.uniform(0.9, 1.1))


class Dispatcher:
    def __init__(self, writer: Writer, read_db: ReadDB, settings: Notify,
                 transport: Transport | None = None) -> None:
        self.writer = writer
        self.read_db = read_db
        self.settings = settings
        self.transport = transport or Transport(timeout=settings.timeout)
        self._workers: dict[str, ChannelWorker] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def start(self) -> None:
        """Schedule what was left pending (a restart, a crash) and start the retention task. With
        several replicas only the features leader delivers: this runs when it gains the lead."""
        self._closed = False
        for item in await self.writer.submit(store.pending()):
            self._schedule(item)
        self._tasks.append(asyncio.create_task(self._retention(), name="dvic-notify-retention"))

    async def close(self, grace: float = CLOSE_GRACE_S) -> None:
        """Stop sending: attempts in flight get `grace` seconds to end; whatever is not sent stays
        pending in the database for the next start."""
        self._closed = True
        workers = list(self._workers.values())
        self._workers.clear()
        await asyncio.gather(*(worker.stop(grace) for worker in workers))
        await cancel_and_wait(*self._tasks)
        await self.transport.close()

    async def pause(self) -> None:
        """Stop delivering (the features lead is lost); what is queued stays pending in the database
        for the replica that leads next. The transport stays open for a later `start`."""
        self._closed = True
        workers = list(self._workers.values())
        self._workers.clear()
        await asyncio.gather(*(worker.stop() for worker in workers))
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)

    # -- the engine's side ------------------------------------------------------------------------

    def persist(self, conn: WriteConn, notices: Sequence[Notice]) -> object:
        """NoticeSink: queue `notices` as deliveries inside the engine's commit (writer thread)."""
        settings = self.settings
        return store.enqueue(notices, time.time(), settings.group_window, settings.group_quiet)(conn)

    def committed(self, persisted: object) -> None:
        """NoticeSink: after that commit, hand the groups it created or moved to their workers."""
        for item in cast("list[store.Scheduled]", persisted):
            self._schedule(item)

    async def submit(self, notices: Sequence[Notice]) -> None:
        """Persist `notices` as queued deliveries and return (one commit). Raises the writer's
        StorageError when the database cannot commit; never waits for, or fails with, a receiver."""
        if not notices:
            return
        settings = self.settings
        for item in await self.writer.submit(
                store.enqueue(notices, time.time(), settings.group_window, settings.group_quiet)):
            self._schedule(item)

    # -- operators' side (the API and `dvic channel|route|notifications`) ------------------------

    async def add_channel(self, channel: Channel, operator: str) -> bool:
        """False when a channel of that name exists."""
        return bool(await self.writer.submit(store.add_channel(channel, time.time(), operator)))

    async def remove_channel(self, name: str) -> bool:
        """Remove the channel and its routes; what it had queued is kept, as failed."""
        removed = bool(await self.writer.submit(store.remove_channel(name, time.time())))
        worker = self._workers.pop(name, None)
        if worker is not None:
            await worker.stop()
        return removed

    async def add_route(self, group: str, severity: str, channel: str, operator: str) -> int:
        if severity not in ROUTE_SEVERITIES:
            raise RouteInvalid("bad_severity", f"severity must be one of {', '.join(ROUTE_SEVERITIES)} "
                                               f"(the lowest it takes; {ANY} takes all), got {severity!r}")
        if not isinstance(group, str) or len(group) > 64 or any(ord(c) < 32 for c in group):
            raise RouteInvalid("bad_group", "group must be a group name, '*' for any group, or '' for nodes "
                                            "without one")
        route_id = await self.writer.submit(store.add_route(group, severity, channel, time.time(), operator))
        if route_id is None:
            raise RouteInvalid("unknown_channel", f"no channel named {channel!r}: add it first (dvic channel add)")
        if route_id == 0:
            raise RouteInvalid("route_exists", f"the route ({group or 'no group'}, {severity}) -> {channel} exists")
        return int(route_id)

    async def remove_route(self, route_id: int) -> bool:
        return bool(await self.writer.submit(store.remove_route(route_id)))

    async def test(self, name: str) -> str:
        """Send a test message to `name` now (outside the queue); returns the receiver's answer.
        Raises LookupError for an unknown channel, DeliveryFailed with the reason."""
        channel = await queries.channel_with_secrets(self.read_db, name)
        if channel is None:
            raise LookupError(name)
        return await self.transport.deliver(channel, channel_test_message())

    async def resend(self, notification_ids: Sequence[int] | None) -> list[int]:
        """Queue sent or failed notifications again (None: every failed one); returns their ids."""
        scheduled = await self.writer.submit(store.resend(notification_ids, time.time()))
        for item in scheduled:
            self._schedule(item)
        return [item.id for item in scheduled]

    # -- workers ----------------------------------------------------------------------------------

    def _schedule(self, item: store.Scheduled) -> None:
        if self._closed:
            return
        worker = self._workers.get(item.channel)
        if worker is None:
            worker = self._workers[item.channel] = ChannelWorker(item.channel, self)
        worker.schedule(item.id, item.due)

    async def attempt(self, notification_id: int, worker: ChannelWorker) -> None:
        """One try of one notification, recorded whatever happens."""
        claim = await self.writer.submit(store.claim(notification_id, time.time()))
        if claim is None:
            return
        if isinstance(claim, float):  # a notice joined the group and moved it
            worker.schedule(notification_id, claim)
            return
        message = Message(claim.id, claim.kind, claim.notices, self.settings.max_lines, claim.created)
        try:
            answer = await self.transport.deliver(claim.channel, message)
        except DeliveryFailed as exc:
            await self._failed(claim, exc.message, exc.permanent, worker)
        except Exception as exc:  # a bug in a channel must not lose the notification
            log.exception("notification %d to %s: unexpected error", claim.id, claim.channel.name)
            await self._failed(claim, f"internal error: {type(exc).__name__}", False, worker)
        else:
            await self.writer.submit(store.record_sent(claim.id, time.time(), answer))
            log.info("notification %d sent to %s (%d alerts): %s", claim.id, claim.channel.name,
                     len(claim.notices), answer)

    async def _failed(self, claim: store.Claim, error: str, permanent: bool, worker: ChannelWorker) -> None:
        attempts = claim.attempts + 1
        now = time.time()
        last = permanent or attempts >= self.settings.attempts
        retry_at = None if last else now + retry_delay(self.settings, attempts)
        await self.writer.submit(store.record_failure(claim.id, now, error, retry_at))
        if retry_at is None:
            log.warning("notification %d to %s failed after %d attempt(s): %s", claim.id, claim.channel.name,
                        attempts, error)
        else:
            log.info("notification %d to %s: attempt %d failed (%s); next in %.0f s", claim.id,
                     claim.channel.name, attempts, error, retry_at - now)
            worker.schedule(claim.id, retry_at)

    async def _retention(self) -> None:
        while True:
            try:
                before = time.time() - self.settings.keep_s
                while await self.writer.submit(store.forget_before(before)):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # retention must outlive a transient storage error
                log.exception("notification retention failed")
            await asyncio.sleep(RETENTION_EVERY_S)

    def pending_notifications(self) -> int:
        """Notifications waiting to be sent or retried, from memory (GET /metrics shows it: the rules
        half's metrics_export looks for this method on the sink)."""
        return sum(w.queued() for w in self._workers.values())


class ChannelWorker:
    """Sends one channel's notifications when they are due, at most `per_channel` at once."""

    def __init__(self, channel: str, dispatcher: Dispatcher) -> None:
        self.channel = channel
        self.dispatcher = dispatcher
        self._heap: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(dispatcher.settings.per_channel)
        self._task = asyncio.create_task(self._run(), name=f"dvic-notify-{channel}")

    def schedule(self, notification_id: int, due: float) -> None:
        self._due[notification_id] = due
        heapq.heappush(self._heap, (due, notification_id))
        self._wake.set()

    def queued(self) -> int:
        return len(self._due) + len(self._in_flight)

    async def stop(self, grace: float = 0.0) -> None:
        """Start nothing more; attempts in flight get `grace` seconds to finish and be recorded
        (one cut short stays pending and is tried again at the next start)."""
        self._task.cancel()
        in_flight = list(self._in_flight.values())
        if in_flight and grace > 0:
            await asyncio.wait(in_flight, timeout=grace)
        await cancel_and_wait(self._task, *in_flight)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                due, notification_id = heapq.heappop(self._heap)
                if self._due.get(notification_id) != due or notification_id in self._in_flight:
                    continue  # moved since (a later entry holds it), or being tried right now
                del self._due[notification_id]
                await self._slots.acquire()
                self._in_flight[notification_id] = asyncio.create_task(
                    self._attempt(notification_id), name=f"dvic-notify-{self.channel}-{notification_id}")
            timeout = self._heap[0][0] - time.time() if self._heap else None
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that comes
            # as the event is set, and stop() would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
                    await self._wake.wait()

    async def _attempt(self, notification_id: int) -> None:
        try:
            await self.dispatcher.attempt(notification_id, self)
        except asyncio.CancelledError:
            raise
        except Exception:  # storage failed around the attempt: the row is still pending, look again later
            log.exception("notification %d: could not record an attempt", notification_id)
            self.schedule(notification_id, time.time() + self.dispatcher.settings.backoff)
        finally:
            self._in_flight.pop(notification_id, None)
            self._slots.release()
            due = self._due.get(notification_id)
            if due is not None:  # scheduled again while it was being tried: its heap entry was skipped
                heapq.heappush(self._heap, (due, notification_id))
                self._wake.set()
