"""The Today view's model: per group, the day's timeline in the group's zone (opening hours, runbook
moments with their firing's outcome, other firings of the day, bookings), as rows with stable keys.

Plain data and functions (no widgets): the view reads the calendar API every few seconds and the
timeline table changes only the rows that read differently (tui/console/widgets/timeline_table.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tui.textsafe import clean

Json = dict[str, Any]

# A moment matches its firing when their instants agree this closely (both are the server's floats).
MATCH_S = 1.0
UNFIRED_S = 120.0  # a moment this long past with no firing recorded will not fire today
FINISHED = frozenset({"done", "partial", "failed", "missed", "interrupted"})
FIXED_MOMENT = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
# Row order within a group at the same instant: the group line, hours, moments, bookings.
ORDER = {"group": 0, "open": 1, "close": 1, "moment": 2, "firing": 2, "booking": 3}


@dataclass(frozen=True)
class Entry:
    """One row of the timeline."""

    key: str
    group: str
    kind: str  # group, open, close, moment, firing, booking
    at: float  # its instant (the group line: the start of the day)
    time: str  # shown, local to the group's zone
    what: str
    state: str  # open/closed/no hours, pending/running/done/partial/failed/missed/interrupted, holding/booked
    nodes: str
    detail: str
    firing_id: int | None = None
    booking: Json | None = None

    @property
    def place(self) -> tuple[Any, ...]:
        return (self.group, self.kind != "group", self.at, ORDER[self.kind], self.key)


def zone_of(name: str | None) -> tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def local_clock(ts: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%H:%M")


def day_bounds(now: float, tz: tzinfo) -> tuple[date, float, float]:
    """Today's local date in `tz` and its start and end instants."""
    today = datetime.fromtimestamp(now, tz).date()
    start = datetime.combine(today, dtime.min, tz).timestamp()
    end = datetime.combine(today + timedelta(days=1), dtime.min, tz).timestamp()
    return today, start, end


def _at(day: date, hour: int, minute: int, second: int, tz: tzinfo) -> float:
    if hour >= 24:
        return datetime.combine(day + timedelta(days=1), dtime.min, tz).timestamp()
    return datetime.combine(day, dtime(hour, minute, second), tz).timestamp()


def spans(hours: str) -> list[tuple[int, int, int, int]]:
    """'10:00-12:00,14:00-18:00' as (h, m, h, m) ranges; 'closed' (or anything else): none."""
    out = []
    for part in (hours or "").split(","):
        m = RANGE.match(part.strip())
        if m:
            h1, m1, h2, m2 = (int(x) for x in m.groups())
            out.append((h1, m1, h2, m2))
    return out


def node_counts(nodes: list[Json]) -> tuple[str, str]:
    """A firing's per-node states: ("2/3 ok", "1 failed") or ("-", "") before any node is written."""
    if not nodes:
        return "-", ""
    states: dict[str, int] = {}
    for n in nodes:
        states[str(n.get("state"))] = states.get(str(n.get("state")), 0) + 1
    others = ", ".join(f"{count} {clean(state, single_line=True)}" for state, count in sorted(states.items())
                       if state != "ok")
    return f"{states.get('ok', 0)}/{len(nodes)} ok", others


def firing_state(firing: Json | None, at: float, now: float) -> str:
    if firing is None:
        # To come, or due and about to be fired (within the scheduler's tick); long past without
        # a firing: the runbook (or the hours) came after its moment.
        return "pending" if at > now - UNFIRED_S else "not fired"
    return clean(firing.get("state") or "?", single_line=True)


def _firing_entry(group: str, key: str, at: float, what: str, firing: Json | None, tz: tzinfo,
                  now: float) -> Entry:
    nodes, others = node_counts(list(firing.get("nodes") or [])) if firing else ("-", "")
    detail = others
    if firing is not None and firing.get("message") and firing.get("state") in FINISHED:
        detail = clean(firing["message"], single_line=True)
    return Entry(key, group, "firing" if key.startswith("f:") else "moment", at, local_clock(at, tz), what,
                 firing_state(firing, at, now), nodes, detail, int(firing["id"]) if firing else None)


