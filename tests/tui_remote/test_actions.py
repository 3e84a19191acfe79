"""`dvic reboot/action/actions/maintenance/update/release` against the real server and an executor node."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import DvicRunner
from tests.support.server import CentralServer
from tests.tui_remote.executor_node import UNKNOWN_DEMO, ExecutorNode


async def test_reboot_wait_follows_the_node_coming_back(shared_server: CentralServer, dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-r")) as node:
        res = await dvic("reboot", "pi-r", "--wait", "--timeout", "30")
        assert res.code == 0, res
        lines = res.out.splitlines()
        assert "reboot: requested" in lines[0]
        assert any("reboot: in_progress" in line for line in lines)
        assert "reboot: done" in lines[-1] and "came back" in lines[-1]
        assert node.reboots == 1
    listing = await dvic("actions", "--node", "pi-r")
    assert "reboot" in listing.out and "done" in listing.out
    as_json = json.loads((await dvic("actions", "--json")).out)
    assert as_json["actions"][0]["state"] == "done"


async def test_demo_actions_done_and_failed(shared_server: CentralServer, dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-d")):
        ok = await dvic("action", "pi-d", "restart-demo", "--demo", "robot-arm", "--wait")
        assert ok.code == 0 and "restart_demo robot-arm: done" in ok.out, ok
        bad = await dvic("action", "pi-d", "stop-demo", "--demo", UNKNOWN_DEMO, "--wait", "--json")
        assert bad.code == 1
        states = [json.loads(line)["state"] for line in bad.out.splitlines()]
        assert states[0] == "requested" and states[-1] == "failed"
        quick = await dvic("action", "pi-d", "start-demo")
        assert quick.code == 0 and "start_demo: requested" in quick.out
        wrong = await dvic("action", "pi-d", "explode")
        assert wrong.code == 2 and "invalid choice" in wrong.err


async def test_maintenance_refuses_operators_but_not_admins(shared_server: CentralServer, dvic: DvicRunner):
    operator = dvic.operator("olga", "operator")
    async with ExecutorNode(shared_server.enroll("pi-m")):
        on = await dvic("maintenance", "pi-m", "on", token=operator)
        assert on.code == 0 and "maintenance on" in on.out
        assert shared_server.node("pi-m")["state"] == "maintenance"
        refused = await dvic("run", "pi-m", "--", "true", token=operator)
        assert refused.code == 1 and "in maintenance" in refused.err
        shell = await dvic("shell", "pi-m", token=operator, stdin=b"")
        assert shell.code == 1 and "'pi-m' is in maintenance: only admins may open a shell" in shell.err, shell
        admin = await dvic("run", "pi-m", "--", "echo", "admin-ok")
        assert admin.code == 0 and admin.out == "admin-ok\n"
        off = await dvic("maintenance", "pi-m", "off", token=operator)
        assert off.code == 0
        again = await dvic("run", "pi-m", "--", "true", token=operator)
        assert again.code == 0


async def test_update_and_release(central_server: CentralServer, dvic_env: dict[str, str], tmp_path: Path):
    # A release is server-wide: this test has a server of its own.
    dvic = DvicRunner(central_server, dvic_env)
    info = json.loads((await dvic("release", "--json")).out)
    shown = await dvic("release")
    assert f"version       {info['version']}" in shown.out and "RSA 3072 bits" in shown.out, shown.out
    newer = tmp_path / "dvic_node.py"
    newer.write_text('"""A test daemon."""\nVERSION = "9.9.9"\n')
    viewer = dvic.operator("vic", "viewer")
    refused = await dvic("release", "publish", str(newer), token=viewer)
    assert refused.code == 1 and "HTTP 403" in refused.err
    published = await dvic("release", "publish", str(newer))
    assert published.code == 0 and "published daemon 9.9.9" in published.out, published
    missing = await dvic("release", "publish", str(tmp_path / "nope.py"))
    assert missing.code == 2 and "cannot read" in missing.err
    async with ExecutorNode(central_server.enroll("pi-u")):
        # The executor node does not implement updates: it answers `unsupported`, so the action fails.
        res = await dvic("update", "pi-u", "--wait")
        assert res.code == 1, res
        assert "pi-u: update to 9.9.9 requested" in res.out and "failed" in res.out
        none = await dvic("update", "--all")
        assert none.code == 2 and "--yes" in none.err
