"""The fleet header's alert count is the server's (issue 15), not one the console works out itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Static

from tests.support.nodes import online_node
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tui.api.config import Settings
from tui.console.app import DvicApp
from tui.console.screens.fleet import FleetScreen


@pytest.fixture
def alerting_server(tmp_path: Path) -> Iterator[CentralServer]:
    server = CentralServer(tmp_path / "central", interval=1.0, offline_after=2.0,
                           extra_args=("--alerts-interval", "0.5")).start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_node_offline_counts_in_the_header_from_the_servers_alerts(alerting_server: CentralServer) -> None:
    server = alerting_server
    app = DvicApp(Settings(server.url, server.admin_token, str(server.ca_path)))
    async with app.run_test(size=(100, 24)):
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)

        def summary() -> str:
            return str(fleet.query_one("#summary", Static).render())

        async with online_node(server, "pi-gone"):
            await async_wait_for(lambda: "1 online" in summary(), what="the node online")
            assert "0 alerts" in summary()
        # Its socket closed: offline at once, and the server's node_offline alert fires (the console's
        # own reckoning counts no offline node as an alert).
        await async_wait_for(lambda: "1 offline" in summary(), what="the node offline")
        await async_wait_for(lambda: "1 alerts" in summary(), timeout=15, what="the server's alert in the header")
        assert app.fleet.server_alerts == 1 and not app.fleet.alerting
