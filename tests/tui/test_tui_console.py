"""The console driven with Textual's pilot against a server speaking the operator API."""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable, Static
from textual.widgets.data_table import ColumnKey, RowKey

from tests.tui.tuifake import FakeCentral, wait_for
from tui.api.config import Settings
from tui.console.app import DvicApp
from tui.console.screens.admin import AdminScreen
from tui.console.screens.fleet import FleetScreen
from tui.console.screens.logs import LogsScreen
from tui.console.screens.node import NodeScreen
from tui.console.widgets.banner import ConnectionBanner
from tui.console.widgets.fleet_table import FleetTable
from tui.console.widgets.log_view import LogView

HOSTILE = "[link=http://x]x[/link] [/b] \x1b]52;c;aGk=\x07 \x1b[2J end"
HOSTILE_SHOWN = "[link=http://x]x[/link] [/b]   end"


def make_app(server: FakeCentral, token: str | None = None) -> DvicApp:
    return DvicApp(Settings(server.url, token or server.admin_token, None))


def cell(table: DataTable[Any], row: str, col: str) -> str:
    return table.get_cell(row, col).plain


def log_text(view: LogView) -> str:
    return "\n".join("".join(seg.text for seg in strip) for strip in view.lines)


def screen_text(app: DvicApp) -> str:
    """What the user sees, as plain text (from the SVG screenshot's text runs)."""
    import html
    import re

    svg = app.export_screenshot()
    return html.unescape(" ".join(re.findall(r">([^<>]+)</text>", svg))).replace("\xa0", " ")


async def test_fleet_lives_filters_and_sorts(fake: FakeCentral) -> None:
    a = fake.add_node("pi-a", kind="raspberry", group="hall-a")
    b = fake.add_node("desk-b", group="hall-b", state="offline")
    app = make_app(fake)
    async with app.run_test(size=(120, 30)) as pilot:
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        table = fleet.query_one(DataTable)
        await wait_for(lambda: table.row_count == 2, what="two rows")
        assert fleet.shown_ids() == [b["id"], a["id"]]  # sorted by name
        summary = str(fleet.query_one("#summary", Static).render())
        assert "1 online" in summary and "1 offline" in summary

        # Live: a metric change updates the cell in place, a new node adds a row.
        await fake.update_node(a["id"], metrics={"cpu": 97.0, "mem": 10.0, "disk": 95.0, "temp": 85.0})
        await wait_for(lambda: cell(table, a["id"], "cpu").startswith(" 97%"), what="cpu update")
        assert "⚠" in cell(table, a["id"], "name")  # hot and disk full: an alert
        c = fake.add_node("pi-c", kind="raspberry", group="hall-a")
        await fake.update_node(c["id"])
        await wait_for(lambda: table.row_count == 3, what="new node row")
        await wait_for(lambda: "1 alerts" in str(fleet.query_one("#summary", Static).render()), what="alerts")

        # `/` filter by typing, Escape clears.
        await pilot.press("slash", "p", "i")
        await wait_for(lambda: table.row_count == 2, what="filtered rows")
        assert set(fleet.shown_ids()) == {a["id"], c["id"]}
        await pilot.press("enter", "escape")
        await wait_for(lambda: table.row_count == 3, what="filter cleared")
        # Keys typed into the filter are text, not commands (q would quit, ? open help).
        await pilot.press("slash", "q", "question_mark")
        assert fleet.query_one("#filter").value == "q?" and app.is_running and app.screen is fleet
        await pilot.press("escape")

        # Quick filters: state, then group.
        await pilot.press("t")
        assert fleet.filter.state == "online"
        await wait_for(lambda: set(fleet.shown_ids()) == {a["id"], c["id"]}, what="online only")
        await pilot.press("escape", "g", "g")  # none -> "hall-a"? groups are ["hall-a", "hall-b"]
        assert fleet.filter.group == "hall-b"
        assert fleet.shown_ids() == [b["id"]]
        await pilot.press("escape")

        # Sort: next column is state (online before offline), then reverse.
        await pilot.press("s")
        assert fleet.sort_column == "state"
        assert fleet.shown_ids()[-1] == b["id"]
        await pilot.press("S")
        assert fleet.shown_ids()[0] == b["id"]

        # A node that goes offline moves between quick-filter views live.
        await pilot.press("escape", "t")
        await fake.update_node(a["id"], state="offline")
        await wait_for(lambda: fleet.shown_ids() == [c["id"]], what="a left the online view")


