"""The calendar service: opening hours, runbooks and bookings of the server, and its scheduler.

Opened with the server's services (central/services.py): it loads hours, runbooks and live
bookings, starts the scheduler, and answers the API (central/calendar/api.py) and the one
booking check of remote control (`refusal`). Bad input raises CalendarError (errors.py) with a message that says
what to change. The alerts engine calls `quiet(group, severity)` (docs/calendar.md "Silencing").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .. import store as central_store
from ..actions import ActionHub
from ..commands import CommandHub
from ..dbconn import ReadDB
from ..registry import NodeState, Registry
from ..tasks import cancel_and_wait
from ..writer import Writer
from . import store
from .bookings import MAX_NOTE, Bookings
from .deploys import BookingDeploys
from .errors import CalendarError, bad
from .holds import Holds
from .hours import Hours, HoursError, describe_spans, parse_date, parse_spans, parse_week, zone
from .moments import Moment, next_occurrence, occurrences_between, parse_moment
from .ports import NO_DEPLOYMENTS, Deployments
from .queries import CalendarQueries
from .runner import Firing, Runner
from .scheduler import GRACE_S, TICK_S, Scheduler
from .steps import GROUP_STEPS, StepError, describe, parse_steps

log = logging.getLogger(__name__)

MAX_BOOKING_S = 30 * 86400.0
MAX_NAME = 64
MAX_CATCH_UP_S = 12 * 3600.0
CRITICAL = "critical"
NEXT_HORIZON_DAYS = 8
TRIM_EVERY_S = 3600.0
TRIM_BATCH = 2000


@dataclass(frozen=True)
class CalendarSettings:
    default_zone: str = "UTC"
    grace_s: float = GRACE_S
    tick_s: float = TICK_S
    max_booking_s: float = MAX_BOOKING_S
    # Firings are kept this long (the server's event retention), then deleted an hour at a time.
    history_s: float = 90 * 86400.0


@dataclass
class Runbook:
    id: int
    group: str
    name: str
    moment: Moment
    steps: list[dict[str, Any]]
    catch_up_s: float
    created_at: float
    created_by: str

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "group": self.group, "name": self.name, "moment": self.moment.text,
                "steps": [describe(s) for s in self.steps], "catch_up_s": self.catch_up_s,
                "created_at": self.created_at, "created_by": self.created_by}



class Calendar:
    def __init__(self, writer: Writer, read_db: ReadDB, registry: Registry, actions: ActionHub,
                 commands: CommandHub, settings: CalendarSettings | None = None) -> None:
        self.writer = writer
        self.queries = CalendarQueries(read_db)
        self.registry = registry
        self.settings = settings or CalendarSettings()
        # Set by the server when the deployments feature is there (central/calendar/ports.py).
        self.deployments: Deployments | None = None
        self.hours: dict[str, Hours] = {}
        self.hours_meta: dict[str, dict[str, Any]] = {}
        self.runbooks: dict[int, Runbook] = {}
        self.holds = Holds()
        self.runner = Runner(writer, registry, actions, commands, self.holds, lambda: self.deployments)
        self.scheduler = Scheduler(writer, self.queries, self, self._fire, grace_s=self.settings.grace_s,
                                   tick_s=self.settings.tick_s)
        self.booking_deploys = BookingDeploys(writer, self.queries, lambda: self.deployments, self.settings.tick_s)
        self._trimmer: asyncio.Task[None] | None = None
        self.bookings = Bookings(writer, self.queries, registry, self.holds, self.booking_deploys, self,
                                 lambda: self.deployments, self.settings.max_booking_s)
        # Per runbook: (computed after, its next occurrence after that, None: none within the
        # horizon). An idle scheduler's wake-up then costs a comparison per runbook, not a calendar.
        self._next: dict[int, tuple[float, float | None]] = {}

    async def open(self, *, jobs: bool = True) -> None:
        """Load the calendar; `jobs`: also start its scheduler, booked deployments and history
        trimming (with several replicas only the leader runs them: `run_jobs`)."""
        zone(self.settings.default_zone)
        await self._load()
        if jobs:
            await self._start_jobs()

    async def reload(self) -> None:
        """Forget and load again (a replica gaining the features lead: its copy may be stale)."""
        self.hours.clear()
        self.hours_meta.clear()
        self.runbooks.clear()
        self._next.clear()
        await self._load()

    async def _start_jobs(self) -> None:
        await self.scheduler.start()
        self.booking_deploys.start()
        self._trimmer = asyncio.create_task(self._trim_history(), name="dvic-calendar-history")

    async def _stop_jobs(self) -> None:
        await cancel_and_wait(self._trimmer)
        self._trimmer = None
        await self.booking_deploys.close()
        await self.scheduler.close()

    async def run_jobs(self) -> None:
        """The calendar's once-only work on the replica leading the feature areas, until cancelled
        (it read the calendar again first: `reload`)."""
        await self._start_jobs()
        try:
            await asyncio.Event().wait()
        finally:
            await self._stop_jobs()

    def use_deployments(self, deployments: Deployments) -> None:
        """The deployments feature's wiring (issue 14): from now on, deploy steps and booked
        deployments are accepted and carried out through it."""
        self.deployments = deployments
        self.booking_deploys.wake()

    async def close(self) -> None:
        await self._stop_jobs()
        await self.runner.close()

    async def _trim_history(self) -> None:
        """Once an hour: firings older than the history window go, in bounded writes."""
        while True:
            try:
                await self.trim_history(time.time() - self.settings.history_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # a storage hiccup: the next pass tries again
                log.exception("trimming the calendar's history failed")
            await asyncio.sleep(TRIM_EVERY_S)

    async def trim_history(self, before: float) -> int:
        """Delete the firings due before `before` (finished ones), a bounded write at a time."""
        deleted = 0
        while True:
            count = int(await self.writer.submit(store.trim_firings(before, TRIM_BATCH)))
            deleted += count
            if count < TRIM_BATCH:
                return deleted

    async def _load(self) -> None:
        exceptions: dict[str, dict[date, list[tuple[int, int]]]] = {}
        for row in await self.queries.exceptions():
            exceptions.setdefault(row["grp"], {})[date.fromisoformat(row["day"])] = row["spans"]
        for row in await self.queries.hours():
            self.hours[row["grp"]] = Hours(row["zone"], row["week"], exceptions.get(row["grp"], {}))
            self.hours_meta[row["grp"]] = {"updated_at": row["updated_at"], "updated_by": row["updated_by"]}
        for row in await self.queries.runbooks():
            self.runbooks[row["id"]] = Runbook(row["id"], row["grp"], row["name"], parse_moment(row["moment"]),
                                               row["steps"], row["catch_up_s"], row["created_at"], row["created_by"])
        self.holds.load(await self.queries.live_holds(time.time()))

    # -- groups and zones ---------------------------------------------------------------------
    def group_nodes(self, group: str) -> list[NodeState]:
        return [n for n in self.registry.all() if n.group == group and not n.revoked]

    def known_group(self, group: str) -> str:
        if not isinstance(group, str) or not group or len(group) > MAX_NAME:
            raise bad("bad_group", "group: the name of a group of nodes")
        if not self.group_nodes(group) and group not in self.hours:
            groups = sorted({n.group for n in self.registry.all() if n.group and not n.revoked})
            raise CalendarError(404, "no_such_group", f"no node is in group {group!r}; groups: {', '.join(groups) or 'none'}")
        return group

    def zone_of(self, group: str | None) -> str:
        hours = self.hours.get(group or "")
        return hours.zone_name if hours else self.settings.default_zone

    # -- opening hours --------------------------------------------------------------------------
    async def set_hours(self, group: str, lines: list[str], zone_name: str | None, by: str) -> dict[str, Any]:
        group = self.known_group(group)
        zone_name = zone_name or self.zone_of(group)
        try:
            zone(zone_name)
            week = parse_week(lines)
        except HoursError as exc:
            raise bad("bad_hours", str(exc)) from None
        now = time.time()
        await self.writer.submit(store.set_hours(group, zone_name, week, now, by))
        old = self.hours.get(group)
        self.hours[group] = Hours(zone_name, week, old.exceptions if old else {})
        self.hours_meta[group] = {"updated_at": now, "updated_by": by}
        self._changed()
        return self.group_view(group)

    async def set_exception(self, group: str, day_text: str, spans_text: str, note: str, by: str) -> dict[str, Any]:
        group = self.known_group(group)
        hours = self.hours.get(group)
        if hours is None:
            raise CalendarError(409, "no_hours", f"group {group!r} has no opening hours yet: set them first "
                                                 f"(dvic calendar hours {group} \"mon-fri 10:00-18:00\")")
        if len(note) > MAX_NOTE:
            raise bad("bad_note", f"note: at most {MAX_NOTE} characters")
        try:
            day = parse_date(day_text)
            reset = spans_text.strip().lower() in ("normal", "weekly", "default")
            spans = [] if reset else parse_spans(spans_text.strip().lower())
        except HoursError as exc:
            raise bad("bad_hours", str(exc)) from None
        exceptions = dict(hours.exceptions)
        if reset:
            await self.writer.submit(store.drop_exception(group, day.isoformat()))
            exceptions.pop(day, None)
        else:
            await self.writer.submit(store.set_exception(group, day.isoformat(), spans, note))
            exceptions[day] = spans
        self.hours[group] = Hours(hours.zone_name, hours.week, exceptions)
        self._changed()
        return self.group_view(group)

    def is_closed(self, group: str, at: float | datetime | None = None) -> bool:
        """Whether `group` is outside its opening hours at `at` (now by default). A group without
        hours is never closed: nothing is silenced until hours are set."""
        hours = self.hours.get(group)
        if hours is None:
            return False
        when = at if isinstance(at, datetime) else datetime.fromtimestamp(time.time() if at is None else at,
                                                                             UTC)
        return not hours.is_open(when)

    def quiet(self, group: str | None, severity: str) -> bool:
        """The alerts engine's quiet hook (central/alerts: `AlertEngine.quiet`): is this alert's
        notice held back by the calendar now? Non-critical alerts of a closed group are (the engine
        still records them). Answers from memory: the engine asks before every notice."""
        return severity != CRITICAL and group is not None and self.is_closed(group)

    def group_view(self, group: str, days: int = 1, now: float | None = None) -> dict[str, Any]:
        hours = self.hours.get(group)
        now = time.time() if now is None else now
        out: dict[str, Any] = {"group": group, "zone": self.zone_of(group), "hours": None, "exceptions": [],
                               "open_now": None, "days": []}
        if hours is None:
            return out
        tz = hours.tz
        today = datetime.fromtimestamp(now, tz).date()
        out.update(hours=hours.describe_week(), open_now=not self.is_closed(group, now),
                   exceptions=[{"day": d.isoformat(), "hours": describe_spans(s)}
                               for d, s in sorted(hours.exceptions.items()) if d >= today],
                   **self.hours_meta.get(group, {}))
        for offset in range(days):
            day = today + timedelta(days=offset)
            moments: list[dict[str, Any]] = []
            for rb in self._runbooks_of(group):
                start = datetime.combine(day, datetime.min.time(), tz).astimezone(UTC) - timedelta(seconds=1)
                for occ in occurrences_between(rb.moment, hours, start, start + timedelta(days=1)):
                    moments.append({"runbook": rb.name, "moment": rb.moment.text, "at": occ.due.timestamp()})
            out["days"].append({"day": day.isoformat(), "hours": describe_spans(hours.spans_on(day)),
                                "exception": day in hours.exceptions,
                                "moments": sorted(moments, key=lambda m: m["at"])})
        return out

    def groups_view(self, group: str | None, days: int) -> list[dict[str, Any]]:
        if group is not None:
            return [self.group_view(self.known_group(group), days)]
        return [self.group_view(g, days) for g in sorted(self.hours)]

    # -- runbooks -------------------------------------------------------------------------------
    def _runbooks_of(self, group: str) -> list[Runbook]:
        return sorted((r for r in self.runbooks.values() if r.group == group), key=lambda r: r.name)

    def runbook_named(self, group: str, name: str) -> Runbook:
        for rb in self.runbooks.values():
            if rb.group == group and rb.name == name:
                return rb
        names = ", ".join(r.name for r in self._runbooks_of(group)) or "none"
        raise CalendarError(404, "no_such_runbook", f"no runbook {name!r} in group {group!r}; its runbooks: {names}")

    async def add_runbook(self, group: str, name: str, moment_text: str, step_texts: list[str], catch_up_s: float,
                          by: str) -> dict[str, Any]:
        group = self.known_group(group)
        if not name or len(name) > MAX_NAME or not (name.isascii() and name.replace("-", "").replace("_", "").isalnum()):
            raise bad("bad_name", "name: letters, digits, '-' or '_', at most 64")
        if not 0 <= catch_up_s <= MAX_CATCH_UP_S:
            raise bad("bad_catch_up", f"catch_up: seconds from 0 to {MAX_CATCH_UP_S:.0f}")
        try:
            moment = parse_moment(moment_text)
            steps = parse_steps(step_texts)
        except (HoursError, StepError) as exc:
            raise bad("bad_runbook", str(exc)) from None
        if moment.anchor != "at" and group not in self.hours:
            raise CalendarError(409, "no_hours", f"{moment.text!r} is relative to the opening hours, and group {group!r} "
                                                 f"has none: set them first (dvic calendar hours {group} ...)")
        self._check_steps(group, steps)
        now = time.time()
        try:
            runbook_id = await self.writer.submit(store.add_runbook(group, name, moment.text, steps, catch_up_s, now, by))
        except store.Duplicate:
            raise CalendarError(409, "runbook_exists", f"group {group!r} already has a runbook {name!r}: "
                                                       "delete it first or pick another name") from None
        rb = Runbook(runbook_id, group, name, moment, steps, catch_up_s, now, by)
        self.runbooks[runbook_id] = rb
        self._changed()
        return rb.view()

    def _check_steps(self, group: str, steps: list[dict[str, Any]]) -> None:
        """Steps naming demos the group does not know, or needing deployments the server lacks."""
        known = {d.get("name") for n in self.group_nodes(group) for d in n.demos.values()}
        for step in steps:
            if step["do"] in GROUP_STEPS:
                if self.deployments is None:
                    raise CalendarError(409, "no_deployments", NO_DEPLOYMENTS.format(what=f"remove the step {describe(step)!r}"))
                if not self.deployments.knows(step["demo"], step.get("version")):
                    raise bad("unknown_demo", f"{describe(step)!r}: no such release: publish it first")
            elif "demo" in step and step["demo"] not in known and not (
                    self.deployments is not None and self.deployments.knows(step["demo"])):
                names = ", ".join(sorted(str(k) for k in known if k)) or "none"
                raise bad("unknown_demo", f"{describe(step)!r}: no node of group {group!r} has reported a demo named "
                                           f"{step['demo']!r} (known: {names}): check the name")

    async def delete_runbook(self, group: str, name: str) -> dict[str, Any]:
        rb = self.runbook_named(group, name)
        await self.writer.submit(store.delete_runbook(rb.id, time.time()))
        self.runbooks.pop(rb.id, None)
        self._next.pop(rb.id, None)
        self._changed()
        return rb.view()

    async def run_now(self, group: str, name: str, by: str) -> int:
        rb = self.runbook_named(group, name)
        now = time.time()
        firing_id = int(await self.writer.submit(store.add_firing(rb.id, now, "run-now", by)))
        self._start(firing_id, rb, now, by)
        return firing_id

    def _fire(self, firing_id: int, runbook_id: int, due: float) -> None:
        rb = self.runbooks.get(runbook_id)
        if rb is None:  # deleted while its firing waited for a restart
            self.writer.submit_later(store.set_firing(firing_id, "failed", time.time(), "the runbook was deleted"))
            return
        self._start(firing_id, rb, due, "calendar")

    def _start(self, firing_id: int, rb: Runbook, due: float, by: str) -> None:
        log.info("runbook %s/%s fires (firing %d, by %s)", rb.group, rb.name, firing_id, by)
        self.writer.submit_later(central_store.insert_audit(
            time.time(), by, "runbook", f"{rb.group}/{rb.name}", 0, "", {"firing": firing_id, "due": due}))
        self.runner.start(Firing(firing_id, rb.id, rb.name, rb.group, rb.steps, due, rb.catch_up_s, by))

    # -- the scheduler's plan --------------------------------------------------------------------
    def _changed(self) -> None:
        self._next.clear()
        self.scheduler.wake()

    def due_between(self, after: float, until: float) -> list[tuple[int, str, float]]:
        out: list[tuple[int, str, float]] = []
        start, end = datetime.fromtimestamp(after, UTC), datetime.fromtimestamp(until, UTC)
        for rb in list(self.runbooks.values()):
            if self._none_before(rb.id, after, until):
                continue
            occurrences = occurrences_between(rb.moment, self._hours_for(rb), start, end)
            out.extend((rb.id, o.key, o.due.timestamp()) for o in occurrences)
            self._next.pop(rb.id, None)
        return sorted(out, key=lambda t: t[2])

    def _none_before(self, runbook_id: int, after: float, until: float) -> bool:
        """Whether the cache proves `runbook_id` has no occurrence in (after, until]."""
        cached = self._next.get(runbook_id)
        if cached is None:
            return False
        computed_after, due = cached
        bound = due if due is not None else computed_after + NEXT_HORIZON_DAYS * 86400
        return computed_after <= after and until < bound

    def next_due(self, after: float) -> float | None:
        best: float | None = None
        for rb in list(self.runbooks.values()):
            cached = self._next.get(rb.id)
            if cached is not None and cached[0] <= after and (cached[1] is None or cached[1] > after):
                upcoming = cached[1]
            else:
                occ = next_occurrence(rb.moment, self._hours_for(rb), datetime.fromtimestamp(after, UTC),
                                      NEXT_HORIZON_DAYS)
                upcoming = occ.due.timestamp() if occ else None
                self._next[rb.id] = (after, upcoming)
            if upcoming is not None and (best is None or upcoming < best):
                best = upcoming
        return best

    def next_of(self, rb: Runbook, after: float) -> float | None:
        """When `rb` fires next (None: not within the next days)."""
        occ = next_occurrence(rb.moment, self._hours_for(rb), datetime.fromtimestamp(after, UTC), NEXT_HORIZON_DAYS)
        return occ.due.timestamp() if occ else None

    def _hours_for(self, rb: Runbook) -> Hours:
        return self.hours.get(rb.group) or Hours(self.settings.default_zone, {})

    # -- bookings (central/calendar/bookings.py) ---------------------------------------------------
    def refusal(self, node: NodeState, operator: str, role: str) -> str | None:
        """Why `operator` may not act on `node` now because of a booking (None: it may)."""
        return self.holds.refusal(node.id, node.name, operator, role)
