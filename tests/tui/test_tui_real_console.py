"""The console (Textual pilot) against the real central server with real node traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from textual.widgets import DataTable, OptionList, Static

from tests.support.nodes import (
    DEMO_TOKEN,
    HOSTILE,
    HOSTILE_SHOWN,
    connected,
    demo,
    metrics,
    online_node,
    send_history,
)
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import cell, fleet_of, log_text, make_app, shot, shot_at
from tui.console.app import DvicApp
from tui.console.screens.admin import AdminScreen
from tui.console.screens.dialogs import ChoiceDialog, InputDialog
from tui.console.screens.fleet import FleetScreen
from tui.console.screens.logs import LogsScreen
from tui.console.screens.node import NodeScreen
from tui.console.widgets.log_view import LogView


async def test_fleet_node_and_logs_with_real_traffic(central_server: CentralServer, tmp_path: Path) -> None:
    server = central_server
    other = server.enroll("desk-7", kind="desktop", group="lab")  # enrolled, never seen: "new"
    async with online_node(server, "pi-42", model=HOSTILE) as node:
        await send_history(node)
        await node.send(metrics())  # the latest sample is what the fleet shows
        await node.send(demo())
        await node.send(demo("old-demo", "exited", token="00001111aaaabbbb", pid=99))
        await node.send_logs([node.line("calibrated", demo=DEMO_TOKEN),
                              node.line(HOSTILE, level="ERROR", demo=DEMO_TOKEN)])
        app = make_app(server)
        async with app.run_test(size=(80, 24)) as pilot:
            fleet, table = fleet_of(app)
            await async_wait_for(lambda: table.row_count == 2, what="two nodes")
            nid = node.bundle["node_id"]
            assert fleet.shown_ids() == [other["node_id"], nid]  # by name
            await async_wait_for(lambda: "online" in cell(table, nid, "state"), what="online")
            await async_wait_for(lambda: cell(table, nid, "cpu").startswith(" 12%"), what="cpu")
            assert cell(table, nid, "demos") == "1/2"
            assert "new" in cell(table, other["node_id"], "state")
            # Live metrics: the cell changes in place.
            await node.send(metrics(cpu=77.0, temp=85.0, disk=95.0))
            await async_wait_for(lambda: cell(table, nid, "cpu").startswith(" 77%"), what="live cpu")
            # The header counts the server's firing alerts (disk_full fires at its next pass, within
            # --alerts-interval, 10 s; temperature_high waits its 60 s).
            await async_wait_for(lambda: "1 alerts" in str(fleet.query_one("#summary", Static).render()),
                                 timeout=20, what="alert")
            svg = shot(app, "fleet-80x24", tmp_path)
            assert "pi-42" in svg and "desk-7" in svg

            table.move_cursor(row=table.get_row_index(nid))
            await pilot.press("enter")
            await async_wait_for(lambda: isinstance(app.screen, NodeScreen), what="node view")
            view = app.screen
            facts = view.query_one("#facts", Static)
            await async_wait_for(lambda: HOSTILE_SHOWN in str(facts.render()), what="facts")
            assert "aarch64" in str(facts.render())
            await pilot.press("1")
            await async_wait_for(lambda: "max 77%" in str(view.query_one("#label-cpu").render()), what="cpu chart")
            shot(app, "node-80x24", tmp_path)
            await shot_at(app, pilot, "node-160x48", tmp_path, (160, 48), back=(80, 24))
            await pilot.press("d")
            demos = view.query_one("#demo-table", DataTable)
            await async_wait_for(lambda: demos.row_count == 2, what="demos")
            assert demos.get_row_at(0)[1].plain == "● alive" and demos.get_row_at(1)[1].plain == "○ exited"
            await pilot.press("g")
            tail = view.query_one(LogView)
            await async_wait_for(lambda: HOSTILE_SHOWN in log_text(tail), what="node log tail")
            await node.send_logs([node.line("tail line", demo=DEMO_TOKEN)])
            await async_wait_for(lambda: "tail line" in log_text(tail), what="live tail")
            await pilot.press("e")
            events = view.query_one("#event-table", DataTable)
            await async_wait_for(lambda: events.row_count >= 1, what="events")
            # Maintenance through the API; the state change comes back live, as a title and an event.
            before = events.row_count
            await pilot.press("m")
            await async_wait_for(lambda: server.node("pi-42")["state"] == "maintenance", what="maintenance on")
            await async_wait_for(lambda: "maintenance" in str(view.query_one("#node-title", Static).render()),
                                 what="title shows maintenance")
            await async_wait_for(lambda: events.row_count > before, what="live state event")

            await pilot.press("l")
            await async_wait_for(lambda: isinstance(app.screen, LogsScreen), what="logs screen")
            logs = app.screen.query_one(LogView)
            await async_wait_for(lambda: "tail line" in log_text(logs), what="logs history")
            await node.send_logs([node.line("followed", level="WARNING", demo=DEMO_TOKEN)])
            await async_wait_for(lambda: "followed" in log_text(logs), what="followed line")
            text = log_text(logs)
            assert HOSTILE_SHOWN in text and "\x1b" not in text and "\x07" not in text
            svg = shot(app, "logs-80x24", tmp_path)
            assert "\x1b" not in svg and "[link=http://x]x[/link]" in svg.replace("&#160;", " ")
            await shot_at(app, pilot, "logs-160x48", tmp_path, (160, 48), back=(80, 24))
            # Server-side full-text search.
            await pilot.press("slash")
            for key in "calibrated":
                await pilot.press(key)
            await pilot.press("enter")
            await async_wait_for(lambda: "calibrated" in log_text(logs) and "followed" not in log_text(logs),
                                 what="search results")
            await pilot.press("escape", "escape")
            assert isinstance(app.screen, FleetScreen)


async def test_admin_approves_and_revokes_on_real_server(open_server: CentralServer, tmp_path: Path) -> None:
    server = open_server
    status, body = server.api("POST", "/api/v1/register", {"name": "erin"}, token="")
    assert status == 201, body
    code = body["code"]
    bundle = server.enroll("pi-9", kind="raspberry", group="hall-b")
    app = make_app(server)
    async with app.run_test(size=(160, 48)) as pilot:
        await async_wait_for(lambda: app.connected, what="connected")
        shot(app, "fleet-160x48", tmp_path)
        await pilot.press("a")
        await async_wait_for(lambda: isinstance(app.screen, AdminScreen), what="admin")
        admin = app.screen
        ops = admin.query_one("#op-table", DataTable)
        await async_wait_for(lambda: ops.row_count == 2, what="operators")
        assert ops.get_row_at(0)[0].plain == "erin" and ops.get_row_at(0)[2].plain == "pending"
        ops.focus()
        await pilot.pause()
        shot(app, "admin-160x48", tmp_path)
        await pilot.press("a")
        # Erin registered with a one-time code: the admin is asked for it before the role.
        await async_wait_for(lambda: isinstance(app.screen, InputDialog), what="code prompt")
        for key in code.lower():
            await pilot.press("minus" if key == "-" else key)
        await pilot.press("enter")
        await async_wait_for(lambda: isinstance(app.screen, ChoiceDialog), what="role picker")
        app.screen.query_one(OptionList).highlighted = 1
        await pilot.press("enter")

        def erin() -> dict[str, Any]:
            return next(o for o in server.api("GET", "/api/v1/operators")[1]["operators"] if o["name"] == "erin")

        await async_wait_for(lambda: erin()["status"] == "active", what="approved")
        await pilot.press("escape")
        await pilot.press("a")  # back in: the screen reloads
        await async_wait_for(lambda: isinstance(app.screen, AdminScreen), what="admin again")
        admin = app.screen
        ops = admin.query_one("#op-table", DataTable)
        assert erin()["role"] == "operator"
        audit = admin.query_one("#audit-table", DataTable)
        await async_wait_for(lambda: audit.row_count >= 1, what="audit")
        await pilot.press("D")  # to the Nodes tab
        await pilot.press("D")
        await async_wait_for(lambda: app.screen is not admin, what="confirm")
        await pilot.press("y")
        await async_wait_for(lambda: server.node("pi-9")["revoked"], what="revoked")
        # A revoked node's connection is refused before the upgrade (docs/protocol.md section 2).
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with connected(bundle):
                pass
        assert refused.value.status == 403


def _closed_port() -> int:
    """A loopback port with nothing listening: an install there starts, then fails at connect."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _open_add_node_form(app: DvicApp, pilot: Any) -> tuple[Any, Static]:
    await async_wait_for(lambda: app.connected, what="connected")
    await pilot.press("n")
    await async_wait_for(lambda: type(app.screen).__name__ == "AddNodeScreen", what="add-node form")
    return app.screen, app.screen.query_one("#add-result", Static)


