"""Revoked nodes are not offline nodes to look after: hidden by `dvic nodes` and the console's fleet
unless asked for (`--all`, `R`), and marked revoked when shown. Against the real server."""

from __future__ import annotations

import json
from typing import Any

from textual.widgets import DataTable

from tests.support.cli import run_dvic, server_env
from tests.support.nodes import online_node
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import make_app
from tui.console.widgets.summary import SummaryBar


def _with_a_revoked_node(server: CentralServer) -> None:
    server.enroll("pi-kept", group="hall")
    server.enroll("pi-gone", group="hall")
    assert server.api("DELETE", "/api/v1/nodes/pi-gone")[0] == 200


async def test_dvic_nodes_hides_revoked_nodes_unless_all(central_server: CentralServer,
                                                         dvic_env: dict[str, str]) -> None:
    server = central_server
    _with_a_revoked_node(server)
    env = server_env(dvic_env, server)

    res = await run_dvic(env, "nodes")
    assert res.code == 0, res.err
    assert "pi-kept" in res.out and "pi-gone" not in res.out
    assert "1 nodes: 1 new (1 revoked not shown: --all shows them)" in res.out

    res = await run_dvic(env, "nodes", "--all")
    gone = next(line for line in res.out.splitlines() if line.startswith("pi-gone"))
    assert gone.split()[3] == "revoked"  # not "offline"
    assert "2 nodes: 1 new, 1 revoked" in res.out and "not shown" not in res.out

    res = await run_dvic(env, "nodes", "--json")
    assert [n["name"] for n in json.loads(res.out)["nodes"]] == ["pi-kept"]
    res = await run_dvic(env, "nodes", "--json", "--all")
    assert sorted((n["name"], n["revoked"]) for n in json.loads(res.out)["nodes"]) == [
        ("pi-gone", True), ("pi-kept", False)]


def _names(table: DataTable[Any]) -> set[str]:
    return {table.get_row_at(i)[0].plain for i in range(table.row_count)}


async def test_the_console_fleet_hides_revoked_nodes_until_r(central_server: CentralServer) -> None:
    server = central_server
    _with_a_revoked_node(server)
    async with online_node(server, "pi-live"):
        app = make_app(server)
        async with app.run_test(size=(160, 40)) as pilot:
            table = app.screen.query_one(DataTable)
            await async_wait_for(lambda: _names(table) == {"pi-kept", "pi-live"}, what="the fleet without pi-gone")
            summary = str(app.screen.query_one(SummaryBar).render())
            assert "1 revoked" in summary and "1 offline" not in summary  # not counted as offline

            await pilot.press("R")
            await async_wait_for(lambda: "pi-gone" in _names(table), what="pi-gone shown on request")
            row = next(table.get_row_at(i) for i in range(table.row_count) if table.get_row_at(i)[0].plain == "pi-gone")
            assert row[1].plain == "⊘ revoked"
            await pilot.press("R")
            await async_wait_for(lambda: "pi-gone" not in _names(table), what="pi-gone hidden again")

            # Revoked while the console watches: its row goes.
            assert server.api("DELETE", "/api/v1/nodes/pi-kept")[0] == 200
            await async_wait_for(lambda: _names(table) == {"pi-live"}, what="pi-kept gone once revoked")
