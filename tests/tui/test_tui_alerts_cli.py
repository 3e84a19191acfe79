"""`dvic alerts`, `dvic alert`, `dvic silence` and `dvic rule` against the real central server."""

from __future__ import annotations

import json

from tests.support.cli import run_dvic, server_env
from tests.support.nodes import connected, metrics
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for


async def test_alerts_ack_and_silence_from_the_command_line(alerting_server: CentralServer, dvic_env: dict[str, str]) -> None:
    env = server_env(dvic_env, alerting_server)
    res = await run_dvic(env, "alerts")
    assert res.code == 0 and "0 firing, 0 acknowledged, 0 silenced (no open alerts)" in res.out, res.err

    async with connected(alerting_server.enroll("pi-hot", kind="raspberry", group="hall-a")) as node:
        await node.send(metrics(disk=97.0))

        async def firing() -> bool:
            out = await run_dvic(env, "alerts", "--json")
            return any(a["rule"] == "disk_full" for a in json.loads(out.out)["alerts"])

        await async_wait_for(firing, timeout=20, what="the disk alert")
        res = await run_dvic(env, "alerts")
        assert res.code == 0, res.err
        header, row = res.out.splitlines()[:2]
        assert header.split() == ["ID", "STATE", "SEVERITY", "RULE", "SUBJECT", "SINCE", "SUMMARY"]
        alert_id = row.split()[0]
        assert row.split()[1:5] == ["firing", "warning", "disk_full", "node:pi-hot"] and "disk at 97" in row

        res = await run_dvic(env, "silence", "add", "--group", "hall-a", "--for", "2h", "--note", "rewiring")
        assert res.code == 0 and res.out.startswith("silence #1 (group=hall-a) until "), (res.out, res.err)
        res = await run_dvic(env, "alerts")
        assert f"{alert_id}  silenced" in res.out and "0 firing, 0 acknowledged, 1 silenced" in res.out
        res = await run_dvic(env, "silence", "list")
        assert "group=hall-a" in res.out and "rewiring" in res.out
        res = await run_dvic(env, "silence", "remove", "1")
        assert res.code == 0 and "silence #1 ended" in res.out

        res = await run_dvic(env, "alert", "ack", alert_id, "--note", "new SD card tomorrow")
        assert res.code == 0 and f"acknowledged alert #{alert_id} (disk_full on node:pi-hot)" in res.out, res.err
        res = await run_dvic(env, "alert", "ack", alert_id, "--note", "again")
        assert res.code == 1 and "acknowledged by admin" in res.err
        res = await run_dvic(env, "alert", "show", alert_id)
        assert "acknowledged by admin" in res.out and "new SD card tomorrow" in res.out and "fired" in res.out

        await node.send(metrics(disk=40.0))

        async def resolved() -> bool:
            out = await run_dvic(env, "alerts", "--all", "--json")
            return [a["state"] for a in json.loads(out.out)["alerts"]] == ["resolved"]

        await async_wait_for(resolved, timeout=20, what="the alert resolved")
        res = await run_dvic(env, "silence", "add", "--for", "1h")
        assert res.code == 2 and "say what to silence" in res.err


async def test_rules_from_the_command_line(alerting_server: CentralServer, dvic_env: dict[str, str]) -> None:
    env = server_env(dvic_env, alerting_server)
    res = await run_dvic(env, "rule", "list")
    assert res.code == 0, res.err
    disk = next(line for line in res.out.splitlines() if line.startswith("disk_full"))
    assert "disk > 90 (clear 85)" in disk and "stock" in disk

    res = await run_dvic(env, "rule", "add", "hot-pis", "--metric", "temp", "--above", "70", "--clear", "65",
                         "--for", "2m", "--kind", "raspberry", "--severity", "critical")
    assert res.code == 0 and "rule hot-pis added" in res.out, res.err
    assert "temp > 70 (clear 65)" in res.out and "kind=raspberry" in res.out
    res = await run_dvic(env, "rule", "add", "usb", "--log", r"usb \d+-\d+: reset", "--rate", "5")
    assert res.code == 0, res.err
    res = await run_dvic(env, "rule", "add", "bad", "--log", "(a+)+$", "--rate", "5")
    assert res.code == 1 and "nested quantifiers" in res.err
    res = await run_dvic(env, "rule", "add", "bad", "--metric", "humidity", "--above", "5")
    assert res.code == 1 and "unknown metric 'humidity'" in res.err
    res = await run_dvic(env, "rule", "add", "bad", "--metric", "cpu")
    assert res.code == 2 and "--above VALUE or --below VALUE" in res.err
    res = await run_dvic(env, "rule", "set", "disk_full", "--threshold", "95", "--for", "soon")
    assert res.code == 1 and "expected a duration" in res.err

    res = await run_dvic(env, "rule", "set", "disk_full", "--threshold", "95", "--disable")
    assert res.code == 0 and "rule disk_full changed" in res.out, res.err
    assert "off (tuned)" in res.out and "disk > 95 (clear 90)" in res.out
    res = await run_dvic(env, "rule", "remove", "disk_full")
    assert res.code == 0 and "back to its defaults" in res.out and "disk > 90 (clear 85)" in res.out
    res = await run_dvic(env, "rule", "remove", "usb")
    assert res.code == 0 and "rule usb removed" in res.out
    res = await run_dvic(env, "rule", "list", "--json")
    names = {r["name"] for r in json.loads(res.out)["rules"]}
    assert "hot-pis" in names and "usb" not in names
    # A viewer reads but changes nothing.
    status, body = alerting_server.api("POST", "/api/v1/operators", {"name": "watcher", "role": "viewer"})
    viewer = server_env(dvic_env, alerting_server, body["token"])
    assert (await run_dvic(viewer, "rule", "list")).code == 0
    res = await run_dvic(viewer, "rule", "set", "hot-pis", "--disable")
    assert res.code == 1 and "needs the operator role" in res.err
