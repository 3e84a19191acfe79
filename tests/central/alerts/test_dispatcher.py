"""The dispatcher on a real database (central's writer) with real HTTP receivers: routing, grouping
within the window, retries with backoff, failed and re-sent notifications, a slow or broken
receiver that blocks nobody, and pending notifications that outlive the dispatcher."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from central.alerts.channels import queries
from central.alerts.channels.spec import parse_channel
from central.alerts.dispatcher import Dispatcher, RouteInvalid
from central.config import Notify
from tests.support.receivers import HttpReceiver
from tests.support.wait import async_wait_for

from .helpers import Database, notice

# Short times so the tests run fast; the logic is the same at the defaults.
FAST = Notify(group_window=1.0, group_quiet=0.3, attempts=4, backoff=0.05, backoff_max=0.2, timeout=2.0)


@asynccontextmanager
async def dispatcher(database: Database, settings: Notify = FAST) -> AsyncIterator[Dispatcher]:
    sink = Dispatcher(database.writer, database.read_db, settings)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.close()


async def add_webhook(sink: Dispatcher, name: str, receiver: HttpReceiver) -> None:
    assert await sink.add_channel(parse_channel(name, "webhook", {"url": f"{receiver.url}/{name}"}), "alice")


@asynccontextmanager
async def one_webhook(database: Database, receiver: HttpReceiver, settings: Notify = FAST) -> AsyncIterator[Dispatcher]:
    """A running dispatcher with one webhook channel, "a", to `receiver`."""
    async with dispatcher(database, settings) as sink:
        await add_webhook(sink, "a", receiver)
        yield sink


async def rows(database: Database, **filters: Any) -> list[dict[str, Any]]:
    return await queries.notifications(database.read_db, **filters)


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    async def check() -> Any:
        return condition()
    return await async_wait_for(check, timeout=timeout, what=what)


async def test_without_routes_every_channel_gets_every_notice(database: Database, receiver: HttpReceiver,
                                                              second_receiver: HttpReceiver) -> None:
    async with one_webhook(database, receiver) as sink:
        await add_webhook(sink, "b", second_receiver)
        await sink.submit([notice("pi-1", group=None, severity="info")])
        await until(lambda: receiver.got() and second_receiver.got(), "both channels to receive the notice")
    assert receiver.accepted[0].json()["alerts"][0]["subject"] == "node:pi-1"
    assert [r["state"] for r in await rows(database)] == ["sent", "sent"]


async def test_500_nodes_offline_is_one_message_per_route(database: Database, receiver: HttpReceiver,
                                                          second_receiver: HttpReceiver) -> None:
    async with dispatcher(database, Notify(group_window=3.0, group_quiet=1.0, max_lines=10)) as sink:
        await add_webhook(sink, "hall", receiver)
        await add_webhook(sink, "pager", second_receiver)
        await sink.add_route("hall-a", "*", "hall", "alice")
        await sink.add_route("*", "critical", "pager", "alice")
        started = time.monotonic()
        for batch in range(10):  # the engine notices them over a few sweeps
            await sink.submit([notice(f"pi-{batch * 50 + i}", alert_id=batch * 50 + i) for i in range(50)])
        await sink.submit([notice("desk-1", group="hall-b", severity="warning")])  # no route matches it
        assert time.monotonic() - started < 2.0
        await until(lambda: receiver.got() and second_receiver.got(), "one message per route")
        await until(lambda: not sink.pending_notifications(), "the queue to drain")
    for got in (receiver, second_receiver):
        [message] = got.requests
        body = message.json()
        assert body["count"] == 500 and len({a["subject"] for a in body["alerts"]}) == 500
        assert body["title"] == "FIRING (critical): 500 alerts, node_offline in hall-a"
        lines = body["text"].splitlines()
        assert len(lines) == 11 and lines[-1] == "and 490 more"
    assert sorted(r["subjects"] for r in await rows(database)) == [500, 500]


async def test_a_window_later_is_another_message(database: Database, receiver: HttpReceiver) -> None:
    settings = Notify(group_window=0.6, group_quiet=0.6)
    async with one_webhook(database, receiver, settings) as sink:
        await sink.submit([notice("pi-1")])
        await sink.submit([notice("pi-2")])
        await until(lambda: receiver.got(1), "the first group")
        await sink.submit([notice("pi-3")])
        await sink.submit([notice("pi-4", "resolved")])  # another kind: another message
        await until(lambda: receiver.got(3), "the next groups")
    first, *later = ([a["subject"] for a in r.json()["alerts"]] for r in receiver.accepted)
    assert first == ["node:pi-1", "node:pi-2"]
    assert sorted(later) == [["node:pi-3"], ["node:pi-4"]]


async def test_one_alert_alone_goes_out_after_the_quiet_time(database: Database, receiver: HttpReceiver) -> None:
    async with one_webhook(database, receiver, Notify(group_window=30.0, group_quiet=0.2)) as sink:
        started = time.monotonic()
        await sink.submit([notice("pi-1")])
        await until(receiver.got, "the notification", timeout=5)
        assert time.monotonic() - started < 5  # not the 30 s window


async def test_500_then_success_is_retried_with_backoff(database: Database, receiver: HttpReceiver) -> None:
    receiver.mode = "fail"
    async with one_webhook(database, receiver) as sink:
        await sink.submit([notice()])
        await until(lambda: len(receiver.requests) >= 2, "two failed attempts")
        receiver.mode = "ok"
        await until(receiver.got, "the retry to succeed")
        await until(lambda: not sink.pending_notifications(), "the attempt to be recorded")
    [row] = await rows(database)
    assert row["state"] == "sent" and row["attempts"] == len(receiver.requests) >= 3
    assert row["answer"] == "HTTP 200 ok" and row["last_error"] == ""
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert all(gap >= 0.04 for gap in gaps)  # backoff, not a tight loop


async def the_failed_one(database: Database) -> dict[str, Any]:
    async def failed() -> list[dict[str, Any]]:
        return await rows(database, state="failed")
    [row] = await async_wait_for(failed, what="the notification to fail")
    return row


async def test_failed_after_the_last_try_then_resent(database: Database, receiver: HttpReceiver) -> None:
    receiver.mode = "fail"
    async with one_webhook(database, receiver) as sink:
        await sink.submit([notice()])
        row = await the_failed_one(database)
        assert row["attempts"] == FAST.attempts == len(receiver.requests)
        assert row["last_error"].endswith("answered HTTP 500 receiver broken")
        receiver.mode = "ok"
        assert await sink.resend(None) == [row["id"]]
        await until(receiver.got, "the resent notification")
        await until(lambda: not sink.pending_notifications(), "the attempt to be recorded")
    [row] = await rows(database)
    assert row["state"] == "sent" and row["attempts"] == 1


async def test_a_gone_webhook_is_not_retried(database: Database, receiver: HttpReceiver) -> None:
    receiver.mode = "gone"
    async with one_webhook(database, receiver) as sink:
        await sink.submit([notice()])
        row = await the_failed_one(database)
    assert row["attempts"] == 1 and "HTTP 410" in row["last_error"]


async def test_a_receiver_down_then_restarted_gets_it(database: Database, receiver: HttpReceiver) -> None:
    receiver.stop()
    settings = Notify(group_window=0.2, group_quiet=0.1, attempts=20, backoff=0.1, backoff_max=0.3)
    async with one_webhook(database, receiver, settings) as sink:
        await sink.submit([notice()])

        async def tried_twice() -> bool:
            [row] = await rows(database)
            return bool(row["attempts"] >= 2 and "cannot connect" in row["last_error"])
        await async_wait_for(tried_twice, what="attempts against the stopped receiver")
        receiver.start()
        await until(receiver.got, "delivery after the receiver's restart")


@pytest.mark.parametrize("mode", ["hang", "fail", "close"])
async def test_a_broken_receiver_blocks_neither_submit_nor_other_channels(
        database: Database, receiver: HttpReceiver, second_receiver: HttpReceiver, mode: str) -> None:
    receiver.mode = mode
    settings = Notify(group_window=0.2, group_quiet=0.1, attempts=3, backoff=0.05, timeout=3.0, per_channel=1)
    async with dispatcher(database, settings) as sink:
        await add_webhook(sink, "broken", receiver)
        await add_webhook(sink, "fine", second_receiver)
        for i in range(5):
            started = time.monotonic()
            await sink.submit([notice(f"pi-{i}", "firing" if i % 2 else "resolved")])
            assert time.monotonic() - started < 1.0
        await until(lambda: second_receiver.got(2), "the fine channel's messages", timeout=2.5)
        if mode == "hang":  # per_channel=1: the broken channel's other messages wait for the hung attempt
            assert len(receiver.requests) == 1
        receiver.mode = "ok"  # a hanging request is released when the receiver stops at teardown


async def test_pending_notifications_outlive_the_dispatcher(database: Database, receiver: HttpReceiver) -> None:
    receiver.stop()
    async with one_webhook(database, receiver, Notify(group_window=0.2, group_quiet=0.1, backoff=30)) as sink:
        await sink.submit([notice("pi-1"), notice("pi-2")])

        async def tried() -> bool:
            return bool((await rows(database))[0]["attempts"] >= 1)
        await async_wait_for(tried, what="a failed attempt")
    [row] = await rows(database)
    assert row["state"] == "pending" and row["due_at"] > time.time() + 20
    receiver.start()
    async with dispatcher(database, Notify(backoff=30)) as sink:
        # Due 30 s from now: a fresh start keeps the schedule; a resend is at once.
        await sink.resend([row["id"]])
        assert (await rows(database))[0]["state"] == "pending"  # a pending one is not re-queued
    # Another start picks it up when it is due; make it due now.
    await database.writer.submit(lambda conn: conn.execute("UPDATE notifications SET due_at = 0"))
    async with dispatcher(database) as sink:
        await until(receiver.got, "the pending notification after a restart")
    assert receiver.accepted[0].json()["count"] == 2


async def test_removing_a_channel_keeps_its_queue_as_failed(database: Database, receiver: HttpReceiver) -> None:
    receiver.stop()
    async with one_webhook(database, receiver, Notify(group_window=0.2, group_quiet=0.1, backoff=30)) as sink:
        await sink.add_route("*", "*", "a", "alice")
        await sink.submit([notice()])
        assert await sink.remove_channel("a")
        assert not await sink.remove_channel("a")
    [row] = await rows(database)
    assert row["state"] == "failed" and row["last_error"] == "the channel was removed before this was delivered"
    assert await queries.routes(database.read_db) == []


async def test_route_errors(database: Database, receiver: HttpReceiver) -> None:
    async with one_webhook(database, receiver) as sink:
        assert not await sink.add_channel(parse_channel("a", "webhook", {"url": receiver.url}), "bob")
        route = await sink.add_route("hall-a", "warning", "a", "alice")
        with pytest.raises(RouteInvalid, match="exists"):
            await sink.add_route("hall-a", "warning", "a", "alice")
        with pytest.raises(RouteInvalid, match="no channel named 'nope'"):
            await sink.add_route("hall-a", "warning", "nope", "alice")
        with pytest.raises(RouteInvalid, match="severity must be one of"):
            await sink.add_route("hall-a", "urgent", "a", "alice")
        assert await sink.remove_route(route) and not await sink.remove_route(route)


async def test_routes_take_a_minimum_severity(database: Database, receiver: HttpReceiver,
                                              second_receiver: HttpReceiver) -> None:
    async with dispatcher(database) as sink:
        await add_webhook(sink, "warn", receiver)
        await add_webhook(sink, "crit", second_receiver)
        await sink.add_route("*", "warning", "warn", "alice")
        await sink.add_route("*", "critical", "crit", "alice")
        await sink.submit([notice("a", severity="info", alert_id=1), notice("b", severity="warning", alert_id=2),
                           notice("c", severity="critical", alert_id=3)])
        await until(lambda: receiver.got() and second_receiver.got(), "both routes")
    assert [a["subject"] for a in receiver.accepted[0].json()["alerts"]] == ["node:b", "node:c"]
    assert [a["subject"] for a in second_receiver.accepted[0].json()["alerts"]] == ["node:c"]


async def test_channel_test_reports_the_answer(database: Database, receiver: HttpReceiver) -> None:
    async with one_webhook(database, receiver) as sink:
        assert await sink.test("a") == "HTTP 200 ok"
        assert receiver.accepted[0].json()["kind"] == "test"
        with pytest.raises(LookupError):
            await sink.test("nope")


async def test_pending_notifications_counts_the_queue(database: Database, receiver: HttpReceiver) -> None:
    receiver.stop()
    async with one_webhook(database, receiver, Notify(group_window=0.2, group_quiet=0.1, backoff=30)) as sink:
        assert sink.pending_notifications() == 0
        await sink.submit([notice("pi-1"), notice("pi-2", "resolved")])
        assert sink.pending_notifications() == 2  # two groups: firing, resolved

        async def tried() -> bool:
            return all(r["attempts"] >= 1 for r in await rows(database))
        await async_wait_for(tried, what="a failed attempt of each")
        assert sink.pending_notifications() == 2  # failed attempts wait for their retry: still pending
