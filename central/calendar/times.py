"""Times as people write them: ISO 8601 in a group's zone ('2027-01-10T09:00'), with an explicit
offset ('...+01:00', '...Z'), Unix seconds, or relative to now ('now', '+30m', '+2h', '+1d')."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from .hours import HoursError, local_instant

_RELATIVE = re.compile(r"\+(\d{1,6})([smhd])")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RULE = "write an ISO 8601 time (2027-01-10T09:00, in the group's zone unless it says +01:00 or Z), now, or +30m, +2h, +1d"


def parse_when(text: str | float | int, now: float, tz: ZoneInfo) -> float:
    """Unix seconds for `text`; HoursError (saying what to write) when it is none of the forms."""
    if isinstance(text, bool):
        raise HoursError(f"{text!r} is not a time: {RULE}")
    if isinstance(text, int | float):
        return float(text)
    text = text.strip()
    if text.isascii() and text.replace(".", "", 1).isdigit():
        return float(text)  # Unix seconds
    if text == "now":
        return now
    m = _RELATIVE.fullmatch(text)
    if m is not None:
        return now + int(m.group(1)) * UNIT_S[m.group(2)]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise HoursError(f"{text!r} is not a time: {RULE}") from None
    if parsed.tzinfo is not None:
        return parsed.timestamp()
    # A local time of the group's zone, read with the calendar's daylight-saving rules.
    instant = local_instant(parsed.date(), parsed.hour * 60 + parsed.minute, tz)
    return instant.timestamp() + parsed.second + parsed.microsecond / 1e6
