"""The `dvic` command line as a real subprocess against the real server, its nodes speaking the real protocol."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from central.pki import CertificateAuthority
from tests.support.cli import run_dvic, server_env, start_dvic
from tests.support.nodes import HOSTILE, connected, demo, offline_node, online_node
from tests.support.server import CentralServer
from tui.api import pinning


async def test_nodes_table_and_json(shared_server: CentralServer, dvic_env: dict[str, str]) -> None:
    server = shared_server
    await offline_node(server, "desk-1", group="hall-t")
    async with online_node(server, "pi-42", group="hall-t"):
        env = server_env(dvic_env, server)
        res = await run_dvic(env, "nodes", "--group", "hall-t")
        assert res.code == 0, res.err
        lines = res.out.splitlines()
        assert lines[0].split() == ["NAME", "KIND", "GROUP", "STATE", "SEEN", "CPU", "MEM", "DISK", "TEMP",
                                    "DEMOS", "VERSION"]
        row = next(x for x in lines if x.startswith("pi-42"))
        cols = row.split()
        assert cols[:4] == ["pi-42", "raspberry", "hall-t", "online"] and cols[5:7] == ["12%", "50%"]
        assert cols[4].endswith("s")  # seen a few seconds ago
        assert "2 nodes: 1 offline, 1 online" in res.out

        res = await run_dvic(env, "nodes", "--json", "--state", "offline", "--group", "hall-t")
        doc = json.loads(res.out)
        assert [n["name"] for n in doc["nodes"]] == ["desk-1"]


async def test_node_detail_escapes_hostile_text(shared_server: CentralServer, dvic_env: dict[str, str]) -> None:
    async with online_node(shared_server, "evil", model=HOSTILE) as node:
        await node.send(demo())
        await node.send(demo("old-demo", "exited", token="00001111aaaabbbb", pid=99))
        env = server_env(dvic_env, shared_server)
        res = await run_dvic(env, "node", "evil")
        assert res.code == 0, res.err
        assert "\x1b" not in res.out and "\x07" not in res.out
        assert "[link=http://x]x[/link] [/b]" in res.out
        assert "robot-arm" in res.out and "exited" in res.out
        res = await run_dvic(env, "node", node.bundle["node_id"], "--json")
        assert json.loads(res.out)["facts"]["model"] == HOSTILE  # the data is kept; only terminals get it cleaned


async def test_unknown_node_and_bad_token_are_clear(shared_server: CentralServer, dvic_env: dict[str, str]) -> None:
    res = await run_dvic(server_env(dvic_env, shared_server), "node", "nope")
    assert res.code == 1 and "no_such_node" in res.err and "'nope'" in res.err and "HTTP 404" in res.err
    res = await run_dvic(server_env(dvic_env, shared_server, token="dvo_wrong"), "nodes")
    assert res.code == 1 and "HTTP 401" in res.err and "dvic login" in res.err


async def test_missing_settings_and_unreachable(dvic_env: dict[str, str], tmp_path: Path) -> None:
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 2 and "dvic login" in res.err
    res = await run_dvic(dvic_env)  # the console needs settings too, and says so before it starts
    assert res.code == 2 and "dvic login" in res.err
    res = await run_dvic(dvic_env, "nodes", "--server", "https://127.0.0.1:1", "--token", "t")
    assert res.code == 2 and "no CA to pin" in res.err
    res = await run_dvic(dvic_env, "--server", "http://127.0.0.1:1", "--token", "t", "nodes")
    assert res.code == 3 and "cannot reach" in res.err
    res = await run_dvic(dvic_env, "logs", "--since", "yesterday-ish", "--server", "http://x", "--token", "t")
    assert res.code == 2 and "cannot read time" in res.err


async def test_logs_history_filters_and_json(shared_server: CentralServer, dvic_env: dict[str, str]) -> None:
    since = f"{time.time():.3f}"  # "every node" below: every node's lines from this test on
    async with online_node(shared_server, "pi-logs") as node, online_node(shared_server, "pi-logs-2") as other:
        await node.send_logs([node.line("calibrated"), node.line("motor stalled\nat joint 3", level="ERROR"),
                              node.line(HOSTILE, level="DEBUG")])
        await other.send_logs([other.line("other node")])
        env = server_env(dvic_env, shared_server)
        res = await run_dvic(env, "logs", "pi-logs")
        assert res.code == 0, res.err
        lines = res.out.splitlines()
        assert "calibrated" in lines[0] and "motor stalled" in lines[1]
        assert lines[2].startswith("    at joint 3")  # continuation lines are indented
        assert "[link=http://x]x[/link]" in res.out and "\x1b" not in res.out and "other node" not in res.out

        res = await run_dvic(env, "logs", "--level", "warn", "--since", since)
        assert res.out.count("\n") == 2 and "pi-logs" in res.out  # every node: a node column
        res = await run_dvic(env, "logs", "--grep", "CALIBRATED", "--json", "--since", since)
        doc = json.loads(res.out)
        assert [x["msg"] for x in doc["lines"]] == ["calibrated"]
        res = await run_dvic(env, "logs", "--json", "-n", "2", "--since", since)
        assert [x["msg"] for x in json.loads(res.out)["lines"]] == [HOSTILE, "other node"]


async def test_logs_follow_streams_new_lines_once(central_server: CentralServer, dvic_env: dict[str, str]) -> None:
    server = central_server  # restarted below
    bundle = server.enroll("pi-42")
    async with connected(bundle) as node:
        await node.send_logs([node.line("before")])
        proc = await start_dvic(server_env(dvic_env, server), "logs", "pi-42", "--follow", "--json", "--level", "INFO")
        assert proc.stdout is not None

        async def next_line(timeout: float = 15) -> str:
            assert proc.stdout is not None
            return str(json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout))["msg"])

        try:
            # The history line, once the follower is subscribed (it subscribes before printing history).
            assert await next_line(20) == "before"
            await node.send_logs([node.line("too low", level="DEBUG"), node.line("live one", level="WARNING")])
            assert await next_line() == "live one"
            server.kill()  # the follower loses its stream
            server.start()
            async with connected(bundle) as again:
                # Sent before or after the follower is back: from history or live, printed once.
                await again.send_logs([again.line("during the gap")])
                assert await next_line(30) == "during the gap"
                await again.send_logs([again.line("after")])
                assert await next_line() == "after"
        finally:
            proc.terminate()
            await proc.wait()


async def test_events_table(shared_server: CentralServer, dvic_env: dict[str, str]) -> None:
    async with online_node(shared_server, "pi-ev") as node:
        await node.send({"type": "event", "kind": "log_gap", "message": "spool full: 120 lines dropped",
                         "data": {"dropped": 120, "first_seq": 1000, "last_seq": 1119}})
        env = server_env(dvic_env, shared_server)

        async def events() -> list[str]:
            doc = json.loads((await run_dvic(env, "events", "--node", "pi-ev", "--json")).out)
            return [e["kind"] for e in doc["events"]]

        assert await events() == ["enrolled", "state", "log_gap"]  # oldest first; the last is the node's own
        res = await run_dvic(env, "events", "--node", "pi-ev")
        assert res.code == 0, res.err
        lines = res.out.splitlines()
        assert lines[0].split() == ["TIME", "AGE", "NODE", "KIND", "MESSAGE"]
        assert "new -> online" in lines[2] and "spool full" in lines[3]


async def test_login_pins_ca_after_fingerprint(shared_server: CentralServer, dvic_env: dict[str, str]) -> None:
    server = shared_server
    expected = pinning.from_pem_file(str(server.ca_path)).sha256
    res = await run_dvic(dvic_env, "login", server.url, "--fingerprint", "00" * 32, "--token", "x")
    assert res.code == 3 and "does not match" in res.err
    config = Path(dvic_env["XDG_CONFIG_HOME"]) / "dvic"
    assert not config.exists()  # nothing stored on a mismatch
    # No terminal to confirm on and no --yes: refused, nothing stored.
    res = await run_dvic(dvic_env, "login", server.url, "--token", server.admin_token)
    assert res.code == 1 and "not trusted" in res.err and not config.exists()

    res = await run_dvic(dvic_env, "login", server.url, "--fingerprint", pinning.pretty(expected),
                         "--token", server.admin_token)
    assert res.code == 0, res.err
    assert pinning.pretty(expected) in res.out and "as admin (role admin, active)" in res.out
    for name in ("ca.pem", "token", "config.json"):
        assert stat.S_IMODE(os.stat(config / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o700
    assert json.loads((config / "config.json").read_text()) == {"server": server.url, "ca_sha256": expected}
    # Later runs use the stored login; options and environment override it.
    server.enroll("pi-login")
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 0 and "pi-login" in res.out
    res = await run_dvic(dvic_env, "nodes", "--token", "bad")
    assert res.code == 1 and "HTTP 401" in res.err
    res = await run_dvic(dict(dvic_env, DVIC_TOKEN="bad"), "nodes")
    assert res.code == 1


async def test_wrong_ca_is_refused(shared_server: CentralServer, dvic_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = CertificateAuthority(tmp_path / "other")  # what another server's data dir holds as ca.pem
    res = await run_dvic(dvic_env, "nodes", "--server", shared_server.url, "--ca", str(other.cert_path),
                         "--token", shared_server.admin_token)
    assert res.code == 3 and "TLS verification" in res.err


@asynccontextmanager
async def without_its_ca(server: CentralServer) -> AsyncIterator[str]:
    """A TLS listener with the server's own certificate and not its CA, as a TLS proxy set up with
    the certificate alone serves it (the server itself sends its CA too); it answers nothing else."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server.data_dir / "server.pem", server.data_dir / "server.key")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=ctx)
    try:
        yield f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    finally:
        listener.close()
        await listener.wait_closed()


async def test_login_asks_for_the_ca_file_when_the_server_sends_no_chain(
    shared_server: CentralServer, dvic_env: dict[str, str]
) -> None:
    async with without_its_ca(shared_server) as url:
        res = await run_dvic(dvic_env, "login", url, "--yes", "--token", shared_server.admin_token)
    assert res.code == 3 and "--ca FILE" in res.err and "ca.pem" in res.err
    assert not (Path(dvic_env["XDG_CONFIG_HOME"]) / "dvic").exists()
    res = await run_dvic(dvic_env, "login", shared_server.url, "--ca", str(shared_server.ca_path), "--yes",
                         "--token", shared_server.admin_token)
    assert res.code == 0, res.err
