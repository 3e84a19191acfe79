"""The console's Demos view, deploy and rollback dialogs, deployment progress and the node view's
Demos tab (issue 14), against the real server and a real daemon running examples/hello-demo."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from textual.widgets import DataTable, OptionList, Static

from tests.support.cli import run_dvic, server_env
from tests.support.daemon import online_daemon
from tests.support.demos import kill_demos
from tests.support.server import REPO, CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import cell, make_app, open_node, row_ids, screen_text, shot, shot_at, to_row
from tui.console.app import DvicApp
from tui.console.screens.demos import DemosScreen, DeployDialog, DeploymentScreen
from tui.console.screens.dialogs import ConfirmDialog
from tui.console.screens.node import SUPERVISED, NodeScreen
from tui.console.widgets.demo_table import DemoTable

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "hello-demo"
NODE = "pi-demo"


async def publish(server: CentralServer, dvic_env: dict[str, str], *extra: str) -> None:
    res = await run_dvic(server_env(dvic_env, server), "demo", "publish", str(EXAMPLE), *extra, limit=60)
    assert res.code == 0, res.err


def demos_view(app: DvicApp) -> DemosScreen:
    assert isinstance(app.screen, DemosScreen)
    return app.screen


async def deploy_dialog(app: DvicApp, release: str | None, target: str) -> DeployDialog:
    """Waits for the dialog, highlights `release` (a deploy) and `target` and focuses the targets."""
    await async_wait_for(lambda: isinstance(app.screen, DeployDialog), what="the deploy dialog")
    dialog = app.screen
    assert isinstance(dialog, DeployDialog)
    if release is not None:
        assert dialog.releases is not None and release in dialog.releases, dialog.releases
        dialog.query_one("#deploy-releases", OptionList).highlighted = dialog.releases.index(release)
    labels = [t.label for t in dialog.targets]
    assert target in labels, labels
    targets = dialog.query_one("#deploy-targets", OptionList)
    targets.highlighted = labels.index(target)
    targets.focus()
    return dialog


async def progress_until(app: DvicApp, node_id: str, state: str) -> DeploymentScreen:
    await async_wait_for(lambda: isinstance(app.screen, DeploymentScreen), what="the deployment's progress")
    page = app.screen
    assert isinstance(page, DeploymentScreen)
    table = page.query_one("#deployment-nodes", DataTable)

    def reached() -> bool:
        shown = cell(table, node_id, "state") if node_id in row_ids(table) else ""
        assert not any(bad in shown for bad in ("failed", "rolled_back", "lost")), page.deployment
        return state in shown

    try:
        await async_wait_for(reached, timeout=60, what=f"{state} in the progress rows")
    except Exception:
        print(screen_text(app), page.deployment, page.trail)
        raise
    return page


def error_of(dialog: DeployDialog) -> str:
    return str(dialog.query_one("#deploy-error", Static).render())


async def test_demos_view_deploy_progress_rollback_and_node_tab(central_server: CentralServer, dvic_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    await publish(central_server, dvic_env)
    await publish(central_server, dvic_env, "--version", "1.1.0")
    home = tmp_path / NODE
    try:
        with online_daemon(central_server, home, group="hall-a") as (node_id, _daemon):
            app = make_app(central_server)
            async with app.run_test(size=(120, 40)) as pilot:
                await to_row(app, node_id)
                await pilot.press("d")
                await async_wait_for(lambda: isinstance(app.screen, DemosScreen) and app.screen.loaded,
                                     what="the demos view, read")
                view = demos_view(app)
                table = view.query_one(DemoTable)
                assert table.row_count == 0 and "No supervised demo yet" in screen_text(app)

                # d: deploy 1.0.0 to the node's group (a group is confirmed); its progress, live.
                await pilot.press("d")
                await deploy_dialog(app, "hello-demo@1.0.0", "group hall-a")
                await shot_at(app, pilot, "demos-deploy-80x24", tmp_path, (80, 24), (120, 40))
                await pilot.press("enter")
                await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the group is confirmed")
                await pilot.press("y")
                page = await progress_until(app, node_id, "healthy")
                assert {"starting", "healthy"} <= set(page.trail[node_id]), page.trail
                shot(app, "demos-deployment-120x40", tmp_path)

                # Back in the view, the row came live: healthy, 1.0.0, no restart.
                await pilot.press("escape")
                key = f"{node_id}/hello-demo"
                await async_wait_for(lambda: key in row_ids(table) and cell(table, key, "state") == "● healthy",
                                     timeout=30, what="hello-demo healthy in the view")
                assert [cell(table, key, c) for c in ("demo", "node", "version", "restarts")] == [
                    "hello-demo", NODE, "1.0.0", "0"]
                # kill -9: the daemon restarts it; the frame changes the row (no read: no deployment ended).
                status, body = central_server.api("GET", "/api/v1/demos/status?demo=hello-demo")
                assert status == 200, body
                os.kill(int(body["status"][0]["pid"]), signal.SIGKILL)
                await async_wait_for(lambda: cell(table, key, "restarts") == "1", timeout=15,
                                     what="the restart counted live")
                await async_wait_for(lambda: cell(table, key, "state") == "● healthy", timeout=30,
                                     what="healthy again")
                shot(app, "demos-120x40", tmp_path)
                await shot_at(app, pilot, "demos-80x24", tmp_path, (80, 24), (120, 40))

                # 1.1.0 to the group (a deployment to the node itself would beat the group's from now on).
                await pilot.press("d")
                await deploy_dialog(app, "hello-demo@1.1.0", "group hall-a")
                await pilot.press("enter")
                await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the group is confirmed")
                await pilot.press("y")
                await progress_until(app, node_id, "healthy")
                await pilot.press("escape")
                await async_wait_for(lambda: cell(table, key, "version") == "1.1.0"
                                     and cell(table, key, "state") == "● healthy", timeout=30, what="1.1.0 healthy")

                # b: roll the group back to 1.0.0.
                await pilot.press("b")
                await deploy_dialog(app, None, "group hall-a")
                await pilot.press("enter")
                await async_wait_for(lambda: isinstance(app.screen, ConfirmDialog), what="the rollback confirmed")
                await pilot.press("y")
                page = await progress_until(app, node_id, "healthy")
                assert page.deployment["kind"] == "rollback" and page.deployment["version"] == "1.0.0"
                await pilot.press("escape")
                await async_wait_for(lambda: cell(table, key, "version") == "1.0.0"
                                     and cell(table, key, "state") == "● healthy", timeout=30, what="1.0.0 again")

                # The node view's Demos tab: the supervised demo with the same columns.
                await pilot.press("escape")
                node_page = await open_node(app, pilot, node_id)
                await pilot.press("d")
                demo_table = node_page.query_one("#demo-table")
                await async_wait_for(lambda: SUPERVISED + "hello-demo" in row_ids(demo_table),  # type: ignore[arg-type]
                                     what="the supervised demo in the node view")
                row = SUPERVISED + "hello-demo"
                assert [cell(demo_table, row, c) for c in ("name", "state", "version")] == [  # type: ignore[arg-type]
                    "hello-demo", "● healthy", "1.0.0"]
                assert isinstance(app.screen, NodeScreen)
                await shot_at(app, pilot, "node-demos-80x24", tmp_path, (80, 24), (120, 40))
    finally:
        kill_demos(home / f"state-{NODE}")


async def test_a_viewer_is_refused_in_the_dialog_with_the_servers_message(central_server: CentralServer,
                                                                          dvic_env: dict[str, str]) -> None:
    await publish(central_server, dvic_env)
    status, body = central_server.api("POST", "/api/v1/operators", {"name": "vera", "role": "viewer"})
    assert status == 201, body
    central_server.enroll("pi-far")
    app = make_app(central_server, token=body["token"])
    async with app.run_test(size=(100, 30)) as pilot:
        await async_wait_for(lambda: app.connected and app.fleet.nodes, what="the fleet")
        await pilot.press("d")
        await async_wait_for(lambda: isinstance(app.screen, DemosScreen) and app.screen.loaded, what="demos view")
        await pilot.press("d")
        dialog = await deploy_dialog(app, "hello-demo@1.0.0", "node pi-far")
        await pilot.press("enter")
        await async_wait_for(lambda: "forbidden" in error_of(dialog), what="the refusal in the dialog")
        assert "this needs the operator role; 'vera' is viewer" in error_of(dialog)
        assert isinstance(app.screen, DeployDialog)
        await pilot.press("escape")
        await async_wait_for(lambda: isinstance(app.screen, DemosScreen), what="back to the view")
    status, deployments = central_server.api("GET", "/api/v1/deployments")
    assert status == 200 and deployments["deployments"] == []
