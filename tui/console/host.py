"""What the console's screens, palette and hand-over use of the app (`DvicApp` provides it).

They type against this Protocol instead of importing tui/console/app.py, which imports them: the
screens depend on what the app offers, not on the app module (no import cycle, tests/test_layers.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tui.api.aio import AsyncClient
    from tui.api.config import Settings
    from tui.console.fleet import Fleet


class ConsoleHost(Protocol):
    """The console app as its screens see it: the client, the fleet, the connection, the navigation."""

    settings: Settings
    api: AsyncClient
    fleet: Fleet
    me: dict[str, Any]
    connected: bool
    down_reason: str
    retry_in: float
    down_fatal: bool

    def suspend(self) -> AbstractContextManager[None]: ...

    def fleet_shown(self) -> None: ...

    def show_fleet(self) -> None: ...

    def filter_fleet(self, state: str | None = None, group: str | None = None) -> None: ...

    def open_node(self, node_id: str, tab: str = "overview") -> None: ...

    def open_logs(self, node_id: str | None, group: str | None = None, demo: str | None = None) -> None: ...

    def open_admin(self) -> None: ...

    def open_add_node(self) -> None: ...

    def open_alerts(self, tab: str = "alerts") -> None: ...

    def open_demos(self) -> None: ...

    def open_deployment(self, deployment_id: str, deployment: dict[str, Any] | None = None) -> None: ...

    def open_run(self, targets: dict[str, Any] | None = None, command_id: str | None = None) -> None: ...

    def open_actions(self, node_id: str | None = None, highlight: list[str] | None = None) -> None: ...

    def open_shell(self, node_id: str) -> None: ...

    def replay_session(self, session_id: str) -> None: ...

    def toggle_maintenance(self, node_id: str) -> None: ...

    def request_action(self, node_ids: list[str], action: str, demo: str | None = None) -> None: ...

    def update_daemon(self, targets: dict[str, Any]) -> None: ...

    def action_help(self) -> None: ...

    def action_reconnect(self) -> None: ...