async def test_add_node_form_reports_each_step(shared_server: CentralServer, tmp_path: Path) -> None:
    closed_port = _closed_port()
    app = make_app(shared_server)
    async with app.run_test(size=(80, 24)) as pilot:
        form, result = await _open_add_node_form(app, pilot)
        await pilot.press("ctrl+s")
        await async_wait_for(lambda: "Target:" in str(result.render()), what="validation message")
        form.query_one("#host").value = "127.0.0.1"
        form.query_one("#port").value = str(closed_port)
        form.query_one("#user").value = "nobody-here"
        form.query_one("#password").value = "s3cret-once"
        form.query_one("#name").value = "lab-pc-1"
        await pilot.press("ctrl+s")
        await async_wait_for(lambda: form.query_one("#password").value == "", what="password cleared at once")
        await async_wait_for(lambda: form.error is not None, timeout=30, what="the install to fail")
        assert form.error.step == "connect"
        assert "connect" in str(result.render())
        steps = form.query_one("#steps", DataTable)
        assert steps.get_cell("connect", "mark").plain == "✖"
        assert steps.get_cell("enroll", "mark").plain == "○"  # never reached: nothing enrolled
        assert form.query_one("#host").value == "127.0.0.1"  # the form keeps what was typed
        status, body = shared_server.api("GET", "/api/v1/nodes")
        assert status == 200 and "lab-pc-1" not in [n["name"] for n in body["nodes"]]
        shot(app, "add-node-80x24", tmp_path)
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)


