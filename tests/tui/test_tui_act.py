"""The console's Act part (Textual pilot) against the real central server and executor nodes.

Commands with live per-node output and cancel, tracked actions (reboot to done, demo actions),
maintenance, daemon update with its confirmation, history on the node view; node text literal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from tests.support.nodes import HOSTILE, HOSTILE_SHOWN, demo
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import fleet_ready, make_app, shot, shot_at
from tests.tui_remote.executor_node import UNKNOWN_DEMO, ExecutorNode
from tui.console.app import DvicApp
from tui.console.screens.actions import ActionsScreen
from tui.console.screens.admin import AdminScreen
from tui.console.screens.dialogs import ChoiceDialog, ConfirmDialog
from tui.console.screens.node import NodeScreen
from tui.console.screens.run import RunScreen


def states(screen: RunScreen) -> dict[str, str]:
    """Node name -> state text as the run table shows them."""
    table: DataTable[Any] = screen.query_one("#run-table", DataTable)
    return {table.get_row_at(i)[0].plain: table.get_row_at(i)[1].plain for i in range(table.row_count)}


async def confirm_and_wait(app: DvicApp, pilot: Pilot[object], state: str, what: str) -> DataTable[object]:
    """Says yes to the confirmation on screen, then waits for the action's state on the actions screen."""
    await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what=f"{what} confirmation")
    await pilot.press("y")
    await async_wait_for(lambda: isinstance(app.screen, ActionsScreen), what="actions screen")
    table: DataTable[object] = app.screen.query_one(DataTable)
    await async_wait_for(lambda: any(table.get_row_at(i)[4].plain == state for i in range(table.row_count)),
                         timeout=30, what=f"{what} {state}")
    return table


async def test_run_on_two_marked_nodes_shows_both_outputs_then_cancel(shared_server: CentralServer,
                                                                      tmp_path: Path) -> None:
    server = shared_server
    async with ExecutorNode(server.enroll("pi-a")) as a, ExecutorNode(server.enroll("pi-b")) as b:
        app = make_app(server)
        async with app.run_test(size=(120, 36)) as pilot:
            fleet = await fleet_ready(app, a, b)
            # The whole fleet (X, no group filtered on) is confirmed first; "n" leaves nothing started.
            await pilot.press("X")
            await async_wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen on all")
            everywhere = app.screen
            assert isinstance(everywhere, RunScreen)
            await pilot.press(*"echo everywhere", "enter")
            await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="confirmation")
            await pilot.press("n")
            await async_wait_for(lambda: app.screen is everywhere, what="back to run")
            assert everywhere.command_id is None
            await pilot.press("escape")
            await async_wait_for(lambda: app.screen is fleet, what="back to the fleet")
            table = fleet.query_one(DataTable)
            await pilot.press("space", "space")  # marks pi-a, then pi-b (the next row by name)
            assert fleet.marked == {a.bundle["node_id"], b.bundle["node_id"]}
            assert table.get_row_at(table.get_row_index(a.bundle["node_id"]))[0].plain.startswith("✓ ")
            await pilot.press("x")
            await async_wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen")
            run = app.screen
            assert isinstance(run, RunScreen)
            # Named nodes are what the operator chose: no confirmation (docs/remote-control.md).
            await pilot.press(*"echo out-$((6*7)); echo err >&2; printf '%s' ", "enter")
            await async_wait_for(lambda: run.board.done, timeout=20, what="command done")
            assert not isinstance(app.screen, ConfirmDialog)
            assert states(run) == {"pi-a": "exited 0", "pi-b": "exited 0"}
            await shot_at(app, pilot, "run-160x48", tmp_path, (160, 48), back=(80, 24))
            shot(app, "run-80x24", tmp_path)
            await pilot.resize_terminal(120, 36)
            text = run.output_text()
            for name in ("pi-a", "pi-b"):
                assert f"{name} │ out-42" in text and f"{name} │ err" in text
            # Only one node's output with enter on its row; `a` shows all again.
            await pilot.press("enter")
            await async_wait_for(lambda: "pi-b │" not in run.output_text(), what="only pi-a")
            await pilot.press("a")
            await async_wait_for(lambda: "pi-b │ out-42" in run.output_text(), what="all output")

            # A long command, cancelled from the console: every node reports `cancelled`.
            await pilot.press("n")
            box = run.query_one("#run-input")
            box.value = "echo started; sleep 30; echo never"  # type: ignore[attr-defined]
            await pilot.press("enter")
            await async_wait_for(lambda: run.output_text().count("started") == 2, timeout=15, what="both started")
            await pilot.press("ctrl+x")
            await async_wait_for(lambda: run.board.done, timeout=20, what="cancelled")
            assert set(states(run).values()) == {"cancelled"}
            assert "never" not in run.output_text()


