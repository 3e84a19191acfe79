"""What every console screen shares: the connection banner and the hooks the live feed calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from tui.console.widgets.banner import ConnectionBanner

if TYPE_CHECKING:
    from tui.console.host import ConsoleHost


class DvicScreen(Screen[None]):
    """A console screen: the connection banner, the screen's `body`, the footer. The app calls the
    `live_*` hooks of every screen on its stack."""

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        raise NotImplementedError

    @property
    def dvic(self) -> ConsoleHost:
        return self.app  # type: ignore[return-value]  # DvicApp, which the screens do not import

    def on_mount(self) -> None:
        self.live_connection(self.dvic.connected, self.dvic.down_reason, self.dvic.retry_in, self.dvic.down_fatal)

    def live_connection(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        for banner in self.query(ConnectionBanner):
            banner.set_state(connected, reason, retry_in, fatal)

    def live_nodes(self, nodes: list[dict[str, Any]], gone: list[str]) -> None:
        """Nodes changed (or, after a reconnect, a full snapshot with `gone` the vanished ids)."""

    def live_tick(self) -> None:
        """Once a second, right after the node updates: periodic work painted in the same frame."""

    def live_holds(self, node_ids: list[str]) -> None:
        """Who holds these nodes (app.fleet.holds) changed: a booking started, ended or was cancelled."""

    def live_alerts(self) -> None:
        """The server's alert counts changed (app.fleet.server_alerts)."""

    def live_alert(self, change: str, alert: dict[str, Any]) -> None:
        """An alert changed (the stream's `alert` frame: the whole alert as it is now)."""

    def live_silence(self, change: str, silence: dict[str, Any]) -> None:
        """A silence was added or removed."""

    def live_demo_status(self, status: dict[str, Any]) -> None:
        """A supervised demo's status on a node (the stream's `demo_status` frame)."""

    def live_deployment(self, deployment: dict[str, Any]) -> None:
        """A deployment as it is now (the stream's `deployment` frame)."""

    def live_logs(self, node: str, lines: list[dict[str, Any]]) -> None:
        """Log lines of a node this screen subscribed to."""

    def live_event(self, event: dict[str, Any]) -> None:
        """A new event (state change, log gap, failure...)."""

    def log_subscription(self) -> list[str]:
        """Node ids whose logs this screen wants live (`["*"]`: all)."""
        return []
