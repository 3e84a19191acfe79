"""The console's Alerts view and the node view's Alerts tab (issue 15), against the real server:
alerts arrive live, `a` acknowledges with a note, silences are added and removed, a viewer is refused."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, Static, TabbedContent

from tests.support.cli import run_dvic, server_env
from tests.support.nodes import metrics, online_node
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import cell, fleet_ready, make_app, open_node, row_ids, screen_text, shot, shot_at
from tui.console.app import DvicApp
from tui.console.screens.alerts import AlertsScreen
from tui.console.screens.dialogs import ConfirmDialog, FormDialog
from tui.console.screens.node import NodeScreen
from tui.console.widgets.alert_table import AlertTable


def alerts_screen(app: DvicApp) -> AlertsScreen:
    screen = app.screen
    assert isinstance(screen, AlertsScreen)
    return screen


def form(app: DvicApp) -> FormDialog:
    dialog = app.screen
    assert isinstance(dialog, FormDialog)
    return dialog


async def fill(app: DvicApp, **values: str) -> FormDialog:
    """Waits for the form dialog and types these values into its fields."""
    await async_wait_for(lambda: isinstance(app.screen, FormDialog), what="the form dialog")
    dialog = form(app)
    for key, value in values.items():
        dialog.query_one(f"#field-{key}", Input).value = value
    return dialog


def error_of(dialog: FormDialog) -> str:
    return str(dialog.query_one("#form-error", Static).render())


async def test_alerts_view_live_ack_and_silences(alerting_server: CentralServer, dvic_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    app = make_app(alerting_server)
    async with app.run_test(size=(120, 40)) as pilot, online_node(alerting_server, "pi-hot") as node:
        await fleet_ready(app, node)
        await pilot.press("exclamation_mark")
        await async_wait_for(lambda: isinstance(app.screen, AlertsScreen) and app.screen.live.loaded,
                             what="the alerts view, read")
        view = alerts_screen(app)
        table = view.query_one(AlertTable)
        assert table.row_count == 0 and "No alert" in screen_text(app)

        # The alert arrives live (the stream's `alert` frame), firing.
        await node.send(metrics(disk=97.0))
        await async_wait_for(lambda: table.row_count == 1, timeout=20, what="the disk alert in the view")
        alert_id = next(iter(row_ids(table)))
        assert [cell(table, alert_id, c) for c in ("severity", "rule", "subject", "state", "by")] == [
            "warning", "disk_full", "pi-hot", "● firing", "-"]
        await async_wait_for(lambda: "disk at 97" in screen_text(app), what="the summary under the table")
        shot(app, "alerts-120x40", tmp_path)
        await shot_at(app, pilot, "alerts-80x24", tmp_path, (80, 24), (120, 40))

        # `a`: a note, Enter; the row says acknowledged and by whom, the line under it the note.
        await pilot.press("a")
        await fill(app, note="new SD card tomorrow")
        await shot_at(app, pilot, "alerts-ack-80x24", tmp_path, (80, 24), (120, 40))
        await pilot.press("enter")
        await async_wait_for(lambda: app.screen is view and cell(table, alert_id, "state") == "◐ acknowledged",
                             what="acknowledged in the view")
        assert cell(table, alert_id, "by") == "admin"
        detail = str(view.query_one("#alert-detail", Static).render())
        assert "acknowledged by admin" in detail and "new SD card tomorrow" in detail
        res = await run_dvic(server_env(dvic_env, alerting_server), "alert", "show", alert_id)
        assert res.code == 0 and "acknowledged by admin" in res.out and "new SD card tomorrow" in res.out, res.err
        await pilot.press("a")  # an acknowledged alert is not acknowledged again
        await async_wait_for(lambda: any("only a firing alert" in str(n.message) for n in app._notifications),
                             what="the refusal of a second ack")

        # `n`: a silence, first "this rule on this node"; a bad duration is refused in the dialog.
        await pilot.press("n")
        dialog = await fill(app, **{"for": "forever", "note": "rewiring"})
        assert dialog.values()["node"] == "pi-hot" and dialog.values()["rule"] == "disk_full"
        await pilot.press("enter")
        await async_wait_for(lambda: "bad_duration" in error_of(dialog), what="the bad duration refused")
        assert isinstance(app.screen, FormDialog)
        dialog.query_one("#field-for", Input).value = "2h"
        await pilot.press("enter")
        await async_wait_for(lambda: app.screen is view, what="the dialog closed")
        silences = view.query_one("#silence-table", DataTable)
        await async_wait_for(lambda: silences.row_count == 1, what="the silence listed")
        status, body = alerting_server.api("GET", "/api/v1/silences")
        assert status == 200 and [(s["node"], s["rule"], s["note"]) for s in body["silences"]] == [
            ("pi-hot", "disk_full", "rewiring")]
        silence_id = str(body["silences"][0]["id"])
        await pilot.press("s")
        assert view.query_one(TabbedContent).active == "silences"
        assert cell(silences, silence_id, "matcher") == "node=pi-hot rule=disk_full"
        await shot_at(app, pilot, "alerts-silences-80x24", tmp_path, (80, 24), (120, 40))

        # `d` on the Silences tab: confirmed, then ended.
        await pilot.press("d")
        await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
        await pilot.press("y")
        await async_wait_for(lambda: silences.row_count == 0, what="the silence gone")
        assert alerting_server.api("GET", "/api/v1/silences")[1]["silences"] == []

        # The node view shows the node's alerts, same columns.
        await pilot.press("escape")
        await open_node(app, pilot, node.bundle["node_id"])
        page = app.screen
        assert isinstance(page, NodeScreen)
        await pilot.press("exclamation_mark")
        node_table = page.query_one("#node-alerts", AlertTable)
        await async_wait_for(lambda: alert_id in row_ids(node_table), what="the alert in the node view")
        assert cell(node_table, alert_id, "state") == "◐ acknowledged"
        assert "1 alert" in str(page.query_one("#node-title", Static).render())
        await shot_at(app, pilot, "node-alerts-80x24", tmp_path, (80, 24), (120, 40))

        # Resolved live in the node view.
        await node.send(metrics(disk=40.0))
        await async_wait_for(lambda: cell(node_table, alert_id, "state") == "✔ resolved", timeout=20,
                             what="resolved live")


async def test_a_viewer_sees_alerts_and_the_servers_refusals(alerting_server: CentralServer) -> None:
    status, body = alerting_server.api("POST", "/api/v1/operators", {"name": "vera", "role": "viewer"})
    assert status == 201, body
    app = make_app(alerting_server, token=body["token"])
    async with app.run_test(size=(100, 30)) as pilot, online_node(alerting_server, "pi-full") as node:
        await node.send(metrics(disk=97.0))
        await fleet_ready(app, node)
        await pilot.press("exclamation_mark")
        await async_wait_for(lambda: isinstance(app.screen, AlertsScreen), what="the alerts view")
        table = alerts_screen(app).query_one(AlertTable)
        await async_wait_for(lambda: table.row_count == 1, timeout=20, what="the alert, for a viewer too")
        alert_id = next(iter(row_ids(table)))

        async def refused(key: str, **values: str) -> str:
            await pilot.press(key)
            dialog = await fill(app, **values)
            await pilot.press("enter")
            await async_wait_for(lambda: "forbidden" in error_of(dialog), what=f"{key} refused")
            said = error_of(dialog)
            await pilot.press("escape")
            await async_wait_for(lambda: isinstance(app.screen, AlertsScreen), what="back to the view")
            return said

        said = await refused("a", note="mine")
        assert "this needs the operator role; 'vera' is viewer" in said
        said = await refused("n", note="quiet")
        assert "this needs the operator role" in said
        status, alert = alerting_server.api("GET", f"/api/v1/alerts/{alert_id}")
        assert alert["state"] == "firing" and alerting_server.api("GET", "/api/v1/silences")[1]["silences"] == []
        assert cell(table, alert_id, "state") == "● firing"
