"""The console driven with Textual's pilot against the real server, its nodes speaking the real protocol.

Tests that look at the whole fleet (its rows, order, counts) or restart the server have a server of
their own; the others share the module's and look only at their own nodes.
"""

from __future__ import annotations

import re
from pathlib import Path

from textual.widgets import DataTable, Static
from textual.widgets.data_table import ColumnKey, RowKey

from tests.support.nodes import (
    HOSTILE,
    HOSTILE_SHOWN,
    KeepAliveFleet,
    connected,
    metrics,
    offline_node,
    online_node,
    report_failed,
)
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import cell, fleet_of, log_text, make_app, open_node, row_ids, screen_text, to_row
from tui.console.screens.admin import AdminScreen
from tui.console.screens.fleet import FILL_STEP, FleetScreen
from tui.console.screens.logs import LogsScreen
from tui.console.screens.node import NodeScreen
from tui.console.widgets.banner import ConnectionBanner
from tui.console.widgets.fleet_table import FleetTable
from tui.console.widgets.log_view import LogView


def summary(fleet: FleetScreen) -> str:
    return str(fleet.query_one("#summary", Static).render())


async def test_fleet_lives_filters_and_sorts(central_server: CentralServer) -> None:
    server = central_server
    b = await offline_node(server, "desk-b", group="hall-b")
    async with online_node(server, "pi-a") as a:
        app = make_app(server)
        async with app.run_test(size=(120, 30)) as pilot:
            fleet, table = fleet_of(app)
            await async_wait_for(lambda: table.row_count == 2, what="two rows")
            a_id, b_id = a.bundle["node_id"], b["node_id"]
            assert fleet.shown_ids() == [b_id, a_id]  # sorted by name
            assert "1 online" in summary(fleet) and "1 offline" in summary(fleet)

            # Live: a metric change updates the cell in place, a new node adds a row.
            await a.send(metrics(cpu=97.0, mem=10.0, disk=95.0, temp=85.0))
            await async_wait_for(lambda: cell(table, a_id, "cpu").startswith(" 97%"), what="cpu update")
            assert "⚠" in cell(table, a_id, "name")  # hot and disk full: an alert
            async with online_node(server, "pi-c") as c:
                c_id = c.bundle["node_id"]
                await async_wait_for(lambda: table.row_count == 3, what="new node row")
                await async_wait_for(lambda: "1 alerts" in summary(fleet), what="alerts")

                # `/` filter by typing, Escape clears.
                await pilot.press("slash", "p", "i")
                await async_wait_for(lambda: table.row_count == 2, what="filtered rows")
                assert set(fleet.shown_ids()) == {a_id, c_id}
                await pilot.press("enter", "escape")
                await async_wait_for(lambda: table.row_count == 3, what="filter cleared")
                # Keys typed into the filter are text, not commands (q would quit, ? open help).
                await pilot.press("slash", "q", "question_mark")
                assert fleet.query_one("#filter").value == "q?" and app.is_running and app.screen is fleet
                await pilot.press("escape")

                # Quick filters: state, then group.
                await pilot.press("t")
                assert fleet.filter.state == "online"
                await async_wait_for(lambda: set(fleet.shown_ids()) == {a_id, c_id}, what="online only")
                await pilot.press("escape", "g", "g")  # groups are ["hall-a", "hall-b"]
                assert fleet.filter.group == "hall-b"
                assert fleet.shown_ids() == [b_id]
                await pilot.press("escape")

                # Sort: next column is state (online before offline), then reverse.
                await pilot.press("s")
                assert fleet.sort_column == "state"
                assert fleet.shown_ids()[-1] == b_id
                await pilot.press("S")
                assert fleet.shown_ids()[0] == b_id

                # A node that goes offline moves between quick-filter views live.
                await pilot.press("escape", "t")
                await a.close()
                await async_wait_for(lambda: fleet.shown_ids() == [c_id], what="a left the online view")


