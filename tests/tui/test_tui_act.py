"""The console's Act part (Textual pilot) against the real central server and executor nodes.

Commands with live per-node output and cancel, tracked actions (reboot to done, demo actions),
maintenance, daemon update with its confirmation, history on the node view; node text literal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from textual.widgets import DataTable, Static

from tests.support.server import CentralServer
from tests.tui.realkit import HOSTILE, HOSTILE_SHOWN
from tests.tui.tuifake import wait_for
from tests.tui_remote.executor_node import ExecutorNode
from tui.api.config import Settings
from tui.console.app import DvicApp
from tui.console.screens.actions import ActionsScreen
from tui.console.screens.dialogs import ConfirmDialog
from tui.console.screens.fleet import FleetScreen
from tui.console.screens.node import NodeScreen
from tui.console.screens.run import RunScreen


def make_app(server: CentralServer, token: str | None = None) -> DvicApp:
    return DvicApp(Settings(server.url, token or server.admin_token, str(server.ca_path)))


def shot(app: DvicApp, name: str, tmp_path: Path) -> None:
    """An SVG screenshot, into $DVIC_SCREENSHOT_DIR when set (docs/console/)."""
    directory = os.environ.get("DVIC_SCREENSHOT_DIR") or str(tmp_path)
    app.save_screenshot(f"{name}.svg", path=directory)
    assert (Path(directory) / f"{name}.svg").stat().st_size > 0


def states(screen: RunScreen) -> dict[str, str]:
    """Node name -> state text as the run table shows them."""
    table: DataTable[Any] = screen.query_one("#run-table", DataTable)
    return {table.get_row_at(i)[0].plain: table.get_row_at(i)[1].plain for i in range(table.row_count)}


async def fleet_ready(app: DvicApp, count: int) -> FleetScreen:
    fleet = app.screen
    assert isinstance(fleet, FleetScreen)
    await wait_for(lambda: fleet.query_one(DataTable).row_count == count, within=15, what=f"{count} rows")
    await wait_for(lambda: all(n.get("state") == "online" for n in app.fleet.nodes.values()), what="online")
    return fleet


async def test_run_on_two_marked_nodes_shows_both_outputs_then_cancel(central_server: CentralServer,
                                                                      tmp_path: Path) -> None:
    server = central_server
    async with ExecutorNode(server.enroll("pi-a")), ExecutorNode(server.enroll("pi-b")):
        app = make_app(server)
        async with app.run_test(size=(120, 36)) as pilot:
            fleet = await fleet_ready(app, 2)
            # The whole fleet (X, no group filtered on) is confirmed first; "n" leaves nothing started.
            await pilot.press("X")
            await wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen on all")
            everywhere = app.screen
            assert isinstance(everywhere, RunScreen)
            await pilot.press(*"echo everywhere", "enter")
            await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="confirmation")
            await pilot.press("n")
            await wait_for(lambda: app.screen is everywhere, what="back to run")
            assert everywhere.command_id is None
            await pilot.press("escape")
            await wait_for(lambda: app.screen is fleet, what="back to the fleet")
            table = fleet.query_one(DataTable)
            table.move_cursor(row=0)
            await pilot.press("space", "space")  # marks pi-a, then pi-b (the cursor moves down)
            assert len(fleet.marked) == 2
            assert table.get_row_at(0)[0].plain.startswith("✓ ")
            await pilot.press("x")
            await wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen")
            run = app.screen
            assert isinstance(run, RunScreen)
            # Named nodes are what the operator chose: no confirmation (docs/remote-control.md).
            await pilot.press(*"echo out-$((6*7)); echo err >&2; printf '%s' ", "enter")
            await wait_for(lambda: run.board.done, within=20, what="command done")
            assert not isinstance(app.screen, ConfirmDialog)
            assert states(run) == {"pi-a": "exited 0", "pi-b": "exited 0"}
            await pilot.resize_terminal(160, 48)
            await pilot.pause()
            shot(app, "run-160x48", tmp_path)
            await pilot.resize_terminal(80, 24)
            await pilot.pause()
            shot(app, "run-80x24", tmp_path)
            await pilot.resize_terminal(120, 36)
            text = run.output_text()
            for name in ("pi-a", "pi-b"):
                assert f"{name} │ out-42" in text and f"{name} │ err" in text
            # Only one node's output with enter on its row; `a` shows all again.
            await pilot.press("enter")
            await wait_for(lambda: "pi-b │" not in run.output_text(), what="only pi-a")
            await pilot.press("a")
            await wait_for(lambda: "pi-b │ out-42" in run.output_text(), what="all output")

            # A long command, cancelled from the console: every node reports `cancelled`.
            await pilot.press("n")
            box = run.query_one("#run-input")
            box.value = "echo started; sleep 30; echo never"  # type: ignore[attr-defined]
            await pilot.press("enter")
            await wait_for(lambda: run.output_text().count("started") == 2, within=15, what="both started")
            await pilot.press("ctrl+x")
            await wait_for(lambda: run.board.done, within=20, what="cancelled")
            assert set(states(run).values()) == {"cancelled"}
            assert "never" not in run.output_text()


async def test_hostile_output_is_shown_literally(central_server: CentralServer) -> None:
    async with ExecutorNode(central_server.enroll("pi-h")) as node:
        app = make_app(central_server)
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, 1)
            app.open_run({"nodes": [node.bundle["node_id"]]})
            await wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen")
            await pilot.pause()
            run = app.screen
            assert isinstance(run, RunScreen)
            run.query_one("#run-input").value = f"printf '%s\\n' '{HOSTILE}'"  # type: ignore[attr-defined]
            await pilot.press("enter")  # one node: no confirmation
            await wait_for(lambda: run.board.done, within=20, what="done")
            assert f"pi-h │ {HOSTILE_SHOWN}" in run.output_text()
            assert "\x1b" not in run.output_text()


async def test_reboot_reaches_done_and_history_on_the_node_view(central_server: CentralServer,
                                                                tmp_path: Path) -> None:
    async with ExecutorNode(central_server.enroll("pi-r")) as node:
        app = make_app(central_server)
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, 1)
            await pilot.press("b")
            await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="reboot confirmation")
            await pilot.press("y")
            await wait_for(lambda: isinstance(app.screen, ActionsScreen), what="actions screen")
            acts = app.screen
            assert isinstance(acts, ActionsScreen)
            table = acts.query_one(DataTable)
            await wait_for(lambda: table.row_count == 1 and table.get_row_at(0)[4].plain == "done", within=30,
                           what="reboot done")
            assert node.reboots == 1
            assert "1/1 done" in str(acts.query_one("#actions-title", Static).render())
            await pilot.resize_terminal(160, 48)
            await pilot.pause()
            shot(app, "actions-160x48", tmp_path)
            await pilot.resize_terminal(120, 36)
            await pilot.press("escape")
            await pilot.press("enter")
            await wait_for(lambda: isinstance(app.screen, NodeScreen), what="node view")
            view = app.screen
            await pilot.press("a")
            node_acts = view.query_one("#node-actions", DataTable)
            await wait_for(lambda: node_acts.row_count == 1, what="action history")
            assert node_acts.get_row_at(0)[2].plain == "reboot"
            await pilot.press("x")
            await wait_for(lambda: isinstance(app.screen, RunScreen), what="run from the node")
            await pilot.pause()
            run = app.screen
            assert isinstance(run, RunScreen)
            run.query_one("#run-input").value = "echo from-node-view"  # type: ignore[attr-defined]
            await pilot.press("enter")
            await wait_for(lambda: run.board.done, within=20, what="done")
            await pilot.press("escape")
            await pilot.press("c")
            cmds = view.query_one("#cmd-table", DataTable)
            await wait_for(lambda: cmds.row_count == 1, what="command history")
            assert cmds.get_row_at(0)[2].plain == "echo from-node-view"
            await pilot.press("enter")  # a past command: its stored output
            await wait_for(lambda: isinstance(app.screen, RunScreen), what="past command")
            past = app.screen
            assert isinstance(past, RunScreen)
            await wait_for(lambda: "pi-r │ from-node-view" in past.output_text(), what="stored output")


async def test_maintenance_toggle_and_update_confirmation(central_server: CentralServer) -> None:
    async with ExecutorNode(central_server.enroll("pi-u")):
        app = make_app(central_server)
        async with app.run_test(size=(120, 36)) as pilot:
            fleet = await fleet_ready(app, 1)
            nid = fleet.shown_ids()[0]
            await pilot.press("m")
            await wait_for(lambda: app.fleet.nodes[nid].get("state") == "maintenance", what="maintenance on")
            await pilot.press("m")
            await wait_for(lambda: app.fleet.nodes[nid].get("state") == "online", what="maintenance off")
            # Update: the confirmation names the release and the running version; "n" sends nothing.
            await pilot.press("u")
            await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="update confirmation")
            dialog = app.screen
            assert isinstance(dialog, ConfirmDialog)
            assert "Update the daemon on pi-u to release" in dialog.question and "Running now" in dialog.question
            await pilot.press("n")
            await wait_for(lambda: app.screen is fleet, what="back to fleet")
            assert central_server.api("GET", "/api/v1/actions")[1]["actions"] == []
            await pilot.press("u")
            await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="update confirmation")
            await pilot.press("y")
            await wait_for(lambda: isinstance(app.screen, ActionsScreen), what="actions screen")
            table = app.screen.query_one(DataTable)
            # The executor node does not implement updates: the action ends `failed`, shown as such.
            await wait_for(lambda: table.row_count == 1 and table.get_row_at(0)[4].plain == "failed", within=30,
                           what="update state")
            assert table.get_row_at(0)[2].plain == "update"


async def test_demo_actions_recordings_and_refusals(central_server: CentralServer) -> None:
    from tests.tui.realkit import demo
    from tests.tui_remote.executor_node import UNKNOWN_DEMO
    from tui.console.screens.admin import AdminScreen
    from tui.console.screens.dialogs import ChoiceDialog

    async with ExecutorNode(central_server.enroll("pi-d")) as node:
        await node.send(demo("robot-arm", token="a1b2c3d4a1b2c3d4"))
        await node.send(demo(UNKNOWN_DEMO, token="0000111122223333"))
        # A recorded shell session, opened through the API as `dvic shell` would.
        app = make_app(central_server)
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, 1)
            ws = await app.api.shell(node.bundle["node_id"], 80, 24)
            await ws.send_bytes(b"echo recorded; exit\n")
            async for _ in ws:
                pass  # until the node closes the session
            await pilot.press("enter")
            await wait_for(lambda: isinstance(app.screen, NodeScreen), what="node view")
            view = app.screen
            assert isinstance(view, NodeScreen)
            await pilot.press("D")  # first D: to the Demos tab
            demos = view.query_one("#demo-table", DataTable)
            await wait_for(lambda: demos.row_count == 2, what="demos")
            demos.move_cursor(row=[demos.get_row_at(i)[0].plain for i in range(2)].index("robot-arm"))
            await pilot.press("D")
            await wait_for(lambda: isinstance(app.screen, ChoiceDialog), what="demo action choice")
            await pilot.press("enter")  # the first option: Restart demo
            await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="restart confirmation")
            await pilot.press("y")
            await wait_for(lambda: isinstance(app.screen, ActionsScreen), what="actions")
            table = app.screen.query_one(DataTable)
            await wait_for(lambda: table.row_count == 1 and table.get_row_at(0)[4].plain == "done", within=20,
                           what="restart done")
            assert [table.get_row_at(0)[i].plain for i in (2, 3)] == ["restart_demo", "robot-arm"]
            await pilot.press("escape")
            demos.move_cursor(row=[demos.get_row_at(i)[0].plain for i in range(2)].index(UNKNOWN_DEMO))
            await pilot.press("D")
            await wait_for(lambda: isinstance(app.screen, ChoiceDialog), what="demo action choice")
            await pilot.press("down", "enter")  # Stop demo
            await wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="stop confirmation")
            await pilot.press("y")
            await wait_for(lambda: isinstance(app.screen, ActionsScreen), what="actions")
            table = app.screen.query_one(DataTable)
            await wait_for(lambda: any(table.get_row_at(i)[4].plain == "failed" for i in range(table.row_count)),
                           within=20, what="stop of an unknown demo failed")

            # Recordings in the admin screen; replay needs a real terminal, said plainly here.
            app.open_admin()
            await wait_for(lambda: isinstance(app.screen, AdminScreen), what="admin")
            await pilot.pause()
            await pilot.press("s")
            recs = app.screen.query_one("#session-table", DataTable)
            await wait_for(lambda: recs.row_count == 1, what="one recording")
            assert recs.get_row_at(0)[1].plain == "pi-d"
            await pilot.press("p")
            await wait_for(lambda: any("cannot replay" in str(n.message) for n in app._notifications),
                           what="replay refused in a headless terminal")


async def test_viewer_cannot_act(central_server: CentralServer) -> None:
    status, body = central_server.api("POST", "/api/v1/operators", {"name": "vera", "role": "viewer"})
    assert status in (200, 201), body
    async with ExecutorNode(central_server.enroll("pi-v")):
        app = make_app(central_server, token=body["token"])
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, 1)
            await pilot.press("x")
            await wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen")
            await pilot.pause()
            run = app.screen
            run.query_one("#run-input").value = "echo nope"  # type: ignore[attr-defined]
            await pilot.press("enter")
            await wait_for(lambda: any("run:" in str(n.message) and "forbidden" in str(n.message)
                                       for n in app._notifications), what="refusal shown")
            assert isinstance(run, RunScreen) and run.command_id is None
