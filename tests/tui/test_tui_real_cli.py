"""The `dvic` command line against the real central server, with real node traffic."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.support.server import CentralServer
from tests.tui.clikit import ROOT, run_dvic
from tests.tui.realkit import HOSTILE, connected
from tests.tui.tuifake import wait_for
from tui import pinning


def env_for(env: dict[str, str], server: CentralServer, token: str | None = None) -> dict[str, str]:
    return dict(env, DVIC_SERVER=server.url, DVIC_TOKEN=token or server.admin_token, DVIC_CA=str(server.ca_path))


async def test_login_then_nodes_logs_follow_offline(central_server: CentralServer, dvic_env: dict[str, str]) -> None:
    server = central_server
    expected = pinning.from_pem_file(str(server.ca_path)).sha256
    res = await run_dvic(dvic_env, "login", server.url, "--fingerprint", "ab" * 32, "--token", server.admin_token)
    assert res.code == 3 and "does not match" in res.err
    res = await run_dvic(dvic_env, "login", server.url, "--fingerprint", expected, "--token", server.admin_token)
    assert res.code == 0, res.err
    assert pinning.pretty(expected) in res.out

    bundle = server.enroll("pi-42", kind="raspberry", group="hall-a")
    async with connected(bundle, model=HOSTILE) as node:
        await node.send_logs([node.line("calibrated"), node.line(HOSTILE, level="ERROR")])
        res = await run_dvic(dvic_env, "nodes")  # the stored login, no options
        assert res.code == 0, res.err
        row = next(x for x in res.out.splitlines() if x.startswith("pi-42"))
        assert row.split()[1:4] == ["raspberry", "hall-a", "online"]
        assert row.split()[5] == "12%"
        res = await run_dvic(dvic_env, "node", "pi-42")
        assert "[link=http://x]x[/link] [/b]" in res.out and "\x1b" not in res.out and "\x07" not in res.out
        res = await run_dvic(dvic_env, "logs", "pi-42", "--json")
        assert [x["msg"] for x in json.loads(res.out)["lines"]] == ["calibrated", HOSTILE]
        res = await run_dvic(dvic_env, "logs", "pi-42", "--level", "error")
        assert res.out.count("\n") == 1 and "\x1b" not in res.out and "ERROR" in res.out

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tui", "logs", "pi-42", "--follow", "--json", "-n", "1",
            env=dvic_env, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
            assert first["msg"] == HOSTILE  # the last history line, then live ones
            # The CLI subscribes before it prints history: a line sent now is followed.
            await node.send_logs([node.line("live line")])
            live = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
            assert live["msg"] == "live line" and live["node_name"] == "pi-42"
            await node.close()
            # The server restarts: the follower reconnects and prints what was sent meanwhile, once.
            server.kill()  # a crash: the quickest way down, and the harshest for clients
            server.start()
            async with connected(bundle) as again:
                await again.send_logs([again.line("after restart")])
                line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 40))
                assert line["msg"] == "after restart"
        finally:
            proc.terminate()
            await proc.wait()

    # The node is gone without keep-alives: offline at once.
    async def offline() -> bool:
        res = await run_dvic(dvic_env, "nodes", "--state", "offline", "--json")
        return [n["name"] for n in json.loads(res.out)["nodes"]] == ["pi-42"]

    await wait_for(offline, within=20, what="pi-42 offline")
    res = await run_dvic(dvic_env, "events", "--node", "pi-42")
    assert res.code == 0 and "online" in res.out


async def test_register_approve_roles_tokens(central_server: CentralServer, dvic_env: dict[str, str]) -> None:
    server = central_server
    res = await run_dvic(dvic_env, "login", server.url, "--ca", str(server.ca_path), "--yes", "--register", "carol")
    assert res.code == 0, res.err
    assert "waits for an administrator's approval" in res.out
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 1 and "approval" in res.err
    admin = env_for(dvic_env, server)
    res = await run_dvic(admin, "operators", "list", "--json")
    assert {"carol": "pending"} == {o["name"]: o["status"] for o in json.loads(res.out)["operators"]
                                     if o["name"] == "carol"}
    res = await run_dvic(admin, "operators", "approve", "carol", "--role", "viewer")
    assert res.code == 0, res.err
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 0, res.err
    res = await run_dvic(dvic_env, "operators", "list")
    assert res.code == 1 and "HTTP 403" in res.err
    res = await run_dvic(admin, "operators", "add", "ops1", "--role", "operator")
    token = res.out.strip().split()[-1]
    res = await run_dvic(env_for(dvic_env, server, token), "nodes", "--json")
    assert res.code == 0 and json.loads(res.out) == {"nodes": []}
    res = await run_dvic(admin, "operators", "role", "carol", "operator")
    assert res.code == 0
    res = await run_dvic(admin, "operators", "token", "carol", "--json")
    assert json.loads(res.out)["token"]
    res = await run_dvic(admin, "operators", "disable", "ops1")
    assert res.code == 0
    res = await run_dvic(env_for(dvic_env, server, token), "nodes")
    assert res.code == 1 and "HTTP 401" in res.err
    res = await run_dvic(admin, "operators", "approve", "ops1")
    assert res.code == 1 and "not_pending" in res.err
    res = await run_dvic(admin, "operators", "add", "Bad Name!")
    assert res.code == 1 and "bad_name" in res.err
