"""The alert engine's rules and lifecycle on a real SQLite database through the real writer, registry
and bus (in-process; the engine's clock is moved by the test). The server and daemon end to end:
test_alerts_server.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from central.alerts import engine as engine_module
from central.alerts.channels.spec import parse_channel
from central.alerts.dispatcher import Dispatcher
from central.alerts.engine import AlertError
from central.alerts.model import Alert
from central.alerts.rules import RuleError
from central.alerts.silences import silence_request
from central.config import Notify
from central.registry import NodeState
from tests.support.wait import async_wait_for

from .alerts_rig import Rig, open_rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in open_rig(tmp_path):
        yield r


def metrics(rig: Rig, node, **series: float) -> None:  # type: ignore[no-untyped-def]
    rig.registry.set_metrics(node, {"ts": rig.clock()}, dict(series))


async def test_disk_full_fires_once_and_clears_only_below_the_clear_threshold(rig: Rig) -> None:
    node = await rig.node("pi-1")
    metrics(rig, node, disk=91.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "disk_full", "node:pi-1")]
    [alert] = rig.engine.open_alerts()
    assert alert.state == "firing" and alert.node == "pi-1" and alert.group == "hall-a" and alert.id > 0
    assert "disk at 91" in alert.summary

    # Hovering between clear (85) and fire (90): still the same alert, no new notice.
    for value in (89.0, 90.5, 86.0, 95.0):
        metrics(rig, node, disk=value)
        assert await rig.after(10) == []
    assert [a.id for a in rig.engine.open_alerts()] == [alert.id]

    metrics(rig, node, disk=84.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("resolved", "disk_full", "node:pi-1")]
    assert rig.engine.open_alerts() == []
    [row] = await rig.rows("SELECT state, resolved FROM alerts WHERE id = ?", alert.id)
    assert row["state"] == "resolved" and row["resolved"] == rig.clock()
    history = [r["what"] for r in await rig.rows("SELECT what FROM alert_events WHERE alert_id = ? ORDER BY id",
                                                 alert.id)]
    assert history == ["fired", "notice_firing", "resolved", "notice_resolved"]

    # Firing again later is a new alert (a new id): the resolved one is history.
    metrics(rig, node, disk=92.0)
    await rig.engine.evaluate()
    [again] = rig.engine.open_alerts()
    assert again.id != alert.id


async def test_for_duration_must_hold_above_the_threshold(rig: Rig) -> None:
    node = await rig.node("pi-1")
    metrics(rig, node, mem=96.0)  # memory_high: 95 %, for 60 s
    await rig.engine.evaluate()
    assert await rig.after(40) == []
    metrics(rig, node, mem=93.0)  # in the band: the "for" starts over
    assert await rig.after(10) == []
    metrics(rig, node, mem=96.0)
    assert await rig.after(10) == []
    assert await rig.after(59) == []
    assert await rig.after(1) == [("firing", "memory_high", "node:pi-1")]


async def test_a_node_going_offline_is_told_at_once_by_its_event(rig: Rig) -> None:
    rig.engine.interval = 3600  # only the event can wake it
    task = asyncio.create_task(rig.engine.run())
    try:
        node = await rig.node("pi-2")
        await async_wait_for(lambda: _passes(rig), what="the first pass")
        await rig.registry.sweep(now=node.last_seen + 16)  # silent beyond offline_after (15 s)
        await async_wait_for(lambda: _notices(rig), timeout=5, what="the offline notice")
        assert rig.sink.take() == [("firing", "node_offline", "node:pi-2")]
        await rig.registry.heard(node)
        await async_wait_for(lambda: _notices(rig), timeout=5, what="the resolution")
        assert rig.sink.take() == [("resolved", "node_offline", "node:pi-2")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _passes(rig: Rig) -> bool:
    return rig.engine.passes > 0


async def _notices(rig: Rig) -> bool:
    return bool(rig.sink.notices)


async def test_maintenance_raises_nothing_and_ends_open_alerts(rig: Rig) -> None:
    node = await rig.node("pi-3")
    metrics(rig, node, disk=99.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "disk_full", "node:pi-3")]
    await rig.registry.set_maintenance(node, True, "alice")
    await rig.engine.evaluate()
    assert rig.sink.take() == [("resolved", "disk_full", "node:pi-3")]
    metrics(rig, node, disk=99.0, temp=95.0)
    assert await rig.after(3600) == [] and rig.engine.open_alerts() == []
    [row] = await rig.rows("SELECT note FROM alert_events WHERE what = 'resolved'")
    assert row["note"] == "node in maintenance"


async def test_a_silence_suppresses_notices_but_the_alert_is_recorded_and_shown_silenced(rig: Rig) -> None:
    hall_a = await rig.node("pi-a", group="hall-a")
    hall_b = await rig.node("pi-b", group="hall-b")
    silence = await rig.engine.add_silence(silence_request({"group": "hall-a", "for": "2h", "note": "rewiring"}),
                                           "alice")
    metrics(rig, hall_a, disk=99.0)
    metrics(rig, hall_b, disk=99.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "disk_full", "node:pi-b")]
    views = {a.node: rig.engine.alert_view(a) for a in rig.engine.open_alerts()}
    assert views["pi-a"]["silenced"] is True and views["pi-a"]["silenced_by"] == f"silence {silence.id}"
    assert views["pi-b"]["silenced"] is False
    assert rig.engine.counts() == {"firing": 1, "acknowledged": 0, "silenced": 1, "open": 2}
    [row] = await rig.rows("SELECT what, note FROM alert_events WHERE what LIKE 'suppressed%'")
    assert row == {"what": "suppressed_firing", "note": f"silence {silence.id}"}

    # Reminders are suppressed too; when the silence goes, the firing notice goes out.
    assert await rig.after(601) == [("reminder", "disk_full", "node:pi-b")]
    await rig.engine.remove_silence(silence.id, "alice")
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "disk_full", "node:pi-a")]
    assert rig.engine.counts()["silenced"] == 0


async def test_a_silence_ends_by_itself(rig: Rig) -> None:
    node = await rig.node("pi-a")
    await rig.engine.add_silence(silence_request({"rule": "disk_full", "for": "30m", "note": ""}), "bob")
    metrics(rig, node, disk=99.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == []
    assert await rig.after(30 * 60) == [("firing", "disk_full", "node:pi-a")]
    assert rig.engine.current_silences() == []


async def disk_full(rig: Rig, name: str) -> tuple[NodeState, Alert]:
    """A node whose disk_full alert fires (its firing notice taken)."""
    node = await rig.node(name)
    metrics(rig, node, disk=99.0)
    await rig.engine.evaluate()
    [alert] = rig.engine.open_alerts()
    rig.sink.take()
    return node, alert


async def test_reminders_while_firing_unacknowledged_then_acknowledge(rig: Rig) -> None:
    node, alert = await disk_full(rig, "pi-4")
    assert await rig.after(599) == []
    assert await rig.after(1) == [("reminder", "disk_full", "node:pi-4")]
    assert await rig.after(300) == []  # counted from the last notice

    acked = await rig.engine.acknowledge(alert.id, "alice", "replacing the SD card")
    assert (acked.state, acked.acked_by, acked.ack_note, acked.acked_at) == (
        "acknowledged", "alice", "replacing the SD card", rig.clock())
    assert rig.sink.take() == [("acknowledged", "disk_full", "node:pi-4")]
    with pytest.raises(AlertError) as refused:
        await rig.engine.acknowledge(alert.id, "bob", "")
    assert refused.value.code == "already_acknowledged"
    assert await rig.after(3600) == []  # no reminders once acknowledged
    [row] = await rig.rows("SELECT state, acked_by, ack_note FROM alerts WHERE id = ?", alert.id)
    assert row == {"state": "acknowledged", "acked_by": "alice", "ack_note": "replacing the SD card"}
    metrics(rig, node, disk=50.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("resolved", "disk_full", "node:pi-4")]
    with pytest.raises(AlertError) as gone:
        await rig.engine.acknowledge(alert.id, "bob", "")
    assert gone.value.code == "not_found"


async def test_open_alerts_survive_a_restart_without_a_second_notice(rig: Rig) -> None:
    node, alert = await disk_full(rig, "pi-5")
    engine = await rig.restart()
    await engine.evaluate()
    assert rig.sink.take() == []
    assert [a.id for a in engine.open_alerts()] == [alert.id]
    metrics(rig, node, disk=10.0)
    await engine.evaluate()
    assert rig.sink.take() == [("resolved", "disk_full", "node:pi-5")]


async def test_the_daemons_demo_events_raise_and_clear_crashloop_and_unhealthy(rig: Rig) -> None:
    node = await rig.node("pi-6")
    await rig.registry.record_event(node, "demo_crashloop", "demo robot 1.0: 5 exits within 60 s",
                                    {"demo": "robot", "version": "1.0", "restarts": 5})
    await rig.registry.record_event(node, "demo_unhealthy", "demo cam 2.0: silent",
                                    {"demo": "cam", "version": "2.0", "restarts": 0})
    await rig.engine.evaluate()
    assert sorted(rig.sink.take()) == [("firing", "demo_crashloop", "demo:pi-6/robot"),
                                       ("firing", "demo_unhealthy", "demo:pi-6/cam")]
    await rig.registry.record_event(node, "demo_recovered", "demo robot is healthy again",
                                    {"demo": "robot", "was": "crashloop"})
    await rig.engine.evaluate()
    assert rig.sink.take() == [("resolved", "demo_crashloop", "demo:pi-6/robot")]
    # A supervised demo's status (demos issue): healthy clears what it had, failed cannot start.
    rig.engine.on_demo_status(node, {"demo": "cam", "state": "healthy"})
    rig.engine.on_demo_status(node, {"demo": "kiosk", "state": "failed", "message": "no such file"})
    assert sorted(await rig.after(30)) == [("firing", "demo_exited", "demo:pi-6/kiosk"),
                                           ("resolved", "demo_unhealthy", "demo:pi-6/cam")]


async def test_a_demo_that_exited_and_did_not_come_back(rig: Rig) -> None:
    node = await rig.node("pi-7")
    now = rig.clock()
    run = {"token": "t1", "name": "robot", "pid": 10, "state": "alive", "started_at": now - 100, "exited_at": None,
           "header": {}}
    rig.registry.set_demo(node, run, now)
    await rig.engine.evaluate()
    rig.registry.set_demo(node, {**run, "state": "exited", "exited_at": now + 1}, now + 1)
    assert await rig.after(20) == []  # demo_exited waits 30 s for a new run
    assert await rig.after(11) == [("firing", "demo_exited", "demo:pi-7/robot")]
    rig.registry.set_demo(node, {**run, "token": "t2", "pid": 11, "started_at": rig.clock()}, rig.clock())
    await rig.engine.evaluate()
    assert rig.sink.take() == [("resolved", "demo_exited", "demo:pi-7/robot")]


async def test_exits_from_before_the_server_started_open_nothing(rig: Rig) -> None:
    node = await rig.node("pi-8")
    old = rig.clock() - 3600
    rig.registry.set_demo(node, {"token": "t1", "name": "old", "pid": 1, "state": "exited", "started_at": old - 10,
                                 "exited_at": old, "header": {}}, old)
    assert await rig.after(120) == []


async def test_error_lines_per_minute_per_demo(rig: Rig) -> None:
    node = await rig.node("pi-9")

    def lines(n: int, level: str = "ERROR", unit: str = "robot", source: str = "demo") -> list[dict[str, object]]:
        return [{"seq": i, "ts": rig.clock(), "source": source, "unit": unit, "demo": "t", "level": level,
                 "msg": "boom"} for i in range(n)]

    rig.engine.observe_logs(node, lines(30))
    rig.engine.observe_logs(node, lines(100, level="WARNING"))
    rig.engine.observe_logs(node, lines(100, source="system", unit="kernel"))
    await rig.engine.evaluate()
    assert rig.sink.take() == []  # 30 is not above 30
    rig.engine.observe_logs(node, lines(1, level="CRITICAL"))
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "log_errors", "demo:pi-9/robot")]
    assert await rig.after(61) == [("resolved", "log_errors", "demo:pi-9/robot")]


async def test_a_backlog_of_old_error_lines_is_not_a_rate_now(rig: Rig) -> None:
    """A node that reconnects ships what it wrote while away: those lines count by when they were
    written (node clock, its skew applied), not by when they arrived."""
    node = await rig.node("pi-8")
    node.clock_skew = 3600.0  # the node's clock is an hour ahead
    old = [{"seq": i, "ts": rig.clock() + 3600.0 - 120, "source": "demo", "unit": "robot", "demo": "t",
            "level": "ERROR", "msg": "boom"} for i in range(100)]
    rig.engine.observe_logs(node, old)
    await rig.engine.evaluate()
    assert rig.sink.take() == []
    rig.engine.observe_logs(node, [{**line, "ts": rig.clock() + 3600.0 - 5} for line in old])
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "log_errors", "demo:pi-8/robot")]


async def test_an_operator_log_rule_counts_matching_lines_in_its_scope(rig: Rig) -> None:
    a = await rig.node("pi-a", group="hall-a")
    b = await rig.node("pi-b", group="hall-b")
    await rig.engine.add_rule({"name": "usb-reset", "type": "log", "pattern": r"usb \d+-\d+: reset", "rate": 2,
                               "scope": {"group": "hall-a"}}, "alice")
    line = {"seq": 1, "ts": rig.clock(), "source": "system", "unit": "kernel", "demo": "", "level": "INFO",
            "msg": "usb 1-1: reset high-speed USB device"}
    for node in (a, b):
        rig.engine.observe_logs(node, [line, line, line, {**line, "msg": "usb hub found"}])
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "usb-reset", "unit:pi-a/kernel")]


async def test_a_log_rule_over_its_matching_budget_is_suspended(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    node = await rig.node("pi-a")
    await rig.engine.add_rule({"name": "slowish", "type": "log", "pattern": "x.*y", "rate": 1}, "alice")
    monkeypatch.setattr(engine_module, "LOG_BUDGET_S", 0.0)  # any cost is over budget
    line = {"seq": 1, "ts": rig.clock(), "source": "system", "unit": "u", "demo": "", "level": "INFO", "msg": "x y"}
    rig.engine.observe_logs(node, [line, line])
    assert "suspended" in rig.engine.rule_view(rig.engine.rules["slowish"])["suspended"]
    rig.engine.observe_logs(node, [line] * 5)  # not counted while suspended
    await rig.engine.evaluate()
    [alert] = rig.engine.open_alerts()
    assert "2 lines" in alert.summary


async def test_metric_rules_scoped_and_tuned(rig: Rig) -> None:
    pi = await rig.node("pi-a", kind="raspberry")
    desk = await rig.node("desk-1", kind="desktop")
    rule = await rig.engine.add_rule({"name": "hot-pis", "type": "metric", "metric": "temp", "threshold": 60,
                                      "clear": 55, "for": "0s", "severity": "critical",
                                      "scope": {"kind": "raspberry"}}, "alice")
    assert rule.for_s == 0 and rule.severity == "critical"
    metrics(rig, pi, temp=65.0)
    metrics(rig, desk, temp=65.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "hot-pis", "node:pi-a")]
    # A raised threshold moves the band with it: 66 is above the new clear (65), so the alert holds.
    metrics(rig, pi, temp=66.0)
    await rig.engine.set_rule("hot-pis", {"threshold": 70}, "alice")
    assert rig.engine.rules["hot-pis"].clear == 65.0
    await rig.engine.evaluate()
    assert rig.sink.take() == []
    metrics(rig, pi, temp=65.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("resolved", "hot-pis", "node:pi-a")]
    metrics(rig, pi, disk=99.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "disk_full", "node:pi-a")]
    await rig.engine.set_rule("disk_full", {"enabled": False}, "alice")
    await rig.engine.evaluate()
    assert rig.sink.take() == [("resolved", "disk_full", "node:pi-a")]
    # Tuning survives a restart; removing a stock rule's tuning brings its defaults back.
    engine = await rig.restart()
    assert engine.rules["disk_full"].enabled is False and engine.rules["hot-pis"].threshold == 70
    await engine.remove_rule("disk_full", "alice")
    assert engine.rules["disk_full"].enabled is True


async def test_rule_changes_are_refused_with_the_reason(rig: Rig) -> None:
    with pytest.raises(RuleError) as exc:
        await rig.engine.add_rule({"name": "x", "type": "metric", "metric": "humidity", "threshold": 1}, "a")
    assert exc.value.code == "unknown_metric"
    with pytest.raises(RuleError) as exc:
        await rig.engine.set_rule("disk_full", {"for": "5 minutes"}, "a")
    assert exc.value.code == "bad_duration"
    with pytest.raises(RuleError) as exc:
        await rig.engine.add_rule({"name": "disk_full", "type": "metric", "metric": "disk", "threshold": 1}, "a")
    assert exc.value.code == "name_taken"
    with pytest.raises(AlertError) as missing:
        await rig.engine.set_rule("nope", {"enabled": False}, "a")
    assert missing.value.code == "not_found"
    assert (await rig.rows("SELECT count(*) AS n FROM alert_rules"))[0]["n"] == 0


async def test_pi_throttling_clock_skew_and_an_outdated_daemon(rig: Rig) -> None:
    node = await rig.node("pi-t")
    rig.registry.set_metrics(node, {"ts": rig.clock(), "throttled": "0x50005"}, {})
    node.clock_skew = -45.0
    node.daemon_version = "0.9.0"
    await rig.engine.set_rule("clock_skew", {"for": 0}, "alice")
    await rig.engine.set_rule("daemon_outdated", {"for": 0}, "alice")
    await rig.engine.evaluate()
    by_rule = {a.rule: a for a in rig.engine.open_alerts()}
    assert set(by_rule) == {"pi_throttled", "clock_skew", "daemon_outdated"}
    assert "under-voltage" in by_rule["pi_throttled"].summary and "throttled" in by_rule["pi_throttled"].summary
    assert "-45.0 s" in by_rule["clock_skew"].summary
    rig.registry.set_metrics(node, {"ts": rig.clock(), "throttled": "0x50000"}, {})  # happened since boot only
    node.clock_skew = 20.0  # above the clear threshold (10 s): held
    rig.release[0] = "0.9.0"
    await rig.engine.evaluate()
    assert {a.rule for a in rig.engine.open_alerts()} == {"clock_skew"}


async def test_quiet_hours_hook_holds_notices_back(rig: Rig) -> None:
    asked: list[tuple[str | None, str]] = []

    def closed(group: str | None, severity: str) -> bool:
        asked.append((group, severity))
        return severity != "critical"

    rig.engine.quiet = closed
    node = await rig.node("pi-q")
    metrics(rig, node, disk=99.0)
    await rig.engine.evaluate()
    assert rig.sink.take() == [] and ("hall-a", "warning") in asked
    assert rig.engine.alert_view(rig.engine.open_alerts()[0])["silenced_by"] == "quiet hours"
    rig.engine.quiet = lambda group, severity: False
    await rig.engine.evaluate()
    assert rig.sink.take() == [("firing", "disk_full", "node:pi-q")]


async def test_one_commit_for_a_hall_going_dark(rig: Rig) -> None:
    nodes = [await rig.node(f"n{i:03}") for i in range(200)]
    await rig.engine.evaluate()
    commits = rig.writer.commits
    for node in nodes:
        node.liveness = "offline"
    await rig.engine.evaluate()
    assert len(rig.sink.take()) == 200
    assert rig.writer.commits - commits == 1


async def test_a_full_pass_gives_the_event_loop_turns(rig: Rig) -> None:
    """A pass over a large fleet must not hold the loop (the nodes' frames and acks) from start to end."""
    nodes = [await rig.node(f"n{i:03}") for i in range(300)]
    for node in nodes:
        metrics(rig, node, disk=95.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticks_seen: list[int] = []
    evaluate_node = rig.engine._evaluate_node

    def counting(node: NodeState, now: float, changes: engine_module.Changes) -> None:
        ticks_seen.append(ticks)
        evaluate_node(node, now, changes)

    rig.engine._evaluate_node = counting  # type: ignore[method-assign]
    rig.engine.pass_slice_s = 0.0  # a turn after every 64 nodes
    ticking = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)
        await rig.engine.evaluate()
    finally:
        ticking.cancel()
    assert len(ticks_seen) == 300
    assert len(set(ticks_seen)) >= 300 // 64  # the loop ran other tasks between the slices
    assert len(rig.sink.take()) == 300  # and the pass still judged every node, in one commit


async def test_stream_frames_for_changes_and_counts(rig: Rig) -> None:
    sub = rig.bus.subscribe()
    node = await rig.node("pi-s")
    metrics(rig, node, disk=99.0)
    await rig.engine.evaluate()
    frames = []
    while not sub.queue.empty():
        frames.append(sub.queue.get_nowait())
    import json

    decoded = [json.loads(f) for f in frames]
    alert_frames = [f for f in decoded if f["type"] == "alert"]
    assert alert_frames[0]["change"] == "firing" and alert_frames[0]["alert"]["rule"] == "disk_full"
    assert [f["counts"] for f in decoded if f["type"] == "alerts"][-1] == {
        "firing": 1, "acknowledged": 0, "silenced": 0, "open": 1}


async def test_resolved_alerts_and_ended_silences_are_forgotten_after_the_history_window(rig: Rig) -> None:
    node = await rig.node("pi-old")
    metrics(rig, node, disk=99.0)
    await rig.engine.evaluate()
    metrics(rig, node, disk=10.0)
    await rig.engine.evaluate()
    await rig.engine.add_silence(silence_request({"node": "pi-old", "for": "1h"}), "alice")
    metrics(rig, node, disk=99.0)
    await rig.engine.evaluate()  # a second alert, still open
    rig.clock.advance(rig.engine.history_s + 7200)
    await rig.engine._trim()
    assert [r["state"] for r in await rig.rows("SELECT state FROM alerts")] == ["firing"]
    assert len(await rig.rows("SELECT * FROM alert_events")) == 2  # the open alert's: fired, suppressed
    assert await rig.rows("SELECT * FROM silences") == []


async def test_an_alert_and_its_notification_are_stored_in_one_commit(rig: Rig) -> None:
    """With the real dispatcher as the sink: the alert's row and the notification that tells of it
    are one commit, so a crash between them can neither lose the notice nor tell of a change that
    was never stored."""
    dispatcher = Dispatcher(rig.writer, rig.read_db, Notify())
    rig.engine.sink = dispatcher
    try:
        assert await dispatcher.add_channel(parse_channel("ops", "webhook", {"url": "http://127.0.0.1:9/x"}), "alice")
        node = await rig.node("pi-1")
        metrics(rig, node, disk=97.0)
        before = rig.writer.commits
        await rig.engine.evaluate()
        assert rig.writer.commits == before + 1
        alerts = await rig.rows("SELECT id, rule FROM alerts")
        queued = await rig.rows("SELECT n.channel, nn.notice FROM notifications n "
                                "JOIN notification_notices nn ON nn.notification_id = n.id")
        assert [a["rule"] for a in alerts] == ["disk_full"]
        assert [q["channel"] for q in queued] == ["ops"] and json.loads(queued[0]["notice"])["alert"]["id"] == alerts[0]["id"]
    finally:
        await dispatcher.close()