async def test_add_node_form_takes_demos_and_a_shell_user(shared_server: CentralServer, tmp_path: Path) -> None:
    from textual.widgets import TextArea

    from installer.demos import Demo

    closed_port = _closed_port()
    app = make_app(shared_server)
    async with app.run_test(size=(100, 40)) as pilot:
        form, result = await _open_add_node_form(app, pilot)
        for widget, value in (("#host", "127.0.0.1"), ("#port", str(closed_port)), ("#user", "nobody-here"),
                              ("#password", "s3cret-once")):
            form.query_one(widget).value = value
        commands = form.query_one("#demo-cmds", TextArea)

        # Each bad value is named with its field, nothing is attempted, the password stays typed.
        cases = [
            ("arm=robot-arm kiosk", "", "", "Demos: 'kiosk': expected NAME=UNIT"),
            ("arm=robot/arm", "", "", "Demos: 'arm=robot/arm': 'robot/arm.service' is not a systemd unit name"),
            ("", "kiosk /opt/kiosk/run", "", "Commands: 'kiosk /opt/kiosk/run': expected NAME=COMMAND"),
            ("arm=robot-arm", "arm=/opt/arm/run", "", "Demos: demo 'arm' is given twice"),
            ("", "", "Bad User", "Shell user: 'Bad User': expected a user name"),
        ]
        for demos, cmds, user, error in cases:
            form.query_one("#demos").value = demos
            commands.text = cmds
            form.query_one("#shell-user").value = user
            await pilot.press("ctrl+s")
            await async_wait_for(lambda error=error: error in str(result.render()), what=f"error {error!r}")
            assert form.request is None and form.query_one("#password").value == "s3cret-once"

        # Valid: both kinds of demo and the shell user go to the installer in its own request.
        form.query_one("#demos").value = "arm=robot-arm, cam=camera@0.service"
        commands.text = "kiosk=/opt/kiosk/run --full\n\n"
        form.query_one("#shell-user").value = "pi"
        await pilot.press("ctrl+s")
        await async_wait_for(lambda: form.error is not None, timeout=30, what="the install to fail at connect")
        assert form.error.step == "connect"
        assert form.request.demos == [Demo("arm", unit="robot-arm.service"), Demo("cam", unit="camera@0.service"),
                                      Demo("kiosk", command="/opt/kiosk/run --full")]
        assert form.request.shell_user == "pi" and form.request.password.wiped
        shot(app, "add-node-demos-100x40", tmp_path)

        # None given: demos.json is kept (None), and the daemon's default shell user.
        form.query_one("#demos").value = ""
        commands.text = ""
        form.query_one("#shell-user").value = ""
        form.query_one("#password").value = "s3cret-once"
        form.error = None
        await pilot.press("ctrl+s")
        await async_wait_for(lambda: form.error is not None, timeout=30, what="the second install to fail")
        assert form.request.demos is None and form.request.shell_user == ""