async def test_hostile_node_text_is_literal(fake: FakeCentral) -> None:
    evil = fake.add_node(HOSTILE, group="[b]grp[/b]")
    evil["facts"]["model"] = HOSTILE
    app = make_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.screen.query_one(DataTable)
        await wait_for(lambda: table.row_count == 1, what="row")
        assert cell(table, evil["id"], "name") == HOSTILE_SHOWN
        assert cell(table, evil["id"], "group") == "[b]grp[/b]"
        await fake.add_logs(evil["id"], [("ERROR", HOSTILE), ("INFO", "two\nlines")], unit="[red]u[/red]")
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, NodeScreen), what="node screen")
        node = app.screen
        await wait_for(lambda: HOSTILE_SHOWN in str(node.query_one("#facts", Static).render()), what="facts")
        await pilot.press("l")
        await wait_for(lambda: isinstance(app.screen, LogsScreen), what="logs screen")
        view = app.screen.query_one(LogView)
        await wait_for(lambda: HOSTILE_SHOWN in log_text(view), what="hostile line")
        text = log_text(view)
        assert "[red]u[/red]" in text and "\x1b" not in text and "\x07" not in text
        shown = screen_text(app)
        assert "[link=http://x]x[/link]" in shown
        assert "\x1b" not in app.export_screenshot()


async def test_logs_follow_sticks_unless_scrolled_up(fake: FakeCentral) -> None:
    n = fake.add_node("pi-42")
    await fake.add_logs(n["id"], [("INFO", f"old {i}") for i in range(50)])
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.connected, what="connected")
        await pilot.press("l")
        await wait_for(lambda: isinstance(app.screen, LogsScreen), what="logs screen")
        view = app.screen.query_one(LogView)
        await wait_for(lambda: len(view.lines) == 50, what="history")
        await wait_for(lambda: "*" in fake.streams.get(next(iter(fake.streams)), []), what="subscribed")
        await pilot.pause()
        assert view.at_bottom
        await fake.add_logs(n["id"], [("WARNING", "new 1")])
        await wait_for(lambda: "new 1" in log_text(view), what="live line")
        await pilot.pause()
        assert view.at_bottom  # followed
        view.scroll_home(animate=False, immediate=True)
        await pilot.pause()
        await fake.add_logs(n["id"], [("WARNING", "new 2")])
        await wait_for(lambda: "new 2" in log_text(view), what="second live line")
        await pilot.pause()
        assert view.scroll_y == 0 and view.behind == 1  # stayed where the user was
        await wait_for(lambda: "1 new below" in str(app.screen.query_one("#logs-status").render()),
                       what="behind indicator")
        await pilot.press("end")
        await pilot.pause()
        assert view.at_bottom and view.behind == 0

        # Level filter (client side at once, history refetched server side).
        await pilot.press("v", "v")
        assert view.min_level == "WARNING"
        await wait_for(lambda: "old 1" not in log_text(view) and "new 2" in log_text(view), what="level filter")
        # Server-side search.
        await pilot.press("v", "v", "v")
        assert view.min_level == "DEBUG"
        await pilot.press("slash")
        for ch in "old 4":
            await pilot.press("space" if ch == " " else ch)
        await pilot.press("enter")
        await wait_for(lambda: app.screen.query_text == "old 4", what="search set")
        await wait_for(lambda: "old 4" in log_text(view) and "old 3" not in log_text(view), what="search result")


async def test_viewer_sees_admin_required(fake: FakeCentral) -> None:
    token = fake.add_operator("val", "viewer")
    app = make_app(fake, token)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.connected, what="connected")
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, AdminScreen), what="admin screen")
        await wait_for(lambda: "Admin role required" in str(app.screen.query_one("#admin-status").render()),
                       what="message")


