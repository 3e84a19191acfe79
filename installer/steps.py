"""Step bookkeeping: time each step, report it as it starts and ends, turn failures into InstallerError."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tui.api.errors import ApiError

from .errors import InstallerError
from .models import ProgressCallback, Step, StepStatus
from .render import RenderError

log = logging.getLogger(__name__)

_CENTRAL_HINTS = {
    "unreachable": "check --server / DVIC_SERVER and that dvic-central is running",
    "tls": "check --ca / DVIC_CA: it must be the server's ca.pem",
    "bad_ca": "check --ca / DVIC_CA: it must be a readable PEM file",
    "no_ca": "pass --ca FILE (the server's ca.pem) or set DVIC_CA: the installer trusts only that CA",
    "no_server": "pass --server https://HOST:PORT or set DVIC_SERVER",
    "no_token": "pass --token or set DVIC_TOKEN (an operator token)",
    "insecure_url": "use the server's https:// URL",
    "bad_url": "use the server's https:// URL",
    "http_401": "the operator token is unknown: check --token / DVIC_TOKEN",
    "http_403": "your account's role is too low or still pending (enrolling needs operator; revoking needs admin, "
    "or the operator who enrolled the node while it has never connected)",
    "not_your_enrollment": "ask an admin to revoke it: an operator may revoke only its own enrollments",
    "node_has_connected": "ask an admin to revoke it: a node that has connected is revoked by an admin",
    "http_409": "a node with that name exists: pick another --name, or have the old one revoked (dvic remove-node: "
    "an admin, or the operator who enrolled it while it has never connected)",
    "timeout": "the daemon runs but does not reach the server: check that the server URL (--server) is "
    "reachable from the node (address, port, firewall)",
}


def central_error(step: str, exc: ApiError) -> InstallerError:
    code = exc.code
    hint = _CENTRAL_HINTS.get(code) or _CENTRAL_HINTS.get(f"http_{exc.status}", "")
    return InstallerError(step, code, exc.message, hint)


class StepRunner:
    """Runs named steps in order, reporting each to ``progress`` and keeping them for the result."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self._progress = progress
        self.steps: list[Step] = []

    def emit(self, step: Step) -> None:
        if self._progress is None:
            return
        try:
            # A snapshot: the step object itself changes when it ends.
            self._progress(dataclasses.replace(step))
        except Exception:  # a broken display must not abort an install halfway
            log.exception("progress callback failed for step %s", step.name)

    @asynccontextmanager
    async def run(self, name: str, message: str = "") -> AsyncIterator[Step]:
        """``message``: what the step is about to do, reported with its start (e.g. where it connects)."""
        step = Step(name, message=message)
        self.steps.append(step)
        started = time.monotonic()
        self.emit(step)
        try:
            yield step
        except BaseException as exc:
            err = self._as_installer_error(name, exc)
            step.status = StepStatus.FAILED
            step.duration = time.monotonic() - started
            if err is not None:
                step.error, step.code, step.hint = err.message, err.code, err.hint
            else:
                step.error, step.code = ("cancelled", "cancelled") if isinstance(
                    exc, asyncio.CancelledError) else (f"internal error: {exc!r}", "internal")
            self.emit(step)
            if err is not None and err is not exc:
                raise err from exc
            raise
        step.duration = time.monotonic() - started
        if step.status == StepStatus.RUNNING:
            step.status = StepStatus.OK
        self.emit(step)

    @staticmethod
    def _as_installer_error(name: str, exc: BaseException) -> InstallerError | None:
        if isinstance(exc, InstallerError):
            return exc
        if isinstance(exc, ApiError):
            return central_error(name, exc)
        if isinstance(exc, RenderError):
            return InstallerError(name, "render", str(exc), "fix the input named in the message")
        return None

    def note(self, name: str, message: str, status: StepStatus = StepStatus.OK) -> None:
        """Report an out-of-band step (e.g. the rollback after a failure)."""
        step = Step(name, status=status, message=message)
        self.steps.append(step)
        self.emit(step)