async def test_hostile_node_text_is_literal(shared_server: CentralServer) -> None:
    server = shared_server
    # Names and groups are the admin's, and the server takes only plain ones; what the node says
    # itself (facts, daemon version, log lines and units) is shown as text, escapes removed.
    status, body = server.api("POST", "/api/v1/nodes", {"name": HOSTILE, "kind": "desktop", "group": ""})
    assert status == 400 and body["error"]["code"] == "bad_name"
    async with online_node(server, "evil", group="hostile", model=HOSTILE, daemon_version=HOSTILE) as evil:
        await evil.send_logs([evil.line(HOSTILE, level="ERROR", unit="[red]u[/red]"),
                              evil.line("two\nlines", unit="[red]u[/red]")])
        app = make_app(server)
        async with app.run_test(size=(160, 48)) as pilot:
            nid = evil.bundle["node_id"]
            table = await to_row(app, nid)
            await async_wait_for(lambda: cell(table, nid, "version") == HOSTILE_SHOWN.strip(), what="version cell")
            node = await open_node(app, pilot, nid)
            await async_wait_for(lambda: HOSTILE_SHOWN in str(node.query_one("#facts", Static).render()),
                                 what="facts")
            await pilot.press("l")
            await async_wait_for(lambda: isinstance(app.screen, LogsScreen), what="logs screen")
            view = app.screen.query_one(LogView)
            await async_wait_for(lambda: HOSTILE_SHOWN in log_text(view), what="hostile line")
            text = log_text(view)
            assert "[red]u[/red]" in text and "\x1b" not in text and "\x07" not in text
            shown = screen_text(app)
            assert "[link=http://x]x[/link]" in shown
            assert "\x1b" not in app.export_screenshot()


async def test_logs_follow_sticks_unless_scrolled_up(shared_server: CentralServer) -> None:
    async with online_node(shared_server, "pi-follow") as n:
        await n.send_logs([n.line(f"old {i}") for i in range(50)])
        app = make_app(shared_server)
        async with app.run_test(size=(80, 24)) as pilot:
            await async_wait_for(lambda: app.connected, what="connected")
            await to_row(app, n.bundle["node_id"])
            await pilot.press("L")  # the node's logs
            await async_wait_for(lambda: isinstance(app.screen, LogsScreen), what="logs screen")
            view = app.screen.query_one(LogView)
            await async_wait_for(lambda: len(view.lines) == 50, what="history")
            await async_wait_for(lambda: n.bundle["node_id"] in app.feed.subscription, what="subscribed")
            await pilot.pause()
            assert view.at_bottom
            await n.send_logs([n.line("new 1", level="WARNING")])
            await async_wait_for(lambda: "new 1" in log_text(view), what="live line")
            await pilot.pause()
            assert view.at_bottom  # followed
            view.scroll_home(animate=False, immediate=True)
            await pilot.pause()
            await n.send_logs([n.line("new 2", level="WARNING")])
            await async_wait_for(lambda: "new 2" in log_text(view), what="second live line")
            await pilot.pause()
            assert view.scroll_y == 0 and view.behind == 1  # stayed where the user was
            await async_wait_for(lambda: "1 new below" in str(app.screen.query_one("#logs-status").render()),
                                 what="behind indicator")
            await pilot.press("end")
            await pilot.pause()
            assert view.at_bottom and view.behind == 0

            # Level filter (client side at once, history refetched server side).
            await pilot.press("v", "v")
            assert view.min_level == "WARNING"
            await async_wait_for(lambda: "old 1" not in log_text(view) and "new 2" in log_text(view),
                                 what="level filter")
            # Server-side search.
            await pilot.press("v", "v", "v")
            assert view.min_level == "DEBUG"
            await pilot.press("slash")
            for ch in "old 4":
                await pilot.press("space" if ch == " " else ch)
            await pilot.press("enter")
            await async_wait_for(lambda: app.screen.query_text == "old 4", what="search set")
            await async_wait_for(lambda: "old 4" in log_text(view) and "old 3" not in log_text(view),
                                 what="search result")


async def test_viewer_sees_admin_required(shared_server: CentralServer) -> None:
    status, body = shared_server.api("POST", "/api/v1/operators", {"name": "val", "role": "viewer"})
    assert status == 201, body
    app = make_app(shared_server, body["token"])
    async with app.run_test(size=(80, 24)) as pilot:
        await async_wait_for(lambda: app.connected, what="connected")
        await pilot.press("a")
        await async_wait_for(lambda: isinstance(app.screen, AdminScreen), what="admin screen")
        await async_wait_for(lambda: "Admin role required" in str(app.screen.query_one("#admin-status").render()),
                             what="message")