def group_entries(group: str, cal: Json | None, runbooks: list[Json], firings: list[Json],
                  bookings: list[Json], node_groups: dict[str, str], now: float, me: str = "") -> list[Entry]:
    """The timeline of one group for today (its zone's date)."""
    zone_name = str((cal or {}).get("zone") or "UTC")
    tz = zone_of(zone_name)
    today, start, end = day_bounds(now, tz)
    out: list[Entry] = []
    day = next(iter((cal or {}).get("days") or []), None)
    hours = str(day.get("hours") or "closed") if day else ""
    ranges = spans(hours) if day else []
    # The group line: where it is, and whether it is open now.
    if cal is None or cal.get("hours") is None:
        state, detail = "no hours", "no opening hours: dvic calendar hours GROUP ..."
    else:
        opened = [(_at(today, a, b, 0, tz), _at(today, c, d, 0, tz)) for a, b, c, d in ranges]
        holding = next(((s, e) for s, e in opened if s <= now < e), None)
        later = next((s for s, _ in opened if s > now), None)
        state = "open" if holding else "closed"
        detail = (f"open until {local_clock(holding[1], tz)}" if holding else
                  f"opens at {local_clock(later, tz)}" if later is not None else
                  "closed today" if not opened else "closed for the day")
        if day and day.get("exception"):
            detail += " (exception)"
    out.append(Entry(f"g:{group}", group, "group", start, local_clock(now, tz), f"{clean(group or '(none)', single_line=True)}"
                     f"  {clean(zone_name, single_line=True)}", state, today.strftime("%a %d"), detail))
    for i, (a, b, c, d) in enumerate(ranges):
        out.append(Entry(f"h:{group}:{i}:open", group, "open", _at(today, a, b, 0, tz), f"{a:02}:{b:02}", "opens",
                         "", "", hours if i == 0 else ""))
        out.append(Entry(f"h:{group}:{i}:close", group, "close", _at(today, c, d, 0, tz), f"{c:02}:{d:02}",
                         "closes", "", "", ""))
    # Runbook moments of the day, each with the firing that is its occurrence (if any yet).
    mine = [f for f in firings if f.get("grp") == group and isinstance(f.get("due_at"), int | float)
            and start <= f["due_at"] < end]
    matched: set[int] = set()
    moments = list(day.get("moments") or []) if day else []
    if cal is None or cal.get("hours") is None:  # fixed-time runbooks of a group without hours
        moments = [{"runbook": r["name"], "moment": r["moment"], "at": at} for r in runbooks
                   if r.get("group") == group and (at := fixed_at(str(r.get("moment")), today, tz)) is not None]
    for m in moments:
        at = float(m["at"])
        firing = next((f for f in mine if f.get("runbook") == m["runbook"] and f.get("trigger") == "schedule"
                       and abs(float(f["due_at"]) - at) < MATCH_S), None)
        if firing is not None:
            matched.add(int(firing["id"]))
        what = f"▶ {clean(m['runbook'], single_line=True)} ({clean(m['moment'], single_line=True)})"
        out.append(_firing_entry(group, f"m:{group}:{m['runbook']}:{at:.0f}", at, what, firing, tz, now))
    for f in mine:  # run now, or an occurrence of hours changed since
        if int(f["id"]) in matched:
            continue
        how = f"run now by {f.get('operator') or '?'}" if f.get("trigger") == "run-now" else str(f.get("trigger"))
        what = f"▶ {clean(f.get('runbook'), single_line=True)} ({clean(how, single_line=True)})"
        out.append(_firing_entry(group, f"f:{f['id']}", float(f["due_at"]), what, f, tz, now))
    # Bookings holding some of the group's machines today.
    for bk in bookings:
        names = [n for n, nid in zip(bk.get("node_names") or bk.get("nodes") or [], bk.get("nodes") or [], strict=False)
                 if node_groups.get(nid, "") == group]
        if not names or not (float(bk["starts_at"]) < end and float(bk["ends_at"]) > start):
            continue
        began = float(bk["starts_at"])
        holder = clean(bk.get("holder"), single_line=True)
        until = float(bk["ends_at"])
        until_text = local_clock(until, tz) if until < end else datetime.fromtimestamp(until, tz).strftime("%a %d %H:%M")
        note = clean(bk.get("note") or "", single_line=True)
        out.append(Entry(f"b:{bk['id']}:{group}", group, "booking", max(began, start),
                         local_clock(began, tz) if began >= start else "…",
                         f"⚑ #{bk['id']} {holder}{' (you)' if holder == me else ''}: "
                         + ", ".join(clean(n, single_line=True) for n in names),
                         "holding" if began <= now else "booked", f"{len(names)} node{'s' if len(names) != 1 else ''}",
                         f"until {until_text}" + (f"  {note}" if note else ""), booking=bk))
    return out


def fixed_at(moment: str, day: date, tz: tzinfo) -> float | None:
    m = FIXED_MOMENT.match(moment)
    if not m:
        return None
    return _at(day, int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), tz)


def timeline(calendar: list[Json], runbooks: list[Json], firings: list[Json], bookings: list[Json],
             nodes: dict[str, Json], now: float, me: str = "") -> list[Entry]:
    """Every group's timeline (groups with hours, runbooks, machines or bookings), in order."""
    cal = {str(g.get("group")): g for g in calendar}
    node_groups = {nid: str(n.get("group") or "") for nid, n in nodes.items() if not n.get("revoked")}
    groups = set(cal) | {str(r.get("group")) for r in runbooks} | {g for g in node_groups.values() if g}
    groups |= {node_groups.get(nid, "") for b in bookings for nid in b.get("nodes") or []}
    out: list[Entry] = []
    for group in sorted(groups):
        out.extend(group_entries(group, cal.get(group), runbooks, firings, bookings, node_groups, now, me))
    return sorted(out, key=lambda e: e.place)