async def test_connection_loss_banner_and_recovery(fake: FakeCentral) -> None:
    n = fake.add_node("pi-42")
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.screen.query_one(ConnectionBanner)
        await wait_for(lambda: app.connected, what="connected")
        assert not banner.has_class("-down")
        port = fake.port
        await fake.stop()
        await wait_for(lambda: banner.has_class("-down"), what="banner")
        assert "Connection to the server lost" in str(banner.render())
        # While down, a node changes; after the server is back the console shows it without a key press.
        fake.nodes[n["id"]]["state"] = "failed"
        await fake.start(port=port)
        await pilot.press("ctrl+r")  # skip the back-off wait
        await wait_for(lambda: not banner.has_class("-down"), within=20, what="reconnected")
        table = app.screen.query_one(DataTable)
        await wait_for(lambda: "failed" in cell(table, n["id"], "state"), what="snapshot after reconnect")


async def test_bad_token_says_not_authorized(fake: FakeCentral) -> None:
    app = make_app(fake, "nope")
    async with app.run_test(size=(80, 24)):
        banner = app.screen.query_one(ConnectionBanner)
        assert "Connecting" in str(banner.render())
        await wait_for(lambda: "Not authorized" in str(banner.render()), what="banner")


async def test_a_changed_cell_is_repainted_alone(fake: FakeCentral) -> None:
    nodes = [fake.add_node(f"n{i:02d}") for i in range(30)]
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        table = app.screen.query_one(FleetTable)
        await wait_for(lambda: table.row_count == 30, what="rows")
        assert table.in_place  # this Textual has the internals the fast path needs
        row = RowKey(nodes[3]["id"])

        def painted() -> bool:  # the row's cpu cell is in the render cache, keyed on the current count
            return any(k[0] == row and k[1] == ColumnKey("cpu") and k[6] == table._update_count
                       for k in table._cell_render_cache.keys())

        await pilot.pause()  # the table's size settles (its resize bumps the count once)
        table.refresh()  # a full paint at the current count
        await wait_for(painted, what="the row painted")
        before = table._update_count  # every render cache of the table is keyed on it
        await fake.update_node(nodes[3]["id"], metrics={"cpu": 87.0, "mem": 50.0, "disk": 25.0, "temp": 48.3})
        await wait_for(lambda: cell(table, nodes[3]["id"], "cpu").startswith(" 87%"), what="cpu update")
        assert table._update_count == before  # no table-wide invalidation: only that row is drawn again
        await wait_for(lambda: " 87%" in screen_text(app), what="the new value painted")
        # A sort still moves rows (and redraws them all): busiest first puts the changed node on top.
        await pilot.press("s", "s", "s")
        await wait_for(lambda: app.screen.sort_column == "cpu", what="sorted by cpu")
        await wait_for(lambda: app.screen.shown_ids()[0] == nodes[3]["id"], what="busiest first")
        assert table._update_count > before