async def test_hostile_output_is_shown_literally(shared_server: CentralServer) -> None:
    async with ExecutorNode(shared_server.enroll("pi-h")) as node:
        app = make_app(shared_server)
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, node)
            app.open_run({"nodes": [node.bundle["node_id"]]})
            await async_wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen")
            await pilot.pause()
            run = app.screen
            assert isinstance(run, RunScreen)
            run.query_one("#run-input").value = f"printf '%s\\n' '{HOSTILE}'"  # type: ignore[attr-defined]
            await pilot.press("enter")  # one node: no confirmation
            await async_wait_for(lambda: run.board.done, timeout=20, what="done")
            assert f"pi-h │ {HOSTILE_SHOWN}" in run.output_text()
            assert "\x1b" not in run.output_text()


async def test_reboot_reaches_done_and_history_on_the_node_view(shared_server: CentralServer,
                                                                tmp_path: Path) -> None:
    async with ExecutorNode(shared_server.enroll("pi-r")) as node:
        app = make_app(shared_server)
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, node)
            await pilot.press("b")
            table = await confirm_and_wait(app, pilot, "done", "reboot")
            acts = app.screen
            assert isinstance(acts, ActionsScreen) and table.row_count == 1
            assert node.reboots == 1
            assert "1/1 done" in str(acts.query_one("#actions-title", Static).render())
            await shot_at(app, pilot, "actions-160x48", tmp_path, (160, 48), back=(120, 36))
            await pilot.press("escape")
            await pilot.press("enter")
            await async_wait_for(lambda: isinstance(app.screen, NodeScreen), what="node view")
            view = app.screen
            await pilot.press("a")
            node_acts = view.query_one("#node-actions", DataTable)
            await async_wait_for(lambda: node_acts.row_count == 1, what="action history")
            assert node_acts.get_row_at(0)[2].plain == "reboot"
            await pilot.press("x")
            await async_wait_for(lambda: isinstance(app.screen, RunScreen), what="run from the node")
            await pilot.pause()
            run = app.screen
            assert isinstance(run, RunScreen)
            run.query_one("#run-input").value = "echo from-node-view"  # type: ignore[attr-defined]
            await pilot.press("enter")
            await async_wait_for(lambda: run.board.done, timeout=20, what="done")
            await pilot.press("escape")
            await pilot.press("c")
            cmds = view.query_one("#cmd-table", DataTable)
            await async_wait_for(lambda: cmds.row_count == 1, what="command history")
            assert cmds.get_row_at(0)[2].plain == "echo from-node-view"
            await pilot.press("enter")  # a past command: its stored output
            await async_wait_for(lambda: isinstance(app.screen, RunScreen), what="past command")
            past = app.screen
            assert isinstance(past, RunScreen)
            await async_wait_for(lambda: "pi-r │ from-node-view" in past.output_text(), what="stored output")


async def test_maintenance_toggle_and_update_confirmation(shared_server: CentralServer) -> None:
    async with ExecutorNode(shared_server.enroll("pi-u")) as node:
        app = make_app(shared_server)
        async with app.run_test(size=(120, 36)) as pilot:
            fleet = await fleet_ready(app, node)
            nid = node.bundle["node_id"]
            await pilot.press("m")
            await async_wait_for(lambda: app.fleet.nodes[nid].get("state") == "maintenance", what="maintenance on")
            await pilot.press("m")
            await async_wait_for(lambda: app.fleet.nodes[nid].get("state") == "online", what="maintenance off")
            # Update: the confirmation names the release and the running version; "n" sends nothing.
            await pilot.press("u")
            await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="update confirmation")
            dialog = app.screen
            assert isinstance(dialog, ConfirmDialog)
            assert "Update the daemon on pi-u to release" in dialog.title_text and "Running now" in dialog.title_text
            await pilot.press("n")
            await async_wait_for(lambda: app.screen is fleet, what="back to fleet")
            assert shared_server.api("GET", "/api/v1/actions?node=pi-u")[1]["actions"] == []
            await pilot.press("u")
            # The executor node does not implement updates: the action ends `failed`, shown as such.
            table = await confirm_and_wait(app, pilot, "failed", "update")
            assert table.row_count == 1 and table.get_row_at(0)[2].plain == "update"


