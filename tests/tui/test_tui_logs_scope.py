"""The console's logs screen asks the real server for its scope (a group, a demo), as `LogFilter.query`
says: its history holds the scope's lines even when other nodes or demos wrote many more since."""

from __future__ import annotations

from tests.support.fake_node import FakeNode
from tests.support.nodes import DEMO_TOKEN, online_node
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import fleet_ready, log_text, make_app
from tui.console.screens.logs import HISTORY, LogsScreen
from tui.console.widgets.log_view import LogView

OTHER_DEMO = "ffffeeeeddddcccc"


async def more_than_a_page(node: FakeNode, text: str) -> None:
    for start in range(0, HISTORY + 100, 100):  # a node sends at most 500 lines a batch
        await node.send_logs([node.line(f"{text} {i}", demo=OTHER_DEMO) for i in range(start, start + 100)])


async def test_group_and_demo_history_come_from_the_server(central_server: CentralServer) -> None:
    async with online_node(central_server, "pi-hall", group="hall-a") as hall, \
            online_node(central_server, "pi-lab", group="lab") as lab:
        await hall.send_logs([hall.line(f"hall line {i}", demo=DEMO_TOKEN) for i in range(3)])
        await more_than_a_page(lab, "lab line")  # another group's node wrote more since
        app = make_app(central_server)
        async with app.run_test(size=(120, 36)) as pilot:
            await fleet_ready(app, hall, lab)
            app.open_logs(None, group="hall-a")
            await async_wait_for(lambda: isinstance(app.screen, LogsScreen), what="group logs")
            await pilot.pause()
            view = app.screen.query_one(LogView)
            await async_wait_for(lambda: "hall line 0" in log_text(view), what="the group's older lines")
            assert "lab line" not in log_text(view)
            await pilot.press("escape")
            await more_than_a_page(hall, "other demo")  # another demo of the same node wrote more since
            app.open_logs(hall.bundle["node_id"], demo=DEMO_TOKEN)
            await async_wait_for(lambda: isinstance(app.screen, LogsScreen), what="demo logs")
            await pilot.pause()
            view = app.screen.query_one(LogView)
            await async_wait_for(lambda: "hall line 2" in log_text(view), what="the demo's lines")
            assert "other demo" not in log_text(view)
