"""The `dvic` command line against the real central server, with real node traffic."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from tests.support.cli import run_dvic, server_env, start_dvic
from tests.support.nodes import HOSTILE, connected
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for
from tui.api import pinning


async def test_login_then_nodes_logs_follow_offline(central_server: CentralServer, dvic_env: dict[str, str]) -> None:
    server = central_server  # restarted below
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

        proc = await start_dvic(dvic_env, "logs", "pi-42", "--follow", "--json", "-n", "1")
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

    await async_wait_for(offline, timeout=20, what="pi-42 offline")
    res = await run_dvic(dvic_env, "events", "--node", "pi-42")
    assert res.code == 0 and "online" in res.out


async def test_register_approve_roles_tokens(open_server: CentralServer, dvic_env: dict[str, str]) -> None:
    server = open_server
    res = await run_dvic(dvic_env, "login", server.url, "--ca", str(server.ca_path), "--yes", "--register", "carol")
    assert res.code == 0, res.err
    code = re.search(r"Your one-time code: ([A-Z0-9]{4}-[A-Z0-9]{4})", res.out)
    assert code is not None, res.out
    assert f"dvic operators approve carol --code {code[1]}" in res.out
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 1 and "approval" in res.err
    admin = server_env(dvic_env, server)
    res = await run_dvic(admin, "operators", "list", "--json")
    assert {"carol": "pending"} == {o["name"]: o["status"] for o in json.loads(res.out)["operators"]
                                     if o["name"] == "carol"}
    res = await run_dvic(admin, "operators", "list")
    assert "pending (code)" in res.out
    # No terminal to ask on: the code must be given; a wrong one changes nothing.
    res = await run_dvic(admin, "operators", "approve", "carol", "--role", "viewer")
    assert res.code == 2 and "pass --code CODE" in res.err
    res = await run_dvic(admin, "operators", "approve", "carol", "--role", "viewer", "--code", "AAAA-AAAA")
    assert res.code == 1 and "wrong_code" in res.err
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 1 and "approval" in res.err
    res = await run_dvic(admin, "operators", "approve", "carol", "--role", "viewer", "--code", code[1])
    assert res.code == 0, res.err
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 0, res.err
    res = await run_dvic(dvic_env, "operators", "list")
    assert res.code == 1 and "HTTP 403" in res.err
    res = await run_dvic(admin, "operators", "add", "ops1", "--role", "operator")
    token = res.out.strip().split()[-1]
    res = await run_dvic(server_env(dvic_env, server, token), "nodes", "--json")
    assert res.code == 0 and json.loads(res.out) == {"nodes": []}
    res = await run_dvic(admin, "operators", "role", "carol", "operator")
    assert res.code == 0
    res = await run_dvic(admin, "operators", "token", "carol", "--json")
    assert json.loads(res.out)["token"]
    res = await run_dvic(admin, "operators", "disable", "ops1")
    assert res.code == 0
    res = await run_dvic(server_env(dvic_env, server, token), "nodes")
    assert res.code == 1 and "HTTP 401" in res.err
    res = await run_dvic(admin, "operators", "approve", "ops1")
    assert res.code == 1 and "not_pending" in res.err
    res = await run_dvic(admin, "operators", "add", "Bad Name!")
    assert res.code == 1 and "bad_name" in res.err


async def test_squatted_names_are_deleted_and_tokens_expire(open_server: CentralServer,
                                                            dvic_env: dict[str, str]) -> None:
    server = open_server
    res = await run_dvic(dvic_env, "login", server.url, "--ca", str(server.ca_path), "--yes", "--register", "alice")
    assert res.code == 0, res.err
    admin = server_env(dvic_env, server)
    res = await run_dvic(admin, "operators", "add", "alice")
    assert res.code == 1 and "name_taken" in res.err
    res = await run_dvic(admin, "operators", "delete", "alice")
    assert res.code == 0 and "deleted the pending account alice" in res.out and "the name is free" in res.out
    res = await run_dvic(admin, "operators", "add", "alice", "--role", "operator", "--expires", "30d")
    assert res.code == 0, res.err
    assert "the token expires: " in res.out
    res = await run_dvic(admin, "operators", "delete", "alice")
    assert res.code == 1 and "dvic operators disable alice" in res.err
    res = await run_dvic(admin, "operators", "token", "alice", "--expires", "1x")
    assert res.code == 2 and "12h, 30d or 52w" in res.err
    res = await run_dvic(admin, "operators", "token", "alice", "--json")
    assert json.loads(res.out)["expires_at"] is None


async def test_token_from_a_file_and_a_warning_for_argv(shared_server: CentralServer, dvic_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    server = shared_server
    env = dict(dvic_env, DVIC_SERVER=server.url, DVIC_CA=str(server.ca_path))
    token_file = tmp_path / "token"
    token_file.write_text(server.admin_token + "\n")
    token_file.chmod(0o600)
    res = await run_dvic(env, "--token-file", str(token_file), "nodes", "--json")
    assert res.code == 0 and res.err == "", res.err
    res = await run_dvic(env, "nodes", "--token-file", str(token_file), "--json")  # after the command too
    assert res.code == 0 and res.err == "", res.err
    res = await run_dvic(dict(env, DVIC_TOKEN_FILE=str(token_file)), "nodes", "--json")
    assert res.code == 0 and res.err == "", res.err
    res = await run_dvic(dict(env, DVIC_TOKEN=server.admin_token), "nodes", "--json")
    assert res.code == 0 and res.err == "", res.err
    # --token still works, with one warning: the token is in every user's process list.
    res = await run_dvic(env, "--token", server.admin_token, "nodes", "--json")
    assert res.code == 0 and res.err.count("warning: --token") == 1 and "--token-file" in res.err
    res = await run_dvic(env, "--token", server.admin_token, "run", "--all", "--yes", "--", "true")
    assert res.err.count("warning: --token") == 1
    res = await run_dvic(env, "nodes", "--token-file", str(tmp_path / "missing"))
    assert res.code == 2 and "cannot read the token file" in res.err
    res = await run_dvic(env, "--token", "x", "--token-file", str(token_file), "nodes")
    assert res.code == 2 and "not both" in res.err
    res = await run_dvic(env, "login", server.url, "--ca", str(server.ca_path), "--yes",
                         "--token-file", str(token_file))
    assert res.code == 0 and "as admin" in res.out, res.err


async def test_plain_http_is_refused_off_loopback(dvic_env: dict[str, str], tmp_path: Path) -> None:
    # Refused before any connection is tried: nothing leaves this machine.
    token_file = tmp_path / "token"
    token_file.write_text("dvo_secret")
    for url in ("http://192.0.2.10:8443", "http://monitor.lab:8443", "http://[2001:db8::1]:8443"):
        res = await run_dvic(dvic_env, "login", url, "--token-file", str(token_file))
        assert res.code == 2 and "refusing plain http://" in res.err and "https://" in res.err, (url, res.err)
        res = await run_dvic(dict(dvic_env, DVIC_SERVER=url, DVIC_TOKEN_FILE=str(token_file)), "nodes")
        assert res.code == 2 and "refusing plain http://" in res.err, (url, res.err)
    assert not os.path.exists(os.path.join(dvic_env.get("XDG_CONFIG_HOME", ""), "dvic", "token"))


async def test_an_operator_removes_its_own_failed_enrollment(shared_server: CentralServer,
                                                             dvic_env: dict[str, str]) -> None:
    server = shared_server
    _, olga = server.api("POST", "/api/v1/operators", {"name": "olga", "role": "operator"})
    _, otto = server.api("POST", "/api/v1/operators", {"name": "otto", "role": "operator"})
    # What a failed `dvic add-node` leaves behind when its rollback could not reach the server.
    assert server.api("POST", "/api/v1/nodes", {"name": "pi-left", "kind": "desktop"}, token=olga["token"])[0] == 201
    res = await run_dvic(server_env(dvic_env, server, otto["token"]), "remove-node", "pi-left")
    assert res.code == 1 and "ask an admin" in res.out + res.err, res.out + res.err
    assert not server.node("pi-left")["revoked"]
    res = await run_dvic(server_env(dvic_env, server, olga["token"]), "remove-node", "pi-left")
    assert res.code == 0, res.out + res.err
    assert server.node("pi-left")["revoked"]
