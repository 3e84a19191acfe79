"""The calendar's refusals: an HTTP status, a code and a message that says what to change. The API
(central/calendar/api.py) answers them as the documented JSON errors; the calendar itself knows
nothing of HTTP requests or of central.auth."""

from __future__ import annotations

from ..errors import Refusal


class CalendarError(Refusal):
    """A refused calendar request (status, code, message: the shape every refusal has)."""


def bad(code: str, message: str) -> CalendarError:
    """Bad input (400)."""
    return CalendarError(400, code, message)
