"""Messages the live feed posts to the console app (one place for every custom message)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.message import Message


class Connected(Message):
    """The live stream is up and the node snapshot below was just fetched."""

    def __init__(self, nodes: list[dict[str, Any]], me: dict[str, Any], alerts: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.nodes = nodes
        self.me = me
        self.alerts = alerts  # the server's alert counts (None: a server without alerts)


class Disconnected(Message):
    """The stream (or the server) went away; the feed retries in `retry_in` seconds."""

    def __init__(self, reason: str, retry_in: float, fatal: bool = False) -> None:
        super().__init__()
        self.reason = reason
        self.retry_in = retry_in
        self.fatal = fatal


class AlertCounts(Message):
    """The server's open alerts changed: {"firing", "acknowledged", "silenced", "open"}."""

    def __init__(self, counts: dict[str, Any]) -> None:
        super().__init__()
        self.counts = counts


class ForScreens(Message):
    """A stream frame every screen on the stack hears as it is: `hook` names the DvicScreen hook
    (live_alert, live_silence, live_demo_status, live_deployment, live_logs, live_event), and the
    app calls each screen's own `hook` with `args`."""

    def __init__(self, hook: Callable[..., object], *args: Any) -> None:
        super().__init__()
        self.hook = hook.__name__
        self.args = args

    def deliver(self, screen: object) -> None:
        getattr(screen, self.hook)(*self.args)  # the screen's override, not the base class's hook
