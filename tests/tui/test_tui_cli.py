"""The `dvic` command line against a server speaking the operator API, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

from tests.tui.clikit import ROOT, run_dvic
from tests.tui.tuifake import FakeCentral, wait_for
from tui.api import pinning

HOSTILE = "[link=http://x]x[/link] [/b] \x1b]52;c;aGk=\x07 \x1b[2J"


def env_for(env: dict[str, str], server: FakeCentral, token: str | None = None) -> dict[str, str]:
    env = dict(env, DVIC_SERVER=server.url, DVIC_TOKEN=token or server.admin_token)
    if server.ca_path:
        env["DVIC_CA"] = str(server.ca_path)
    return env


async def test_nodes_table_and_json(fake: FakeCentral, dvic_env: dict[str, str]) -> None:
    fake.add_node("pi-42", kind="raspberry", group="hall-a")
    fake.add_node("desk-1", group="hall-b", state="offline")
    env = env_for(dvic_env, fake)
    res = await run_dvic(env, "nodes")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "GROUP", "STATE", "SEEN", "CPU", "MEM", "DISK", "TEMP",
                                "DEMOS", "VERSION"]
    row = next(x for x in lines if x.startswith("pi-42"))
    cols = row.split()
    assert cols[:4] == ["pi-42", "raspberry", "hall-a", "online"] and cols[5:7] == ["12%", "50%"]
    assert cols[4].endswith("s")  # seen a few seconds ago
    assert "2 nodes: 1 offline, 1 online" in res.out

    res = await run_dvic(env, "nodes", "--json", "--state", "offline")
    doc = json.loads(res.out)
    assert [n["name"] for n in doc["nodes"]] == ["desk-1"]


async def test_node_detail_escapes_hostile_text(fake: FakeCentral, dvic_env: dict[str, str]) -> None:
    node = fake.add_node("evil")
    node["facts"]["model"] = HOSTILE
    res = await run_dvic(env_for(dvic_env, fake), "node", "evil")
    assert res.code == 0, res.err
    assert "\x1b" not in res.out and "\x07" not in res.out
    assert "[link=http://x]x[/link] [/b]" in res.out
    assert "robot-arm" in res.out and "exited" in res.out
    res = await run_dvic(env_for(dvic_env, fake), "node", node["id"], "--json")
    assert json.loads(res.out)["facts"]["model"] == HOSTILE


async def test_unknown_node_and_bad_token_are_clear(fake: FakeCentral, dvic_env: dict[str, str]) -> None:
    res = await run_dvic(env_for(dvic_env, fake), "node", "nope")
    assert res.code == 1 and "no such node" in res.err and "HTTP 404" in res.err
    res = await run_dvic(env_for(dvic_env, fake, token="wrong"), "nodes")
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


async def test_logs_history_filters_and_json(fake: FakeCentral, dvic_env: dict[str, str]) -> None:
    node = fake.add_node("pi-42")
    other = fake.add_node("pi-43")
    await fake.add_logs(node["id"], [("INFO", "calibrated"), ("ERROR", "motor stalled\nat joint 3"),
                                     ("DEBUG", HOSTILE)])
    await fake.add_logs(other["id"], [("INFO", "other node")])
    env = env_for(dvic_env, fake)
    res = await run_dvic(env, "logs", "pi-42")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert "calibrated" in lines[0] and "motor stalled" in lines[1]
    assert lines[2].startswith("    at joint 3")  # continuation lines are indented
    assert "[link=http://x]x[/link]" in res.out and "\x1b" not in res.out and "other node" not in res.out

    res = await run_dvic(env, "logs", "--level", "warn")
    assert res.out.count("\n") == 2 and "pi-42" in res.out  # all nodes: a node column
    res = await run_dvic(env, "logs", "--grep", "CALIBRATED", "--json")
    doc = json.loads(res.out)
    assert [x["msg"] for x in doc["lines"]] == ["calibrated"]
    res = await run_dvic(env, "logs", "--json", "-n", "2")
    assert [x["msg"] for x in json.loads(res.out)["lines"]] == [HOSTILE, "other node"]


async def test_logs_follow_streams_new_lines_once(fake: FakeCentral, dvic_env: dict[str, str]) -> None:
    node = fake.add_node("pi-42")
    await fake.add_logs(node["id"], [("INFO", "before")])
    env = env_for(dvic_env, fake)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tui", "logs", "pi-42", "--follow", "--json", "--level", "INFO",
        env=env, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert first["msg"] == "before"
        await wait_for(lambda: any(node["id"] in s for s in fake.streams.values()), what="subscription")
        await fake.add_logs(node["id"], [("DEBUG", "too low"), ("WARNING", "live one")])
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert second["msg"] == "live one"
        # The server restarts its streams: the CLI reconnects, fills the gap, prints nothing twice.
        await fake.drop_streams()
        await fake.add_logs(node["id"], [("INFO", "during the gap")])
        third = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert third["msg"] == "during the gap"
        await wait_for(lambda: any(node["id"] in s for s in fake.streams.values()), what="re-subscription")
        await fake.add_logs(node["id"], [("INFO", "after")])
        fourth = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert fourth["msg"] == "after"
    finally:
        proc.terminate()
        await proc.wait()


async def test_events_table(fake: FakeCentral, dvic_env: dict[str, str]) -> None:
    node = fake.add_node("pi-42")
    await fake.add_event(node["id"], "state", "offline -> online")
    await fake.add_event(node["id"], "log_gap", "spool full: 120 lines dropped")
    res = await run_dvic(env_for(dvic_env, fake), "events")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["TIME", "AGE", "NODE", "KIND", "MESSAGE"]
    assert "offline -> online" in lines[1] and "spool full" in lines[2]
    res = await run_dvic(env_for(dvic_env, fake), "events", "--json")
    assert [e["kind"] for e in json.loads(res.out)["events"]] == ["state", "log_gap"]


async def test_login_pins_ca_after_fingerprint(fake_tls: FakeCentral, dvic_env: dict[str, str]) -> None:
    assert fake_tls.ca_path is not None
    expected = pinning.from_pem_file(str(fake_tls.ca_path)).sha256
    res = await run_dvic(dvic_env, "login", fake_tls.url, "--fingerprint", "00" * 32, "--token", "x")
    assert res.code == 3 and "does not match" in res.err
    config = Path(dvic_env["XDG_CONFIG_HOME"]) / "dvic"
    assert not config.exists()  # nothing stored on a mismatch
    # No terminal to confirm on and no --yes: refused, nothing stored.
    res = await run_dvic(dvic_env, "login", fake_tls.url, "--token", fake_tls.admin_token)
    assert res.code == 1 and "not trusted" in res.err and not config.exists()

    res = await run_dvic(dvic_env, "login", fake_tls.url, "--fingerprint", pinning.pretty(expected),
                         "--token", fake_tls.admin_token)
    assert res.code == 0, res.err
    assert pinning.pretty(expected) in res.out and "as admin (role admin, active)" in res.out
    for name in ("ca.pem", "token", "config.json"):
        assert stat.S_IMODE(os.stat(config / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o700
    assert json.loads((config / "config.json").read_text()) == {"server": fake_tls.url, "ca_sha256": expected}
    # Later runs use the stored login; options and environment override it.
    fake_tls.add_node("pi-42")
    res = await run_dvic(dvic_env, "nodes")
    assert res.code == 0 and "pi-42" in res.out
    res = await run_dvic(dvic_env, "nodes", "--token", "bad")
    assert res.code == 1 and "HTTP 401" in res.err
    res = await run_dvic(dict(dvic_env, DVIC_TOKEN="bad"), "nodes")
    assert res.code == 1


async def test_wrong_ca_is_refused(fake_tls: FakeCentral, dvic_env: dict[str, str], tmp_path: Path) -> None:
    other = await FakeCentral().start(tls_dir=tmp_path / "other-pki" if (tmp_path / "other-pki").mkdir() is None
                                      else None)
    try:
        assert other.ca_path is not None
        res = await run_dvic(dvic_env, "nodes", "--server", fake_tls.url, "--ca", str(other.ca_path),
                             "--token", fake_tls.admin_token)
        assert res.code == 3 and "TLS verification" in res.err
    finally:
        await other.stop()


async def test_login_asks_for_the_ca_file_when_the_server_sends_no_chain(
    dvic_env: dict[str, str], tmp_path: Path
) -> None:
    server = await FakeCentral().start(tls_dir=tmp_path, send_chain=False)
    try:
        res = await run_dvic(dvic_env, "login", server.url, "--yes", "--token", server.admin_token)
        assert res.code == 3 and "--ca FILE" in res.err and "ca.pem" in res.err
        assert server.ca_path is not None
        res = await run_dvic(dvic_env, "login", server.url, "--ca", str(server.ca_path), "--yes",
                             "--token", server.admin_token)
        assert res.code == 0, res.err
    finally:
        await server.stop()
