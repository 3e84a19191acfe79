"""The one shape of a refused request: an HTTP status, the API's error code and a message that says
what to change. No imports: the engine, the channels and the rules raise these without knowing HTTP;
the API answers them as the documented JSON error (central/auth.py `error_response`)."""

from __future__ import annotations


class Refusal(Exception):
    """`status`: the HTTP status (for a node's message, the websocket close code: central/messages.py)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BadInput(Refusal, ValueError):
    """A value the caller got wrong (400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(400, code, message)
