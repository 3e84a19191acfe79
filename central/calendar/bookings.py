"""Bookings: machines held by an operator for a while, by name or by capability (group, kind,
count: the server picks free ones). The overlap check runs inside the writer (store.create_booking),
so of two operators booking one machine at the same instant exactly one wins; the in-memory holds
follow each committed change for the one remote-control check (Calendar.refusal)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from dvic_core.constants import NODE_KINDS

from ..registry import NodeState, Registry
from ..writer import Writer
from . import store
from .deploys import BookingDeploys
from .errors import CalendarError, bad
from .holds import Holds
from .hours import HoursError, zone
from .ports import NO_DEPLOYMENTS, Deployments
from .queries import CalendarQueries
from .times import parse_when

# A booking may start this long before now (the time it took to type the command).
PAST_SLACK_S = 60.0
MAX_NOTE = 500  # a booking's note, and an exception's


class Groups(Protocol):
    """What bookings ask of the calendar about groups (central/calendar/service.py answers)."""

    def known_group(self, group: str) -> str: ...

    def zone_of(self, group: str | None) -> str: ...

    def group_nodes(self, group: str) -> list[NodeState]: ...


class Bookings:
    def __init__(self, writer: Writer, queries: CalendarQueries, registry: Registry, holds: Holds,
                 deploys: BookingDeploys, groups: Groups, deployments: Callable[[], Deployments | None],
                 max_booking_s: float) -> None:
        self.writer = writer
        self.queries = queries
        self.registry = registry
        self.holds = holds
        self.deploys = deploys
        self.groups = groups
        self.deployments = deployments
        self.max_booking_s = max_booking_s

    def _when(self, value: Any, what: str, now: float, group: str | None) -> float:
        if value is None:
            raise bad("bad_time", f"{what}: give a time")
        try:
            return parse_when(value, now, zone(self.groups.zone_of(group)))
        except HoursError as exc:
            raise bad("bad_time", f"{what}: {exc}") from None

    def _times(self, start: Any, end: Any, now: float, group: str | None) -> tuple[float, float]:
        starts_at = self._when(start if start is not None else "now", "from", now, group)
        ends_at = self._when(end, "to", now, group)
        if ends_at <= starts_at:
            raise bad("bad_time", "to: the end comes before the start: give a later --to")
        if starts_at < now - PAST_SLACK_S or ends_at <= now:
            raise bad("bad_time", "from: the booking is in the past: start now or later")
        if ends_at - starts_at > self.max_booking_s:
            raise bad("too_long", f"a booking lasts at most {self.max_booking_s / 86400:g} days: "
                                   "give an earlier --to (or book again later)")
        return max(starts_at, now), ends_at

    def _named_nodes(self, refs: list[str]) -> list[NodeState]:
        nodes = []
        for ref in refs:
            node = self.registry.get(ref)
            if node is None or node.revoked:
                raise CalendarError(404, "no_such_node", f"no node with id or name {ref!r}")
            if node not in nodes:
                nodes.append(node)
        return nodes

    def _matching(self, group: str, kind: str | None) -> list[NodeState]:
        if kind is not None and kind not in NODE_KINDS:
            raise bad("bad_kind", f"kind: one of {', '.join(NODE_KINDS)}")
        nodes = [n for n in self.groups.group_nodes(self.groups.known_group(group)) if kind is None or n.kind == kind]
        # Online machines first: a booking is usually for using them now.
        return sorted(nodes, key=lambda n: (not n.connected, n.name))

    async def book(self, holder: str, by: str, *, nodes: list[str] | None = None, group: str | None = None,
                   kind: str | None = None, count: int | None = None, start: Any = None, end: Any = None,
                   note: str = "", deploy: str = "") -> dict[str, Any]:
        now = time.time()
        if len(note) > MAX_NOTE:
            raise bad("bad_note", f"note: at most {MAX_NOTE} characters")
        if deploy:
            self._check_deploy(deploy)
        if nodes:
            if group is not None or count is not None or kind is not None:
                raise bad("bad_targets", "give either node names, or --group with --count (and --kind), not both")
            chosen = self._named_nodes(nodes)
            starts_at, ends_at = self._times(start, end, now, chosen[0].group)
            write = store.create_booking(holder, by, starts_at, ends_at, note, deploy, now, [n.id for n in chosen])
        elif group is not None:
            if count is None or isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise bad("bad_count", "count: how many machines, 1 or more")
            candidates = self._matching(group, kind)
            if count > len(candidates):
                what = f"{kind} machines" if kind else "machines"
                raise bad("too_many", f"group {group!r} has {len(candidates)} {what}: ask for at most {len(candidates)}")
            starts_at, ends_at = self._times(start, end, now, group)
            write = store.create_booking(holder, by, starts_at, ends_at, note, deploy, now,
                                         [n.id for n in candidates], count)
        else:
            raise bad("bad_targets", "give node names, or a group and a count")
        try:
            booking_id, node_ids = await self.writer.submit(write, urgent=True)
        except store.Conflict as exc:
            raise self._conflict(exc) from None
        except store.NotEnoughFree as exc:
            raise CalendarError(409, "not_enough_free", f"only {exc.free} matching machines are free then: ask for fewer, "
                                                        "or another time (dvic bookings --at ...)") from None
        self.holds.add(booking_id, holder, node_ids, starts_at, ends_at)
        self.deploys.wake()
        view = await self.queries.booking(booking_id)
        assert view is not None
        return self.view(view)

    def _check_deploy(self, deploy: str) -> None:
        demo, at, version = deploy.partition("@")
        if not demo or not at or not version:
            raise bad("bad_deploy", "deploy: write NAME@VERSION, e.g. kiosk@1.2.0")
        deployments = self.deployments()
        if deployments is None:
            raise CalendarError(409, "no_deployments", NO_DEPLOYMENTS.format(what="book without --deploy"))
        if not deployments.knows(demo, version):
            raise bad("unknown_demo", f"deploy: no release {deploy!r}: publish it first")

    def _conflict(self, exc: store.Conflict) -> CalendarError:
        node = self.registry.get(exc.node_id)
        name = node.name if node else exc.node_id
        return CalendarError(409, "booked", f"node {name!r} is already booked by booking {exc.booking_id} of "
                                       f"{exc.holder!r} from {_utc(exc.starts_at)} to {_utc(exc.ends_at)}: "
                                       "pick another time or machine")

    async def _own_booking(self, booking_id: int, operator: str, role: str) -> dict[str, Any]:
        row = await self.queries.booking(booking_id)
        if row is None:
            raise CalendarError(404, "no_such_booking", f"no booking {booking_id}")
        if row["holder"] != operator and role != "admin":
            raise CalendarError(403, "not_yours", f"booking {booking_id} is held by {row['holder']!r}: only they and admins "
                                                  "may change it")
        if row["state"] != "active" or row["ends_at"] <= time.time():
            raise CalendarError(409, "booking_over", f"booking {booking_id} is {row['state']}"
                                                     f"{'' if row['state'] != 'active' else ' and over'}: nothing to change")
        return row

    async def cancel(self, booking_id: int, operator: str, role: str) -> dict[str, Any]:
        await self._own_booking(booking_id, operator, role)
        await self.writer.submit(store.cancel_booking(booking_id, time.time(), operator), urgent=True)
        self.holds.drop(booking_id)
        self.deploys.wake()
        row = await self.queries.booking(booking_id)
        assert row is not None
        return self.view(row)

    async def extend(self, booking_id: int, end: Any, operator: str, role: str) -> dict[str, Any]:
        row = await self._own_booking(booking_id, operator, role)
        now = time.time()
        group = next((n.group for n in (self.registry.get(i) for i in row["nodes"]) if n is not None), None)
        ends_at = self._when(end, "to", now, group)
        if ends_at <= max(now, row["starts_at"]):
            raise bad("bad_time", "to: the new end is in the past or before the start: give a later --to")
        if ends_at - row["starts_at"] > self.max_booking_s:
            raise bad("too_long", f"a booking lasts at most {self.max_booking_s / 86400:g} days")
        try:
            await self.writer.submit(store.extend_booking(booking_id, row["nodes"], row["starts_at"], ends_at),
                                     urgent=True)
        except store.Conflict as exc:
            raise self._conflict(exc) from None
        self.holds.move_end(booking_id, ends_at)
        self.deploys.wake()
        fresh = await self.queries.booking(booking_id)
        assert fresh is not None
        return self.view(fresh)

    def view(self, row: dict[str, Any]) -> dict[str, Any]:
        names = []
        for node_id in row["nodes"]:
            node = self.registry.get(node_id)
            names.append(node.name if node else node_id)
        return {**row, "node_names": names}

    async def listing(self, *, at: float | None, holder: str | None, limit: int) -> list[dict[str, Any]]:
        if at is not None:
            rows = await self.queries.bookings_at(at, holder, limit)
        else:
            rows = await self.queries.bookings_from(time.time(), holder, limit)
        return [self.view(r) for r in rows]


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