async def test_two_thousand_nodes_update_in_place(fake: FakeCentral) -> None:
    nodes = [fake.add_node(f"n{i:04d}", group=f"g{i % 20}") for i in range(2000)]
    app = make_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.screen.query_one(DataTable)
        # The first screenful comes first, sorted; the rest follow in steps, then one sort.
        await wait_for(lambda: table.row_count > 0, within=30, what="first rows")
        assert app.screen.shown_ids()[:40] == [n["id"] for n in nodes[:40]]
        await wait_for(lambda: table.row_count == 2000 and not app.screen._backlog, within=30, what="2000 rows")
        order = app.screen.shown_ids()
        assert order == [n["id"] for n in nodes]  # by name
        assert table.cursor_row == 0
        for node in nodes[:200]:
            await fake.update_node(node["id"], metrics={"cpu": 55.0, "mem": 1.0, "disk": 1.0, "temp": 30.0})
        await wait_for(lambda: cell(table, nodes[10]["id"], "cpu").startswith(" 55%"), what="visible updates")
        # Rows out of sight are brought up to date when they scroll into view, not before.
        await wait_for(lambda: nodes[199]["id"] in app.screen._stale, what="off-screen row marked stale")
        assert not cell(table, nodes[199]["id"], "cpu").startswith(" 55%")
        table.move_cursor(row=199)
        await wait_for(lambda: cell(table, nodes[199]["id"], "cpu").startswith(" 55%"), what="row shown when in view")
        await pilot.pause()
        assert app.screen.shown_ids() == order and table.row_count == 2000
        # A sort on a live value uses every row's current value.
        await pilot.press("s", "s", "s")  # name -> state -> seen -> cpu (busiest first)
        await wait_for(lambda: app.screen.sort_column == "cpu", what="sorted by cpu")
        await wait_for(lambda: set(app.screen.shown_ids()[:200]) == {n["id"] for n in nodes[:200]},
                       what="the 200 busy nodes first")
        # A burst (every node at once) is applied a share per frame; all of it lands.
        await pilot.press("s", "S")  # sort by memory, least first: the rows in view are any 40
        for node in nodes:
            await fake.update_node(node["id"], metrics={"cpu": 11.0, "mem": 2.0, "disk": 1.0, "temp": 30.0})
        await wait_for(lambda: all(n["metrics"]["cpu"] == 11.0 for n in app.fleet.nodes.values()), what="burst in")
        in_view = app.screen.shown_ids()[:40]
        await wait_for(lambda: all(cell(table, nid, "cpu").startswith(" 11%") for nid in in_view),
                       what="every row in view drawn")


async def test_command_palette_opens_a_node(fake: FakeCentral) -> None:
    fake.add_node("pi-42")
    fake.add_node("desk-7")
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.screen.query_one(DataTable).row_count == 2, what="rows")
        await pilot.press("ctrl+p")
        for ch in "open node desk":
            await pilot.press("space" if ch == " " else ch)
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, NodeScreen), what="node screen")
        assert app.fleet.nodes[app.screen.node_id]["name"] == "desk-7"
        await pilot.press("question_mark")
        await wait_for(lambda: "Maint." in screen_text(app) and "Everywhere" in screen_text(app), what="help")


async def test_garbage_on_the_stream_loses_nothing(fake: FakeCentral) -> None:
    n = fake.add_node("pi-42")
    app = make_app(fake)
    async with app.run_test(size=(80, 24)):
        table = app.screen.query_one(DataTable)
        await wait_for(lambda: table.row_count == 1 and app.connected, what="row")
        for frame in ("not json", "[1, 2]", '{"type": "node", "node": {"id": 5}}',
                      '{"type": "node", "node": {"id": "odd", "name": "odd", "metrics": [1], "demos": 3}}',
                      '{"type": "logs", "node": "x", "lines": "nope"}', '{"type": "event", "event": []}',
                      '{"type": "mystery"}'):
            await fake.send_raw(frame)
        await fake.update_node(n["id"], metrics={"cpu": 66.0})
        await wait_for(lambda: cell(table, n["id"], "cpu").startswith(" 66%"), what="valid update after garbage")
        assert app.connected and table.row_count == 2  # the odd-but-valid node shows, with empty metrics
        assert cell(table, "odd", "cpu").startswith("   -")


async def test_a_flood_of_lines_is_kept_but_drawn_in_part(fake: FakeCentral) -> None:
    n = fake.add_node("chatty")
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.connected, what="connected")
        await pilot.press("l")
        await wait_for(lambda: isinstance(app.screen, LogsScreen), what="logs screen")
        view = app.screen.query_one(LogView)
        await wait_for(lambda: any("*" in subs for subs in fake.streams.values()), what="subscribed")
        await fake.add_logs(n["id"], [("INFO", f"line {i}") for i in range(1000)])
        await wait_for(lambda: "line 999" in log_text(view), what="newest line drawn")
        assert "700 lines not drawn" in log_text(view)
        assert len(view.lines_buffer) == 1000 and "line 0\n" not in log_text(view) + "\n"
