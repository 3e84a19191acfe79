"""Errors raised by the installer: each names the failed step, says why, and says what to do."""

from __future__ import annotations


class InstallerError(Exception):
    """A failure the operator can act on.

    ``step`` is the step name (see ``installer.models.STEP_NAMES``), ``message`` says what went
    wrong, ``hint`` says what to do about it. ``code`` is a short machine-readable reason
    (e.g. ``"host_key_changed"``) that the console and tests can match on.
    """

    def __init__(self, step: str, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.step}: {self.message}"
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        return text


class NotAvailableError(InstallerError):
    """A feature that is designed but not built yet (``--via NODE`` until the node tunnel lands)."""


class CannotAsk(Exception):
    """Raised by a confirmation callback that has nobody to ask (no terminal): never taken as a yes."""
