"""The console under Textual's pilot against a real server: what the tests read off its screens."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from tests.support.fake_node import FakeNode
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tui.api.config import Settings
from tui.console.app import DvicApp
from tui.console.screens.fleet import FleetScreen
from tui.console.screens.node import NodeScreen
from tui.console.widgets.log_view import LogView


def make_app(server: CentralServer, token: str | None = None) -> DvicApp:
    """The console as the admin (or `token`), pinned to the server's CA."""
    return DvicApp(Settings(server.url, token or server.admin_token, str(server.ca_path)))


def cell(table: DataTable[Any], row: str, col: str) -> str:
    return table.get_cell(row, col).plain


def row_ids(table: DataTable[Any]) -> set[str]:
    return {str(key.value) for key in table.rows}


def log_text(view: LogView) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in view.lines)


def screen_text(app: DvicApp) -> str:
    """What the user sees, as plain text (from the SVG screenshot's text runs)."""
    svg = app.export_screenshot()
    return html.unescape(" ".join(re.findall(r">([^<>]+)</text>", svg))).replace("\xa0", " ")


def shot(app: DvicApp, name: str, tmp_path: Path) -> str:
    """Saves an SVG screenshot (into $DVIC_SCREENSHOT_DIR when set: docs/console/) and returns it."""
    directory = os.environ.get("DVIC_SCREENSHOT_DIR") or str(tmp_path)
    app.save_screenshot(f"{name}.svg", path=directory)
    return (Path(directory) / f"{name}.svg").read_text()


async def shot_at(app: DvicApp, pilot: Pilot[Any], name: str, tmp_path: Path, size: tuple[int, int],
                  back: tuple[int, int]) -> str:
    """A screenshot at another terminal size, then back to `back`."""
    await pilot.resize_terminal(*size)
    await pilot.pause()
    svg = shot(app, name, tmp_path)
    await pilot.resize_terminal(*back)
    await pilot.pause()
    return svg


def fleet_of(app: DvicApp) -> tuple[FleetScreen, DataTable[Any]]:
    """The screen on top, which must be the fleet, and its table."""
    fleet = app.screen
    assert isinstance(fleet, FleetScreen)
    return fleet, fleet.query_one(DataTable)


async def to_row(app: DvicApp, node_id: str) -> DataTable[Any]:
    """Waits for the node's row in the fleet table and puts the cursor on it."""
    table: DataTable[Any] = app.screen.query_one(DataTable)
    await async_wait_for(lambda: node_id in row_ids(table), what="the node's row")
    table.move_cursor(row=table.get_row_index(node_id))
    return table


async def fleet_ready(app: DvicApp, *nodes: FakeNode) -> FleetScreen:
    """The fleet with these nodes' rows, online, the cursor on the first one's."""
    fleet = app.screen
    assert isinstance(fleet, FleetScreen)
    ids = [node.bundle["node_id"] for node in nodes]
    await async_wait_for(lambda: all(app.fleet.nodes.get(i, {}).get("state") == "online" for i in ids),
                         timeout=15, what="online")
    await to_row(app, ids[0])
    return fleet


async def open_node(app: DvicApp, pilot: Pilot[Any], node_id: str) -> NodeScreen:
    """From the fleet, opens the node's page (Enter on its row)."""
    await to_row(app, node_id)
    await pilot.press("enter")
    await async_wait_for(lambda: isinstance(app.screen, NodeScreen), what="node view")
    assert isinstance(app.screen, NodeScreen)
    return app.screen
