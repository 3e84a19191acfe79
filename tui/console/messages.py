"""Messages the live feed posts to the console app (one place for every custom message)."""

from __future__ import annotations

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


class AlertChanged(Message):
    """An alert fired, was acknowledged, resolved or reminded of (the stream's `alert` frame)."""

    def __init__(self, change: str, alert: dict[str, Any]) -> None:
        super().__init__()
        self.change = change
        self.alert = alert


class SilenceChanged(Message):
    """A silence was added or removed (the stream's `silence` frame)."""

    def __init__(self, change: str, silence: dict[str, Any]) -> None:
        super().__init__()
        self.change = change
        self.silence = silence


class DemoStatusChanged(Message):
    """A node reported a supervised demo's status (the stream's `demo_status` frame)."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__()
        self.status = status


class DeploymentChanged(Message):
    """A deployment or one of its nodes changed (the stream's `deployment` frame: the whole deployment)."""

    def __init__(self, deployment: dict[str, Any]) -> None:
        super().__init__()
        self.deployment = deployment


class LogsArrived(Message):
    def __init__(self, node: str, lines: list[dict[str, Any]]) -> None:
        super().__init__()
        self.node = node
        self.lines = lines


class EventArrived(Message):
    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__()
        self.event = event
