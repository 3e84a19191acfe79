"""The client library's errors, one hierarchy for both transports and every caller.

`ApiError` is any answer that is not the one asked for: the server's refusal (its status, code and
message), `Unreachable` (no answer: status 0) or `BadResponse` (an answer that is not what the API
promises). `StreamClosed` ends a websocket; `ConfigError` is a setting the client cannot use.
Standard library only and cheap to import: `dvic run` loads it at start-up.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing or unusable; the message tells the user what to do.

    `code` names the problem for callers that map it to a hint of their own (the installer)."""

    def __init__(self, message: str, code: str = "config") -> None:
        super().__init__(message)
        self.code = code


class ApiError(Exception):
    """An error answer from the server (`status` is the HTTP status, 0 when there was no answer)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message


class Unreachable(ApiError):
    """No usable answer: connection refused, timeout, or (`code` "tls") the pinned-CA check failed."""

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(0, code, message)


class BadResponse(ApiError):
    """The server answered, but not with what the API promises (not JSON, a list missing...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, "bad_response", message)


class StreamClosed(Exception):
    """A websocket ended before its last message: `code` is the close code (None: no close frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(reason or f"closed (code {code})")
        self.code = code
