"""Jobs that must run on one replica at a time (issue 18, docs/architecture.md "Several replicas").

With several `dvic-central` replicas on one PostgreSQL, retention, the calendar's scheduler, alert
evaluation and offline detection must each run once, not once per replica. Each such job is tied
to a PostgreSQL session-level advisory lock, taken on a connection of its own that does nothing
else: the replica holding the lock runs the job. When that replica dies (or only its connection
does), PostgreSQL ends the session and the lock is free; another replica's next try takes it, so
the job moves within `try_every` seconds.

Fencing: a replica that can no longer prove it holds its locks (its lock connection fails a check
within `check_timeout`) stops its jobs at once, before PostgreSQL could give them to someone else
(the server notices a dead client later than the client notices a dead server).

On SQLite there is one server process: `solo` runs every job at once, with the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from ..dbconn import mask_url
from . import queries

log = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, None]]

# pg_try_advisory_lock(classid, objid): every lock of dvic-central is in this class, so they never
# collide with an application sharing the database; objid is a stable number from the job's name.
LOCK_CLASS = 0x6476_6963  # "dvic"
TRY_EVERY_S = 2.0
CHECK_TIMEOUT_S = 2.0
APPLICATION = "dvic-central leader"


def lock_id(job: str) -> int:
    """The advisory lock's second key for a job (a signed 32-bit int, as PostgreSQL's int4)."""
    value = zlib.crc32(job.encode()) & 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class Leadership:
    """Runs each job while this replica holds its lock; see the module's docstring."""

    def __init__(self, url: str, replica: str, jobs: Mapping[str, Job], *, try_every: float = TRY_EVERY_S,
                 check_timeout: float = CHECK_TIMEOUT_S) -> None:
        self.url = url
        self.replica = replica
        self.jobs = dict(jobs)
        self.try_every = try_every
        self.check_timeout = check_timeout
        self.running: dict[str, asyncio.Task[None]] = {}
        self.gained = 0  # how many times a job started here (tests, /metrics)
        self.rounds = 0  # rounds of tries on a live session (tests: "B has tried and was refused")
        self.unreachable = 0  # sessions that could not be opened or were lost
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def held(self) -> set[str]:
        return set(self.running)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"dvic-leader-{self.replica}")

    async def close(self) -> None:
        """Stop every job and let the locks go (closing the session frees them)."""
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        import asyncpg  # late: SQLite-only installs never load it

        while not self._stopped.is_set():
            conn: Any = None
            try:
                conn = await asyncio.wait_for(
                    asyncpg.connect(self.url, server_settings={"application_name": f"{APPLICATION} {self.replica}"}),
                    self.check_timeout * 5)
                await self._lead(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: nothing runs here until it is back
                self.unreachable += 1
                if self.running:
                    log.warning("leader %s: lost the database (%s): stopping %s", self.replica, exc,
                                ", ".join(sorted(self.running)))
                else:
                    log.debug("leader %s: cannot reach %s: %s", self.replica, mask_url(self.url), exc)
            finally:
                await self._stop_jobs()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()  # no goodbye needed: the session's end frees its locks
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.try_every)

    async def _lead(self, conn: Any) -> None:
        """Try the locks not held, check the session, again every `try_every` s, until it fails."""
        while True:
            for name in sorted(self.jobs):
                if name in self.running:
                    if self.running[name].done():
                        self._job_ended(name)
                    continue
                got = await asyncio.wait_for(queries.try_advisory_lock(conn, LOCK_CLASS, lock_id(name)),
                                             self.check_timeout)
                if got:
                    log.info("leader %s: runs %s", self.replica, name)
                    self.gained += 1
                    self.running[name] = asyncio.create_task(self.jobs[name](), name=f"dvic-job-{name}")
            self.rounds += 1
            deadline = asyncio.get_running_loop().time() + self.try_every
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                # The fence: proving the session every check_timeout (or sooner) bounds how long a
                # replica cut off from the database keeps running jobs another may have taken.
                await asyncio.sleep(min(left, self.check_timeout / 2))
                await asyncio.wait_for(queries.ping(conn), self.check_timeout)

    def _job_ended(self, name: str) -> None:
        """A job's loop returned or raised: it is started again at the next try (it keeps the lock)."""
        task = self.running.pop(name)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s failed: %s", name, task.exception())
        else:
            log.warning("job %s ended", name)
        self.running[name] = asyncio.create_task(self.jobs[name](), name=f"dvic-job-{name}")

    async def _stop_jobs(self) -> None:
        tasks, self.running = list(self.running.values()), {}
        await _cancel(tasks)


async def holders(conn: Any, jobs: Iterable[str]) -> dict[str, str]:
    """Which replica runs each of `jobs` now ({job: replica}), from pg_locks: for diagnostics and
    the tests. (pg_locks shows the lock's keys as oids: unsigned.)"""
    by_objid = {lock_id(job) & 0xFFFF_FFFF: job for job in jobs}
    held = await queries.advisory_holders(conn, LOCK_CLASS)
    return {by_objid[objid]: application.removeprefix(APPLICATION + " ")
            for objid, application in held.items() if objid in by_objid}


class Solo:
    """One server on SQLite: every job runs here, always (the same interface as Leadership)."""

    def __init__(self, jobs: Mapping[str, Job]) -> None:
        self.jobs = dict(jobs)
        self.running: dict[str, asyncio.Task[None]] = {}

    @property
    def held(self) -> set[str]:
        return set(self.running)

    def start(self) -> None:
        for name, job in self.jobs.items():
            self.running[name] = asyncio.create_task(job(), name=f"dvic-job-{name}")

    async def close(self) -> None:
        tasks, self.running = list(self.running.values()), {}
        await _cancel(tasks)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