async def test_connection_loss_banner_and_recovery(central_server: CentralServer) -> None:
    server = central_server
    comes_back, stays_away = server.enroll("pi-back"), server.enroll("pi-away")
    app = make_app(server)
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.screen.query_one(ConnectionBanner)
        table = app.screen.query_one(DataTable)
        async with connected(comes_back), connected(stays_away):
            await async_wait_for(lambda: app.connected, what="connected")
            await async_wait_for(lambda: table.row_count == 2, what="rows")
            assert not banner.has_class("-down")
            server.kill()  # a crash: the quickest way down, and the harshest for clients
            await async_wait_for(lambda: banner.has_class("-down"), what="banner")
            assert "Connection to the server lost" in str(banner.render())
        # While the console is away one node comes back and reports itself failed; the other does
        # not come back. Connected again, the console shows both from the server's fresh snapshot.
        server.start()
        async with connected(comes_back) as node:
            await report_failed(node, "camera unplugged")
            await async_wait_for(lambda: server.node("pi-back")["state"] == "failed", what="failed on the server")
            await pilot.press("ctrl+r")  # skip the back-off wait; it would also retry by itself
            await async_wait_for(lambda: not banner.has_class("-down"), timeout=20, what="reconnected")
            await async_wait_for(lambda: "failed" in cell(table, comes_back["node_id"], "state"),
                                 what="the failed node in the snapshot")
            assert "offline" in cell(table, stays_away["node_id"], "state")  # nobody connected it since


async def test_bad_token_says_not_authorized(shared_server: CentralServer) -> None:
    app = make_app(shared_server, "dvo_not-a-token")
    async with app.run_test(size=(80, 24)):
        banner = app.screen.query_one(ConnectionBanner)
        assert "Connecting" in str(banner.render())
        await async_wait_for(lambda: "Not authorized" in str(banner.render()), what="banner")


async def test_a_changed_cell_is_repainted_alone(quiet_server: CentralServer, tmp_path: Path) -> None:
    async with KeepAliveFleet(quiet_server, tmp_path / "fleet") as fleet:
        nodes = await fleet.enroll(30, prefix="n")
        await fleet.report(nodes, cpu=12.0, temp=48.0)
        app = make_app(quiet_server)
        async with app.run_test(size=(160, 40)) as pilot:
            table = app.screen.query_one(FleetTable)
            await async_wait_for(lambda: table.row_count == 30, what="rows")
            assert table.in_place  # this Textual has the internals the fast path needs
            row = RowKey(nodes[3].node_id)

            def painted() -> bool:  # the row's cpu cell is in the render cache, keyed on the current count
                return any(k[0] == row and k[1] == ColumnKey("cpu") and k[6] == table._update_count
                           for k in table._cell_render_cache.keys())

            await pilot.pause()  # the table's size settles (its resize bumps the count once)
            table.refresh()  # a full paint at the current count
            await async_wait_for(painted, what="the row painted")
            before = table._update_count  # every render cache of the table is keyed on it
            await fleet.report([nodes[3]], cpu=87.0, temp=48.0)
            await async_wait_for(lambda: cell(table, nodes[3].node_id, "cpu").startswith(" 87%"), what="cpu update")
            assert table._update_count == before  # no table-wide invalidation: only that row is drawn again
            await async_wait_for(lambda: " 87%" in screen_text(app), what="the new value painted")
            # A sort still moves rows (and redraws them all): busiest first puts the changed node on top.
            await pilot.press("s", "s", "s")
            await async_wait_for(lambda: app.screen.sort_column == "cpu", what="sorted by cpu")
            await async_wait_for(lambda: app.screen.shown_ids()[0] == nodes[3].node_id, what="busiest first")
            assert table._update_count > before


# More than two fill steps and more updates than one frame applies (FLUSH_STEP, 500): the console's
# scale paths. Its figures at 2,000 nodes are bench/console.py's.
MANY = 2 * FILL_STEP + 100


async def test_hundreds_of_nodes_update_in_place(quiet_server: CentralServer, tmp_path: Path) -> None:
    async with KeepAliveFleet(quiet_server, tmp_path / "fleet") as fleet:
        nodes = await fleet.enroll(MANY, prefix="n")
        ids = [n.node_id for n in nodes]
        await fleet.report(nodes, cpu=12.0, temp=30.0)
        app = make_app(quiet_server)
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.screen.query_one(DataTable)
            # The first screenful comes first, sorted; the rest follow in steps, then one sort.
            await async_wait_for(lambda: table.row_count > 0, timeout=30, what="first rows")
            assert app.screen.shown_ids()[:40] == ids[:40]
            await async_wait_for(lambda: table.row_count == MANY and not app.screen._backlog, timeout=30,
                                 what=f"{MANY} rows")
            order = app.screen.shown_ids()
            assert order == ids  # by name
            assert table.cursor_row == 0
            await fleet.report(nodes[:200], cpu=55.0, temp=30.0)
            await async_wait_for(lambda: cell(table, ids[10], "cpu").startswith(" 55%"), what="visible updates")
            # Rows out of sight are brought up to date when they scroll into view, not before.
            await async_wait_for(lambda: ids[199] in app.screen._stale, what="off-screen row marked stale")
            assert not cell(table, ids[199], "cpu").startswith(" 55%")
            table.move_cursor(row=199)
            await async_wait_for(lambda: cell(table, ids[199], "cpu").startswith(" 55%"),
                                 what="row shown when in view")
            await pilot.pause()
            assert app.screen.shown_ids() == order and table.row_count == MANY
            # A sort on a live value uses every row's current value.
            await pilot.press("s", "s", "s")  # name -> state -> seen -> cpu (busiest first)
            await async_wait_for(lambda: app.screen.sort_column == "cpu", what="sorted by cpu")
            await async_wait_for(lambda: set(app.screen.shown_ids()[:200]) == set(ids[:200]),
                                 what="the 200 busy nodes first")
            # A burst (every node at once) is applied a share per frame; all of it lands.
            await pilot.press("s", "S")  # sort by memory, least first: the rows in view are any 40
            await fleet.report(nodes, cpu=11.0, temp=30.0)
            await async_wait_for(lambda: all(n["metrics"].get("cpu") == 11.0 for n in app.fleet.nodes.values()),
                                 timeout=30, what="burst in")
            in_view = app.screen.shown_ids()[:40]
            await async_wait_for(lambda: all(cell(table, nid, "cpu").startswith(" 11%") for nid in in_view),
                                 what="every row in view drawn")


