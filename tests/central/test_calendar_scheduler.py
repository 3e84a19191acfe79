"""The scheduler's once-only rules with a clock the test moves (the wall clock jumping back and
forward, a restart), on the server's real writer and a real SQLite database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from central import db
from central.calendar.hours import Hours, parse_week
from central.calendar.moments import next_occurrence, occurrences_between, parse_moment
from central.calendar.queries import CalendarQueries
from central.calendar.scheduler import Scheduler
from central.writer import Writer
from tests.support.database import started_writer

DAY = 86400.0
T0 = datetime(2027, 3, 27, 9, 0, tzinfo=UTC).timestamp()  # 09:00 UTC, the eve of Paris's spring forward
TEN = T0 + 3600  # 10:00 UTC


class OneMoment:
    """A plan of one runbook (id 1) firing at 10:00 UTC every day."""

    def __init__(self) -> None:
        self.moment = parse_moment("10:00")
        self.hours = Hours("UTC", parse_week(["daily closed"]))

    def due_between(self, after: float, until: float) -> list[tuple[int, str, float]]:
        found = occurrences_between(self.moment, self.hours, datetime.fromtimestamp(after, UTC),
                                    datetime.fromtimestamp(until, UTC))
        return [(1, o.key, o.due.timestamp()) for o in found]

    def next_due(self, after: float) -> float | None:
        occ = next_occurrence(self.moment, self.hours, datetime.fromtimestamp(after, UTC))
        return occ.due.timestamp() if occ else None


class Rig:
    def __init__(self, writer: Writer, queries: CalendarQueries) -> None:
        self.writer = writer
        self.queries = queries
        self.now = T0
        self.fired: list[tuple[int, int, float]] = []

    def scheduler(self) -> Scheduler:
        return Scheduler(self.writer, self.queries, OneMoment(), lambda *f: self.fired.append(f),
                         grace_s=600, tick_s=60, clock=lambda: self.now)

    async def start(self) -> tuple[Scheduler, list[tuple[int, int, float]]]:
        """A scheduler started as at a server start (with what it fired again then), and stopped:
        the test moves the clock and scans itself."""
        scheduler = self.scheduler()
        fired = await scheduler.start()
        await scheduler.close()
        return scheduler, fired

    async def states(self) -> list[tuple[str, str]]:
        rows = await self.queries.firings(None, 100)
        return sorted((r["occurrence"], r["state"]) for r in rows)


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path = tmp_path / db.DB_FILE
    writer = await started_writer(path)
    read = await db.connect(path, read_only=True)
    # A runbook row for the firings to refer to.
    await writer.submit(lambda c: c.execute(
        "INSERT INTO runbooks (id, grp, name, moment, steps, created_at, created_by)"
        " VALUES (1, 'hall', 'open', '10:00', '[]', 0, 'test')"))
    try:
        yield Rig(writer, CalendarQueries(read))
    finally:
        await read.close()
        await writer.close()


@pytest.mark.asyncio
async def test_each_occurrence_fires_once_whatever_the_wall_clock_does(rig: Rig) -> None:
    scheduler, _ = await rig.start()  # the first start schedules nothing before now
    assert rig.fired == [] and scheduler.delay(rig.now) == 60  # idle: one tick at most
    rig.now = TEN - 5
    assert scheduler.delay(rig.now) == 5  # sleeps until the moment, not a tick
    rig.now = TEN + 1
    assert await scheduler.scan(rig.now) == 1
    assert [f[2] for f in rig.fired] == [TEN]
    # The clock is set back an hour, then comes forward past 10:00 again: nothing fires twice.
    rig.now = TEN - 3600
    assert await scheduler.scan(rig.now) == 0
    rig.now = TEN + 30
    assert await scheduler.scan(rig.now) == 0
    assert len(rig.fired) == 1
    # The clock jumps forward a day and 30 minutes: the next day's 10:00 is past the grace window.
    rig.now = TEN + DAY + 1800
    assert await scheduler.scan(rig.now) == 0
    # ... and forward again to 5 minutes after the third day's 10:00: within the grace window.
    rig.now = TEN + 2 * DAY + 300
    assert await scheduler.scan(rig.now) == 1
    assert await rig.states() == [("2027-03-27", "pending"), ("2027-03-28", "missed"), ("2027-03-29", "pending")]


@pytest.mark.asyncio
async def test_a_restart_fires_what_never_started_once_and_no_more(rig: Rig) -> None:
    first, _ = await rig.start()
    rig.now = TEN + 1
    await first.scan(rig.now)  # recorded and handed to a runner that never started it (a crash)
    assert len(rig.fired) == 1

    rig.now = TEN + 120  # back two minutes later: within the grace window
    _, fired = await rig.start()
    assert [f[2] for f in fired] == [TEN]  # fired again, the one time it runs
    # It never started this time either; the next start is past the grace window: missed.
    rig.now = TEN + 3600
    assert (await rig.start())[1] == []
    assert len(rig.fired) == 2
    assert await rig.states() == [("2027-03-27", "missed")]


@pytest.mark.asyncio
async def test_a_firing_the_server_was_running_is_interrupted_not_repeated(rig: Rig) -> None:
    from central.calendar import store

    first, _ = await rig.start()
    rig.now = TEN + 1
    await first.scan(rig.now)
    firing_id = rig.fired[0][0]
    await rig.writer.submit(store.set_firing(firing_id, "running", rig.now))
    rig.now = TEN + 60
    assert (await rig.start())[1] == []
    assert await rig.states() == [("2027-03-27", "interrupted")]


@pytest.mark.asyncio
async def test_old_finished_firings_are_trimmed_in_bounded_writes(rig: Rig) -> None:
    from central.calendar import store

    scheduler, _ = await rig.start()
    for day in range(3):  # three days' firings, the last one left pending (never started)
        rig.now = TEN + day * DAY + 1
        await scheduler.scan(rig.now)
    for firing_id, _runbook, _due in rig.fired[:2]:
        await rig.writer.submit(store.set_firing_node(firing_id, "n1", "pi", "ok", 1, "", rig.now))
        await rig.writer.submit(store.set_firing(firing_id, "done", rig.now))
    before = TEN + 3 * DAY
    assert await rig.writer.submit(store.trim_firings(before, limit=1)) == 1
    assert await rig.writer.submit(store.trim_firings(before, limit=1)) == 1
    assert await rig.writer.submit(store.trim_firings(before, limit=1)) == 0  # the pending one stays
    assert await rig.states() == [("2027-03-29", "pending")]
    assert await rig.queries.firing_nodes([f[0] for f in rig.fired]) == {}
