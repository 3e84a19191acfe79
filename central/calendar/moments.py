"""Calendar moments: when a runbook fires ('open-15m', 'close', 'close+30m', '03:00').

A moment is relative to each opening range of a day (open / close, plus or minus an offset) or a
fixed local time of every day. Each occurrence has a key (the local date, and the range's index
for open/close moments) that the scheduler stores with a UNIQUE constraint: an occurrence fires
once, whatever the clock does (docs/calendar.md). Pure functions: no clock, no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from .hours import Hours, HoursError, clock, local_instant, parse_clock

_RELATIVE = re.compile(r"(?P<anchor>open|close)(?:(?P<sign>[+-])(?P<n>\d{1,4})(?P<unit>[mh]))?")
MAX_OFFSET_MIN = 12 * 60


@dataclass(frozen=True)
class Moment:
    anchor: str  # "open", "close" or "at" (a fixed local time)
    minutes: int  # the offset from open/close, or the local time of day for "at"
    second: int = 0  # "at" only: HH:MM:SS (a precise time, e.g. a few seconds ahead in a rehearsal)

    @property
    def text(self) -> str:
        if self.anchor == "at":
            return clock(self.minutes) + (f":{self.second:02d}" if self.second else "")
        if self.minutes == 0:
            return self.anchor
        sign = "+" if self.minutes > 0 else "-"
        n = abs(self.minutes)
        return f"{self.anchor}{sign}{n // 60}h" if n % 60 == 0 else f"{self.anchor}{sign}{n}m"


@dataclass(frozen=True)
class Occurrence:
    key: str  # the local date, plus '#i' for the i-th opening range of open/close moments
    due: datetime  # UTC


def parse_moment(text: str) -> Moment:
    text = text.strip().lower()
    m = _RELATIVE.fullmatch(text)
    if m is not None:
        offset = 0
        if m.group("sign"):
            offset = int(m.group("n")) * (60 if m.group("unit") == "h" else 1)
            offset = -offset if m.group("sign") == "-" else offset
        if abs(offset) > MAX_OFFSET_MIN:
            raise HoursError(f"{text!r}: an offset from open or close is at most 12h")
        return Moment(m.group("anchor"), offset)
    if ":" in text:
        hh_mm, second = text, 0
        if text.count(":") == 2:
            hh_mm, _, ss = text.rpartition(":")
            if not (len(ss) == 2 and ss.isdigit() and int(ss) < 60):
                raise HoursError(f"{text!r}: seconds are 00 to 59, e.g. 03:00:30")
            second = int(ss)
        minutes = parse_clock(hh_mm)
        if minutes >= 1440:
            raise HoursError(f"{text!r}: a fixed time is from 00:00 to 23:59")
        return Moment("at", minutes, second)
    raise HoursError(f"{text!r} is not a moment: write open, close, open-15m, close+30m, close+2h or a time "
                     "such as 03:00 (or 03:00:30)")


def occurrences_on(moment: Moment, hours: Hours, day: date) -> list[Occurrence]:
    """The moment's occurrences whose key is local date `day` (none on a closed day for open/close)."""
    if moment.anchor == "at":
        return [Occurrence(day.isoformat(), local_instant(day, moment.minutes, hours.tz, moment.second))]
    out = []
    for index, (start, end) in enumerate(hours.intervals_on(day)):
        anchor = start if moment.anchor == "open" else end
        out.append(Occurrence(f"{day.isoformat()}#{index}", anchor + timedelta(minutes=moment.minutes)))
    return out


def occurrences_between(moment: Moment, hours: Hours, after: datetime, until: datetime) -> list[Occurrence]:
    """Occurrences due in (after, until], oldest first. Days are scanned one beyond each end,
    since an offset (at most 12h) can move an occurrence into the neighbouring day."""
    tz = hours.tz
    first = after.astimezone(tz).date() - timedelta(days=1)
    last = until.astimezone(tz).date() + timedelta(days=1)
    out: list[Occurrence] = []
    day = first
    while day <= last:
        out.extend(o for o in occurrences_on(moment, hours, day) if after < o.due <= until)
        day += timedelta(days=1)
    return sorted(out, key=lambda o: o.due)


def next_occurrence(moment: Moment, hours: Hours, after: datetime, horizon_days: int = 8) -> Occurrence | None:
    """The first occurrence due after `after` within `horizon_days` (None: nothing that soon)."""
    found = occurrences_between(moment, hours, after, after + timedelta(days=horizon_days))
    return found[0] if found else None