async def test_command_palette_opens_a_node(shared_server: CentralServer) -> None:
    async with online_node(shared_server, "pi-palette"), online_node(shared_server, "desk-palette") as desk:
        app = make_app(shared_server)
        async with app.run_test(size=(80, 24)) as pilot:
            await to_row(app, desk.bundle["node_id"])
            await pilot.press("ctrl+p")
            for ch in "open node desk-pal":
                await pilot.press({" ": "space", "-": "minus"}.get(ch, ch))
            await pilot.pause(0.3)
            await pilot.press("enter")
            await async_wait_for(lambda: isinstance(app.screen, NodeScreen), what="node screen")
            assert app.fleet.nodes[app.screen.node_id]["name"] == "desk-palette"
            await pilot.press("question_mark")
            await async_wait_for(lambda: "Maint." in screen_text(app) and "Everywhere" in screen_text(app),
                                 what="help")


async def test_odd_stream_messages_lose_nothing(shared_server: CentralServer) -> None:
    """Messages of the right shape with wrong insides are dropped one by one, the feed goes on.
    (Frames that are not a JSON object at all are the client core's: its decoder's own tests.)"""
    async with online_node(shared_server, "pi-odd") as n:
        nid = n.bundle["node_id"]
        app = make_app(shared_server)
        async with app.run_test(size=(80, 24)):
            table = await to_row(app, nid)
            await async_wait_for(lambda: app.connected, what="connected")
            for message in ({"type": "node", "node": {"id": 5}},
                            {"type": "node", "node": {"id": "odd", "name": "odd", "metrics": [1], "demos": 3}},
                            {"type": "logs", "node": "x", "lines": "nope"}, {"type": "event", "event": []},
                            {"type": "mystery"}):
                app.feed._handle(message)  # as the stream hands each message over
            await n.send(metrics(cpu=66.0))
            await async_wait_for(lambda: cell(table, nid, "cpu").startswith(" 66%"), what="valid update after the odd ones")
            assert app.connected and "odd" in row_ids(table)  # the odd-but-valid node shows, with empty metrics
            assert cell(table, "odd", "cpu").startswith("   -")


async def test_a_flood_of_lines_is_kept_but_drawn_in_part(shared_server: CentralServer) -> None:
    async with online_node(shared_server, "chatty") as n:
        app = make_app(shared_server)
        async with app.run_test(size=(80, 24)) as pilot:
            await async_wait_for(lambda: app.connected, what="connected")
            await pilot.press("l")  # every node's logs
            await async_wait_for(lambda: isinstance(app.screen, LogsScreen), what="logs screen")
            view = app.screen.query_one(LogView)
            await async_wait_for(lambda: "*" in app.feed.subscription, what="subscribed")
            await pilot.pause()
            history = len(view.lines_buffer)
            # Two full batches (the protocol's most lines a frame) back to back, acks read after.
            for first in (0, 500):
                await n.send({"type": "logs", "lines": [n.line(f"line {i}") for i in range(first, first + 500)]})
            assert (await n.recv())["type"] == "ack"
            await async_wait_for(lambda: "line 999" in log_text(view), what="newest line drawn")
            text = log_text(view)
            skipped = [int(count) for count in re.findall(r"(\d+) lines not drawn", text)]
            drawn = len(re.findall(r"line \d+\b", text))
            assert skipped and sum(skipped) + drawn == 1000  # each cut round says how many it left out
            assert len(view.lines_buffer) == history + 1000 and "line 0\n" not in text + "\n"