async def test_demo_actions_recordings_and_refusals(shared_server: CentralServer) -> None:
    async with ExecutorNode(shared_server.enroll("pi-d")) as node:
        await node.send(demo("robot-arm", token="a1b2c3d4a1b2c3d4"))
        await node.send(demo(UNKNOWN_DEMO, token="0000111122223333"))
        # A recorded shell session, opened through the API as `dvic shell` would.
        app = make_app(shared_server)
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, node)
            ws = await app.api.shell(node.bundle["node_id"], 80, 24)
            await ws.send_bytes(b"echo recorded; exit\n")
            async for _ in ws:
                pass  # until the node closes the session
            await pilot.press("enter")
            await async_wait_for(lambda: isinstance(app.screen, NodeScreen), what="node view")
            view = app.screen
            assert isinstance(view, NodeScreen)
            await pilot.press("D")  # first D: to the Demos tab
            demos = view.query_one("#demo-table", DataTable)
            await async_wait_for(lambda: demos.row_count == 2, what="demos")
            demos.move_cursor(row=[demos.get_row_at(i)[0].plain for i in range(2)].index("robot-arm"))
            await pilot.press("D")
            await async_wait_for(lambda: isinstance(app.screen, ChoiceDialog), what="demo action choice")
            await pilot.press("enter")  # the first option: Restart demo
            table = await confirm_and_wait(app, pilot, "done", "restart")
            assert table.row_count == 1
            assert [table.get_row_at(0)[i].plain for i in (2, 3)] == ["restart_demo", "robot-arm"]
            await pilot.press("escape")
            demos.move_cursor(row=[demos.get_row_at(i)[0].plain for i in range(2)].index(UNKNOWN_DEMO))
            await pilot.press("D")
            await async_wait_for(lambda: isinstance(app.screen, ChoiceDialog), what="demo action choice")
            await pilot.press("down", "enter")  # Stop demo
            await confirm_and_wait(app, pilot, "failed", "stop of an unknown demo")

            # Recordings in the admin screen; replay needs a real terminal, said plainly here.
            app.open_admin()
            await async_wait_for(lambda: isinstance(app.screen, AdminScreen), what="admin")
            await pilot.pause()
            await pilot.press("s")
            recs = app.screen.query_one("#session-table", DataTable)
            await async_wait_for(lambda: recs.row_count >= 1, what="recordings")
            nodes = [recs.get_row_at(i)[1].plain for i in range(recs.row_count)]
            assert nodes[0] == "pi-d" and nodes.count("pi-d") == 1  # newest first: the one session above
            await pilot.press("p")
            await async_wait_for(lambda: any("cannot replay" in str(n.message) for n in app._notifications),
                                 what="replay refused in a headless terminal")


async def test_viewer_cannot_act(shared_server: CentralServer) -> None:
    status, body = shared_server.api("POST", "/api/v1/operators", {"name": "vera", "role": "viewer"})
    assert status == 201, body
    async with ExecutorNode(shared_server.enroll("pi-v")) as node:
        app = make_app(shared_server, token=body["token"])
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, node)
            await pilot.press("x")
            await async_wait_for(lambda: isinstance(app.screen, RunScreen), what="run screen")
            await pilot.pause()
            run = app.screen
            run.query_one("#run-input").value = "echo nope"  # type: ignore[attr-defined]
            await pilot.press("enter")
            await async_wait_for(lambda: any("run:" in str(n.message) and "forbidden" in str(n.message)
                                             for n in app._notifications), what="refusal shown")
            assert isinstance(run, RunScreen) and run.command_id is None
