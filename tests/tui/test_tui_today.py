"""The console's Today view (issue 16) against the real server: a group's opening hours in its zone,
a runbook's moment and the firing of run-now with its per-node states, booking from the console, a
second operator's console refused with the server's message, and cancelling."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, Static

from tests.support.nodes import online_node
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import cell, fleet_ready, make_app, row_ids, shot, shot_at
from tui.console.app import DvicApp
from tui.console.screens.dialogs import ConfirmDialog, FormDialog
from tui.console.screens.today import FiringScreen, TodayScreen
from tui.console.widgets.timeline_table import TimelineTable


def operator(server: CentralServer, name: str) -> str:
    status, body = server.api("POST", "/api/v1/operators", {"name": name, "role": "operator"})
    assert status == 201, body
    return str(body["token"])


async def open_today(app: DvicApp, pilot: object) -> tuple[TodayScreen, TimelineTable]:
    await pilot.press("T")  # type: ignore[attr-defined]
    await async_wait_for(lambda: isinstance(app.screen, TodayScreen) and app.screen.loaded_at is not None,
                         what="the Today view, read")
    view = app.screen
    assert isinstance(view, TodayScreen)
    return view, view.query_one(TimelineTable)


def select(table: TimelineTable, key: str) -> None:
    table.move_cursor(row=table.get_row_index(key))


async def fill(app: DvicApp, **values: str) -> FormDialog:
    await async_wait_for(lambda: isinstance(app.screen, FormDialog), what="the form dialog")
    dialog = app.screen
    assert isinstance(dialog, FormDialog)
    for key, value in values.items():
        dialog.query_one(f"#field-{key}", Input).value = value
    return dialog


def error_of(dialog: FormDialog) -> str:
    return str(dialog.query_one("#form-error", Static).render())


def booking_rows(table: TimelineTable) -> list[str]:
    return sorted(k for k in row_ids(table) if k.startswith("b:"))


async def test_today_shows_hours_and_a_runbooks_firing(quiet_server: CentralServer, tmp_path: Path) -> None:
    app = make_app(quiet_server)
    async with app.run_test(size=(120, 40)) as pilot, online_node(quiet_server, "pi-hall", group="hall") as node:
        status, body = quiet_server.api("PUT", "/api/v1/calendar/hall/hours", {"hours": ["daily 10:00-18:00"],
                                                                          "zone": "Europe/Paris"})
        assert status == 200, body
        status, body = quiet_server.api("POST", "/api/v1/runbooks", {"group": "hall", "name": "warmup", "at": "open-15m",
                                                               "steps": ["maintenance off"]})
        assert status == 201, body
        await fleet_ready(app, node)
        view, table = await open_today(app, pilot)

        # The group line, its hours in its zone, the runbook's moment (15 minutes before opening).
        assert "g:hall" in row_ids(table) and "Europe/Paris" in cell(table, "g:hall", "what")
        assert cell(table, "h:hall:0:open", "time") == "10:00" and cell(table, "h:hall:0:close", "time") == "18:00"
        moment = next(k for k in row_ids(table) if k.startswith("m:hall:warmup:"))
        assert cell(table, moment, "time") == "09:45" and "warmup (open-15m)" in cell(table, moment, "what")
        assert cell(table, moment, "state") in ("· pending", "not fired")

        # Run now: the firing shows up by itself (the view reads the API every few seconds), done.
        status, firing = quiet_server.api("POST", "/api/v1/runbooks/hall/warmup/run")
        assert status == 201, firing
        key = f"f:{firing['id']}"
        await async_wait_for(lambda: key in row_ids(table) and cell(table, key, "state") == "✔ done", timeout=20,
                             what="the firing, done, in the view")
        assert cell(table, key, "nodes") == "1/1 ok" and "run now by admin" in cell(table, key, "what")
        shot(app, "today-120x40", tmp_path)
        await shot_at(app, pilot, "today-80x24", tmp_path, (80, 24), (120, 40))

        # Enter: the firing's per-node states.
        select(table, key)
        await pilot.press("enter")
        await async_wait_for(lambda: isinstance(app.screen, FiringScreen) and app.screen.firing is not None,
                             what="the firing's nodes")
        nodes = app.screen.query_one(DataTable)
        node_id = node.bundle["node_id"]
        await async_wait_for(lambda: node_id in row_ids(nodes), what="the node's state")
        assert cell(nodes, node_id, "node") == "pi-hall" and cell(nodes, node_id, "state") == "ok"
        assert "maintenance off" in cell(nodes, node_id, "message")
        await shot_at(app, pilot, "today-firing-80x24", tmp_path, (80, 24), (120, 40))
        await pilot.press("escape")
        await async_wait_for(lambda: app.screen is view, what="back to the Today view")


async def test_booking_from_the_console_a_second_operator_refused_and_cancelling(quiet_server: CentralServer,
                                                                                  tmp_path: Path) -> None:
    olga, otto = operator(quiet_server, "olga"), operator(quiet_server, "otto")
    async with online_node(quiet_server, "pi-desk", group="lab") as node:
        node_id = node.bundle["node_id"]
        app = make_app(quiet_server, token=olga)
        async with app.run_test(size=(120, 40)) as pilot:
            await fleet_ready(app, node)
            view, table = await open_today(app, pilot)
            assert "g:lab" in row_ids(table) and cell(table, "g:lab", "state") == "no hours"
            select(table, "g:lab")
            await pilot.press("b")
            dialog = await fill(app, nodes="pi-desk", to="+1h", note="kiosk trial")
            assert dialog.values()["group"] == "lab" and dialog.values()["from"] == "now"
            await shot_at(app, pilot, "today-book-80x24", tmp_path, (80, 24), (120, 40))
            await pilot.press("enter")
            await async_wait_for(lambda: app.screen is view, what="the form closed")
            (booking,) = quiet_server.api("GET", "/api/v1/bookings")[1]["bookings"]
            assert booking["holder"] == "olga" and booking["note"] == "kiosk trial" and booking["nodes"] == [node_id]
            key = f"b:{booking['id']}:lab"
            await async_wait_for(lambda: key in row_ids(table), what="the booking in the view")
            assert cell(table, key, "state") == "⚑ holding" and "olga (you): pi-desk" in cell(table, key, "what")
            assert "kiosk trial" in cell(table, key, "detail")
            # The fleet marks the machine as held (the holder's own: green).
            await pilot.press("escape")
            fleet_table = app.screen.query_one(DataTable)
            await async_wait_for(lambda: "⚑" in cell(fleet_table, node_id, "name"), what="the fleet's marker")

        # A second operator: booking the same machine is refused with the server's word, in the
        # dialog; cancelling olga's booking too.
        app = make_app(quiet_server, token=otto)
        async with app.run_test(size=(100, 30)) as pilot:
            await fleet_ready(app, node)
            view, table = await open_today(app, pilot)
            await pilot.press("b")
            dialog = await fill(app, nodes="pi-desk", to="+2h")
            await pilot.press("enter")
            await async_wait_for(lambda: "(booked)" in error_of(dialog), what="the refusal in the dialog")
            said = error_of(dialog)
            assert f"already booked by booking {booking['id']} of 'olga'" in said, said
            await shot_at(app, pilot, "today-refused-80x24", tmp_path, (80, 24), (100, 30))
            assert isinstance(app.screen, FormDialog) and dialog.values()["to"] == "+2h"  # kept until Escape
            await pilot.press("escape")
            await async_wait_for(lambda: app.screen is view, what="back to the view")
            select(table, key)
            await pilot.press("c")
            await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
            await pilot.press("y")
            await async_wait_for(lambda: any("not_yours" in str(n.message) for n in app._notifications),
                                 what="otto may not cancel olga's booking")
            assert quiet_server.api("GET", "/api/v1/bookings")[1]["bookings"][0]["state"] == "active"

        # Olga cancels it.
        app = make_app(quiet_server, token=olga)
        async with app.run_test(size=(100, 30)) as pilot:
            await fleet_ready(app, node)
            view, table = await open_today(app, pilot)
            select(table, key)
            await pilot.press("c")
            await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
            await pilot.press("y")
            await async_wait_for(lambda: key not in row_ids(table), what="the booking gone from the view")
            assert quiet_server.api("GET", "/api/v1/bookings")[1]["bookings"] == []
            assert any(f"booking #{booking['id']} cancelled" in str(n.message) for n in app._notifications)
            # `B` on the fleet: the same form, for the node under the cursor.
            await pilot.press("escape")
            await fleet_ready(app, node)
            await pilot.press("B")
            dialog = await fill(app)
            assert dialog.values()["nodes"] == "pi-desk" and dialog.values()["to"] == "+1h"
            await pilot.press("escape")
