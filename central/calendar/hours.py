"""Opening hours: the weekly hours of a group in its IANA zone, exceptions for given dates, and the
parser of their text form ("mon-fri 10:00-18:00", "sat 14:00-18:00", "2026-12-25 closed").

Pure functions: no clock, no database. Times are local wall-clock times of the group's zone;
`local_instant` turns one into an instant with the calendar's daylight-saving rules (docs/calendar.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_RE = "|".join(DAYS)
# A range of minutes since local midnight, end exclusive; 24:00 may end a range.
Span = tuple[int, int]

_CLOCK = re.compile(r"([01]?\d|2[0-4]):([0-5]\d)")
_RANGE = re.compile(r"(?P<a>\d{1,2}:\d{2})-(?P<b>\d{1,2}:\d{2})")
_DAYSPEC = re.compile(rf"(?P<first>{DAY_RE})(?:-(?P<last>{DAY_RE}))?")


class HoursError(ValueError):
    """Text that is not valid hours; the message says what to change."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or a HoursError that says what a zone name looks like."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise HoursError(f"unknown time zone {name!r}: give an IANA name such as Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise HoursError(f"unknown time zone {name!r}: give an IANA name such as Europe/Paris or UTC") from None


def parse_clock(text: str) -> int:
    """'09:30' -> minutes since midnight; '24:00' is the end of the day."""
    m = _CLOCK.fullmatch(text)
    if m is None or (m.group(1) == "24" and m.group(2) != "00"):
        raise HoursError(f"{text!r} is not a time of day: write HH:MM from 00:00 to 24:00, e.g. 09:45")
    return int(m.group(1)) * 60 + int(m.group(2))


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_spans(text: str) -> list[Span]:
    """'10:00-12:00,14:00-18:00' -> [(600, 720), (840, 1080)]; 'closed' -> []."""
    if text == "closed":
        return []
    spans: list[Span] = []
    for part in text.split(","):
        m = _RANGE.fullmatch(part.strip())
        if m is None:
            raise HoursError(f"{part.strip()!r} is not a range of hours: write HH:MM-HH:MM, e.g. 10:00-18:00, "
                             "several separated by commas, or 'closed'")
        start, end = parse_clock(m.group("a")), parse_clock(m.group("b"))
        if start >= 1440:
            raise HoursError(f"{part.strip()!r} starts at 24:00: a range starts at 23:59 at the latest")
        if end <= start:
            raise HoursError(f"{part.strip()!r} ends before it starts: a range stays within one day "
                             "(for a night past midnight, write two days, e.g. 'fri 20:00-24:00' 'sat 00:00-02:00')")
        spans.append((start, end))
    return _no_overlap(sorted(spans), text)


def _no_overlap(spans: list[Span], text: str) -> list[Span]:
    for (a1, b1), (a2, _b2) in zip(spans, spans[1:], strict=False):
        if a2 < b1:
            raise HoursError(f"{text!r}: the ranges {clock(a1)}-{clock(b1)} and {clock(a2)}-... overlap: "
                             "join them into one range")
    return spans


def parse_days(text: str) -> list[int]:
    """'mon-fri' -> [0..4]; 'sat' -> [5]; 'mon,wed' -> [0, 2]; 'daily' -> every day."""
    if text in ("daily", "every", "all"):
        return list(range(7))
    out: list[int] = []
    for part in text.split(","):
        m = _DAYSPEC.fullmatch(part)
        if m is None:
            raise HoursError(f"{part!r} is not a day: write mon, tue, wed, thu, fri, sat, sun, a range such "
                             "as mon-fri, or daily")
        first = DAYS.index(m.group("first"))
        last = DAYS.index(m.group("last") or m.group("first"))
        if last < first:
            raise HoursError(f"{part!r} runs backwards: write the days in week order, e.g. mon-fri "
                             "(for a range across sunday, write two parts: sat-sun,mon)")
        out.extend(range(first, last + 1))
    return out


def parse_week(lines: list[str]) -> dict[int, list[Span]]:
    """Weekly hours from lines such as 'mon-fri 10:00-18:00' and 'sat 14:00-18:00'.

    A day no line names is closed; a day two lines name is an error (say it once)."""
    if not lines:
        raise HoursError("give at least one line of hours, e.g. 'mon-fri 10:00-18:00'")
    week: dict[int, list[Span]] = {}
    for line in lines:
        words = line.strip().lower().split()
        if len(words) != 2:
            raise HoursError(f"{line!r}: write DAYS HOURS, e.g. 'mon-fri 10:00-18:00' or 'sun closed'")
        days, spans = parse_days(words[0]), parse_spans(words[1])
        for day in days:
            if day in week:
                raise HoursError(f"{line!r}: {DAYS[day]} is already given by an earlier line: name each day once")
            week[day] = spans
    return {day: week.get(day, []) for day in range(7)}


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise HoursError(f"{text!r} is not a date: write YYYY-MM-DD, e.g. 2026-12-25") from None


@dataclass(frozen=True)
class Hours:
    """A group's calendar: its zone, weekly hours and dated exceptions (replacing that day's hours)."""

    zone_name: str
    week: dict[int, list[Span]]
    exceptions: dict[date, list[Span]] = field(default_factory=dict)

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.zone_name)

    def spans_on(self, day: date) -> list[Span]:
        """The opening ranges of a local date (an exception replaces the weekly hours)."""
        if day in self.exceptions:
            return self.exceptions[day]
        return self.week.get(day.weekday(), [])

    def intervals_on(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's opening ranges as UTC instants."""
        tz = self.tz
        return [(local_instant(day, a, tz), local_instant(day, b, tz)) for a, b in self.spans_on(day)]

    def is_open(self, at: datetime) -> bool:
        local_day = at.astimezone(self.tz).date()
        for day in (local_day - timedelta(days=1), local_day):
            if any(start <= at < end for start, end in self.intervals_on(day)):
                return True
        return False

    def describe_week(self) -> list[str]:
        return [f"{DAYS[d]} {describe_spans(self.week.get(d, []))}" for d in range(7)]


def describe_spans(spans: list[Span]) -> str:
    return ",".join(f"{clock(a)}-{clock(b)}" for a, b in spans) or "closed"


def local_instant(day: date, minutes: int, tz: ZoneInfo, second: int = 0) -> datetime:
    """The UTC instant of local wall-clock time `minutes` on `day` in `tz`.

    Daylight-saving rules (docs/calendar.md): a time the clocks skip (02:30 on the spring-forward
    night in Europe/Paris) is the instant the clocks jump, the first one that exists after it; a
    time that happens twice (02:30 on the fall-back night) is its first occurrence. 24:00 is the
    next day's midnight.
    """
    if minutes >= 1440:
        return local_instant(day + timedelta(days=1), minutes - 1440, tz, second)
    naive = datetime.combine(day, time(minutes // 60, minutes % 60, second))
    first = naive.replace(tzinfo=tz, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) != naive:
        # Skipped: fold=0 read it with the offset from before the jump, which lands after the jump
        # by the gap's length. The jump itself is the latest whole minute at or before `naive`
        # (read with the new offset) whose wall clock is not the one asked for.
        return _gap_end(naive, tz)
    return utc


def _gap_end(naive: datetime, tz: ZoneInfo) -> datetime:
    """The instant the clocks jumped over `naive` (a local time that does not exist)."""
    # Read with the offsets from before and from after the jump, `naive` gives two instants that
    # bracket the jump; walk from the earlier one, a minute at a time (a gap is at most hours long),
    # to the first instant with the later offset.
    one = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    two = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    probe, last = min(one, two), max(one, two)
    new_offset = last.astimezone(tz).utcoffset()
    while probe < last and probe.astimezone(tz).utcoffset() != new_offset:
        probe += timedelta(minutes=1)
    return probe
