"""The calendar's refusals: an HTTP status, a code and a message that says what to change. The API
(central/calendar/api.py) answers them as the documented JSON errors; the calendar itself knows
nothing of HTTP requests or of central.auth."""

from __future__ import annotations


class CalendarError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad(code: str, message: str) -> CalendarError:
    """Bad input (400)."""
    return CalendarError(400, code, message)
