"""The feature areas on several replicas (issue 18; central/cluster/features.py, forward.py): one
replica, the features leader, evaluates alerts, delivers notifications, runs the calendar's jobs and
follows rollouts; what operators do through another replica acts on it, and its messages reach
nodes held elsewhere. Real replicas on one PostgreSQL, real nodes (a real daemon for the demos), a
real HTTP receiver for notifications, kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from central.cluster.leader import LOCK_CLASS, holders, lock_id
from tests.support.daemon import enrolled_daemon, wait_connected
from tests.support.demos import kill_demos
from tests.support.fake_node import FakeNode
from tests.support.nodes import connected, metrics
from tests.support.postgres import Cluster
from tests.support.receivers import HttpReceiver
from tests.support.releases import archive, publish
from tests.support.replicas import Replicas, StreamClient, known_on, toward, toward_fields
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

# Jobs of the old code (one lock per area) beside the new one: a test naming the leader by the old
# locks runs its scenario on the old code too, and fails there for the right reason.
AREA_LOCKS = {"alerts": ("features", "alerts"), "calendar": ("features", "calendar"), "demos": ("features",)}
FAST = ("--alerts-interval", "0.5", "--notify-group-quiet", "0.3", "--notify-group-window", "0.3")
TAG = "features-e2e"


async def until(condition: Any, timeout: float, what: str) -> Any:
    """async_wait_for, polling the replicas' API four times a second (the machine is shared)."""
    return await async_wait_for(condition, timeout, what, interval=0.25)


@pytest.fixture
def replicas(tmp_path: Path, pg_cluster: Cluster) -> Iterator[list[CentralServer]]:
    with Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2, interval=1, offline_after=3,
                  extra_args=FAST) as servers:
        yield servers


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as http:
        yield http


async def leader_and_other(servers: list[CentralServer], area: str = "alerts") -> tuple[CentralServer, CentralServer]:
    """(the replica leading `area`, the other), once the other forwards its calls."""
    url = servers[0].database or ""
    names = AREA_LOCKS[area]

    async def held() -> str | None:
        conn = await asyncpg.connect(url)
        try:
            now = await holders(conn, names)
        finally:
            await conn.close()
        return next((now[n] for n in names if n in now), None)

    name = await until(held, 30, f"a replica to lead {area}")
    leader = next(s for s in servers if s.name == name)
    other = next(s for s in servers if s is not leader)
    await until(lambda: other.api("GET", "/api/v1/rules")[0] == 200, 20, f"{other.name} to forward to {leader.name}")
    return leader, other


def firing_notices(receiver: HttpReceiver, rule: str) -> list[dict[str, Any]]:
    out = []
    for received in list(receiver.accepted):
        body = received.json()
        if body["kind"] == "firing" and any(a["rule"] == rule for a in body["alerts"]):
            out.append(body)
    return out


def alert_of(server: CentralServer, rule: str, node: str) -> dict[str, Any] | None:
    status, body = server.api("GET", f"/api/v1/alerts?node={node}")
    assert status == 200, body
    return next((a for a in body["alerts"] if a["rule"] == rule), None)


@contextlib.asynccontextmanager
async def sending_node(bundle: dict[str, Any], every: float,
                       message: Callable[[FakeNode], dict[str, Any]]) -> AsyncIterator[FakeNode]:
    """A node that sends `message(node)` every `every` seconds while the block runs."""
    async with connected(bundle) as node:
        async def keep_sending() -> None:
            while True:
                await node.send(message(node))
                await asyncio.sleep(every)  # (a load, not a synchronisation: the tests wait for conditions)

        task = asyncio.create_task(keep_sending())
        try:
            yield node
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def logging_node(bundle: dict[str, Any], text: str) -> contextlib.AbstractAsyncContextManager[FakeNode]:
    """A node that logs an ERROR line containing `text` every 0.2 s while the block runs."""
    return sending_node(bundle, 0.2, lambda node: {
        "type": "logs", "lines": [node.line(f"{text} {node.seq + 1}", level="ERROR")]})


def add_channel_and_rule(via: CentralServer, receiver: HttpReceiver, rule: str, pattern: str) -> None:
    status, body = via.api("POST", "/api/v1/channels/ops", {"kind": "webhook", "url": receiver.url + "/ops"})
    assert status in (201, 409), body
    status, body = via.api("POST", "/api/v1/rules", {"name": rule, "type": "log", "pattern": pattern, "rate": 1})
    assert status == 201, body


async def test_a_rule_and_an_ack_through_the_other_replica_act_on_the_leader_once(
        replicas: list[CentralServer], receiver: HttpReceiver) -> None:
    leader, other = await leader_and_other(replicas)
    add_channel_and_rule(other, receiver, "boom", "BOOM")
    bundle = other.enroll("pi-boom", kind="raspberry", group="hall-a")
    known_on(leader, bundle["node_id"])
    # The node is on the replica that does not lead: its lines reach the leader's log rule on the bus.
    async with logging_node(toward(bundle, other), "BOOM"):
        fired = await until(lambda: alert_of(other, "boom", "pi-boom"), 30, "the log alert, seen through the other")
        assert fired == alert_of(leader, "boom", "pi-boom")  # one truth: the leader's answer, unchanged
        await until(lambda: firing_notices(receiver, "boom"), 30, "the notification at the receiver")
        status, acked = other.api("POST", f"/api/v1/alerts/{fired['id']}/ack", {"note": "on it"})
        assert status == 200 and acked["state"] == "acknowledged", acked
        assert (alert_of(leader, "boom", "pi-boom") or {})["state"] == "acknowledged"
        await until(lambda: any(r.json()["kind"] == "acknowledged" for r in list(receiver.accepted)), 30,
                 "the acknowledgement's notification")
        # Still matching lines: the leader evaluates on, the alert stays the same one, acknowledged.
        passes = leader_passes(leader)
        await until(lambda: leader_passes(leader) >= passes + 4, 30, "a few more evaluations on the leader")
    assert len(firing_notices(receiver, "boom")) == 1, receiver.accepted
    assert sum(r.json()["kind"] == "acknowledged" for r in list(receiver.accepted)) == 1
    rows = leader.query("SELECT count(*) FROM alerts WHERE rule = 'boom'")
    assert rows == [(1,)]
    # Each call was audited once, by the leader that answered it (not again by the forwarding replica).
    audited = leader.query("SELECT count(*) FROM audit WHERE action = 'POST /api/v1/rules'")
    assert audited == [(1,)]


def metrics_text(server: CentralServer) -> str:
    import urllib.request

    request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {server.admin_token}"})
    with urllib.request.urlopen(request, context=server.ssl_context, timeout=10) as resp:
        return str(resp.read().decode())


def leader_passes(server: CentralServer) -> float:
    """The alert engine's evaluation passes, from the leader's /metrics."""
    for line in metrics_text(server).splitlines():
        if line.startswith("dvic_server_alert_passes_total"):
            return float(line.split()[-1])
    raise AssertionError("no dvic_server_alert_passes_total in /metrics")


async def test_no_leader_is_a_clear_503_and_calls_go_through_once_one_leads(replicas: list[CentralServer]) -> None:
    r1, r2 = replicas
    await leader_and_other(replicas)
    conn = await asyncpg.connect(r1.database or "")
    try:
        # Whoever leads is cut off from the database (its lock session ends) and an outsider takes
        # the lock first: no replica leads now.
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE application_name LIKE 'dvic-central leader %'")
        await until(lambda: conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS,
                                                   lock_id("features")), 20, "the outsider to take the lock")

        def refused(server: CentralServer) -> dict[str, Any] | None:
            status, body = server.api("GET", "/api/v1/alerts")
            return body if status == 503 else None

        for server in (r1, r2):
            body = await until(lambda s=server: refused(s), 20, f"{server.name} to say no replica leads")
            assert body["error"]["code"] == "leader_unavailable", body
            assert "no replica leads the feature areas now" in body["error"]["message"], body
        # Not a feature area: answered as ever.
        assert r2.api("GET", "/api/v1/nodes")[0] == 200
    finally:
        await conn.close()  # the outsider goes: a replica takes the lead
    for server in (r1, r2):
        await until(lambda s=server: s.api("GET", "/api/v1/alerts")[0] == 200, 30, f"{server.name} to answer again")


def utc_clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def operator(server: CentralServer, name: str) -> str:
    status, body = server.api("POST", "/api/v1/operators", {"name": name, "role": "operator"})
    assert status == 201, body
    return str(body["token"])


async def test_a_runbook_and_a_booking_through_the_other_replica_are_what_the_leader_uses(
        replicas: list[CentralServer]) -> None:
    leader, other = await leader_and_other(replicas, "calendar")
    bundle = other.enroll("pi-hall", kind="raspberry", group="hall")
    known_on(leader, bundle["node_id"])
    status, hours = other.api("PUT", "/api/v1/calendar/hall/hours", {"hours": ["daily 00:00-23:59"]})
    assert status == 200, hours
    assert leader.api("GET", "/api/v1/calendar")[1] == other.api("GET", "/api/v1/calendar")[1]
    due = time.time() + 6
    status, body = other.api("POST", "/api/v1/runbooks", {"group": "hall", "name": "soon", "at": utc_clock(due),
                                                          "steps": ["run true"]})
    assert status == 201, body
    # The leader's scheduler fires it (once): it knows a runbook added through the other replica.
    await until(lambda: leader.query("SELECT count(*) FROM firings f JOIN runbooks r ON r.id = f.runbook_id"
                                  " WHERE r.name = 'soon'") == [(1,)], 30, "the runbook to fire on the leader")

    # A booking made through the other replica holds the node on both (remote control is checked
    # where the operator lands).
    alice, bob = operator(other, "alice"), operator(other, "bob")
    status, booking = other.api("POST", "/api/v1/bookings", {"nodes": ["pi-hall"], "from": "now", "to": "+1h"},
                                token=alice)
    assert status == 201, booking
    for server in (leader, other):
        def refused(s: CentralServer = server) -> dict[str, Any] | None:
            status, answer = s.api("POST", "/api/v1/commands", {"nodes": ["pi-hall"], "argv": ["true"]}, token=bob)
            return answer if status == 403 else None
        answer = await until(refused, 10, f"{server.name} to refuse bob on the booked node")
        assert answer["error"]["code"] == "booked", answer
        assert server.node("pi-hall")["booking"]["holder"] == "alice"


def demo_release(tmp: Path, version: str) -> bytes:
    program = b"import sys, time\nwhile True:\n    time.sleep(1)\n"
    path = archive(tmp / f"sleeper-{version}.tar.gz",
                   {"name": "sleeper", "version": version, "run": [sys.executable, "demo.py", TAG]},
                   {"demo.py": program})
    return path.read_bytes()


def demo_row(server: CentralServer, node: str) -> dict[str, Any] | None:
    status, body = server.api("GET", "/api/v1/demos/status?demo=sleeper")
    assert status == 200, body
    return next((r for r in body["status"] if r["node_name"] == node), None)


async def test_a_deployment_through_the_other_replica_reaches_daemons_held_elsewhere(
        replicas: list[CentralServer], tmp_path: Path) -> None:
    leader, other = await leader_and_other(replicas, "demos")
    homes = [tmp_path / "pi-demo", tmp_path / "pi-late"]
    # The daemons are on the replica that does not lead: the leader's demos_desired goes through it,
    # the daemons' install and status reports come back through it.
    node_id, daemon = enrolled_daemon(other, homes[0], name="pi-demo", group="hall-d",
                                      bundle_overrides=toward_fields(other))
    late_id, late = enrolled_daemon(other, homes[1], name="pi-late", group="hall-d",
                                    bundle_overrides=toward_fields(other))
    known_on(leader, node_id)
    known_on(leader, late_id)
    try:
        with daemon:
            wait_connected(other, node_id, daemon)
            await until(lambda: leader.node(node_id)["connected"], 20, "the leader to see the node connected")
            status, release = publish(other, demo_release(tmp_path, "1.0.0"))  # streamed through to the leader
            assert status == 201, release
            # (without a Content-Length too: passed on chunked as it comes)
            status, chunked = publish(other, demo_release(tmp_path, "1.0.1"), chunked=True)
            assert status == 201 and chunked["version"] == "1.0.1", chunked
            assert [r["version"] for r in leader.api("GET", "/api/v1/demos/sleeper/releases")[1]["releases"]] == [
                "1.0.0", "1.0.1"]
            status, dep = other.api("POST", "/api/v1/deployments", {"demo": "sleeper", "version": "1.0.0",
                                                                    "group": "hall-d"})
            assert status == 201, dep

            def done(server: CentralServer) -> dict[str, Any] | None:
                got, body = server.api("GET", f"/api/v1/deployments/{dep['id']}")
                assert got == 200, body
                return body if body["state"] != "rolling" else None

            final = await until(lambda: done(other), 60, "the deployment to end")
            assert final["state"] == "done", final
            assert done(leader) == final
            # A node of the group that connects later (to the other replica) gets it from its hello.
            with late:
                wait_connected(other, late_id, late)
                for server in (leader, other):
                    for name in ("pi-demo", "pi-late"):
                        row = await until(lambda s=server, n=name: (r := demo_row(s, n))
                                          and r["state"] in ("running", "healthy") and r,
                                          60, f"the demo's status on {name} through {server.name}")
                        assert row["version"] == "1.0.0"
    finally:
        for home in homes:
            kill_demos(home / "state", TAG)


async def test_killing_the_leader_moves_the_features_which_reload_and_carry_on(
        replicas: list[CentralServer], receiver: HttpReceiver) -> None:
    leader, other = await leader_and_other(replicas)
    add_channel_and_rule(other, receiver, "boom", "BOOM")
    first = other.enroll("pi-one", kind="raspberry", group="hall-a")
    second = other.enroll("pi-two", kind="raspberry", group="hall-a")
    known_on(leader, first["node_id"])
    async with logging_node(toward(first, other), "BOOM"):
        await until(lambda: firing_notices(receiver, "boom"), 30, "the first alert's notification")
        leader.kill()  # kill -9: its lock session ends with it
        # A read through the survivor at once waits for the next leader instead of failing.
        status, listed = await asyncio.to_thread(other.api, "GET", "/api/v1/alerts")
        assert status == 200, listed
        await until(lambda: "leads the feature areas" in other.log(), 30, "the other to lead")
        # It reloaded: the open alert is known, acknowledged through it, and not notified again.
        fired = await until(lambda: alert_of(other, "boom", "pi-one"), 20, "the open alert on the new leader")
        status, acked = other.api("POST", f"/api/v1/alerts/{fired['id']}/ack", {"note": "after the failover"})
        assert status == 200 and acked["state"] == "acknowledged", acked
        # It carries on: a new node's lines raise a new alert, notified once.
        async with logging_node(toward(second, other), "BOOM"):
            await until(lambda: any(a["subject"].endswith("pi-two") or "pi-two" in a["subject"]
                                 for n in firing_notices(receiver, "boom") for a in n["alerts"]),
                     30, "the second node's alert at the receiver")
    # One notification per alert, counted by notification id as a receiver does: delivery is at
    # least once (docs/alerts.md), and a leader killed after the receiver took pi-one's
    # notification but before it recorded the answer has the next leader send that same
    # notification (same id) again. A second notification, or a second firing notice in the
    # alert's history, would be the new leader notifying the open alert again.
    by_id = {n["id"]: n for n in firing_notices(receiver, "boom")}
    subjects = [a["subject"] for n in by_id.values() for a in n["alerts"]]
    assert sum("pi-one" in s for s in subjects) == 1, subjects
    assert sum("pi-two" in s for s in subjects) == 1, subjects
    told = other.query("SELECT a.subject, count(*) FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
                       " WHERE a.rule = 'boom' AND e.what = 'notice_firing' GROUP BY a.subject ORDER BY a.subject")
    assert told == [("demo:pi-one/demo-a", 1), ("demo:pi-two/demo-a", 1)], told
    # Nor ended and raised again by the new leader (its log counts start again from nothing).
    assert not [n for n in list(receiver.accepted) if n.json()["kind"] == "resolved"], receiver.accepted


def reporting_node(bundle: dict[str, Any]) -> contextlib.AbstractAsyncContextManager[FakeNode]:
    """A node that sends its metrics every 0.5 s while the block runs (online through a failover)."""
    return sending_node(bundle, 0.5, lambda node: metrics())


async def test_a_new_leader_keeps_a_demo_alert_raised_by_the_daemons_events_open(
        replicas: list[CentralServer]) -> None:
    leader, other = await leader_and_other(replicas)
    bundle = other.enroll("pi-crash", kind="raspberry", group="hall-a")
    known_on(leader, bundle["node_id"])
    async with reporting_node(toward(bundle, other)) as node:
        # The daemon's supervisor says the demo crash-loops (an event, stored; no demo_status).
        await node.send({"type": "event", "kind": "demo_crashloop", "message": "demo robot 1.0: 5 exits within 60 s",
                         "data": {"demo": "robot", "version": "1.0", "restarts": 5}})
        fired = await until(lambda: alert_of(other, "demo_crashloop", "pi-crash"), 30, "the crash-loop alert")
        leader.kill()
        await until(lambda: "leads the feature areas" in other.log(), 30, "the other to lead")
        passes = leader_passes(other)
        await until(lambda: leader_passes(other) >= passes + 4, 30, "a few evaluations on the new leader")
        # The new leader rebuilt the demo's flag from the stored event: the alert is still the open one.
        kept = alert_of(other, "demo_crashloop", "pi-crash")
        assert kept is not None and kept["id"] == fired["id"] and kept["state"] == "firing", kept
    rows = other.query("SELECT id, state FROM alerts WHERE rule = 'demo_crashloop'")
    assert rows == [(fired["id"], "firing")], rows


async def test_a_new_leader_keeps_a_demo_exited_alert_from_a_failed_status_open(
        replicas: list[CentralServer]) -> None:
    """A demo that cannot start (`demo_status` failed) keeps its demo_exited alert across a change of
    leader: the flag is rebuilt from the stored status, not ended and raised again."""
    leader, other = await leader_and_other(replicas)
    status, body = other.api("PATCH", "/api/v1/rules/demo_exited", {"for": "0s"})
    assert status == 200, body
    bundle = other.enroll("pi-fails", kind="raspberry", group="hall-a")
    known_on(leader, bundle["node_id"])
    async with reporting_node(toward(bundle, other)) as node:
        await node.send({**crashloop_status("robot"), "state": "failed", "message": "cannot start: no such file"})
        fired = await until(lambda: (a := alert_of(other, "demo_exited", "pi-fails")) and a["state"] == "firing" and a,
                            30, "the demo_exited alert")
        leader.kill()
        await until(lambda: "leads the feature areas" in other.log(), 30, "the other to lead")
        passes = leader_passes(other)
        await until(lambda: leader_passes(other) >= passes + 4, 30, "a few evaluations on the new leader")
        kept = alert_of(other, "demo_exited", "pi-fails")
        assert kept is not None and kept["id"] == fired["id"] and kept["state"] == "firing", kept
    rows = other.query("SELECT id, state FROM alerts WHERE rule = 'demo_exited'")
    assert rows == [(fired["id"], "firing")], rows


def alert_series(server: CentralServer) -> dict[str, str]:
    """{subject: state} of the `dvic_alert` series in the server's /metrics, and each `dvic_alerts` count
    as {"count:STATE": value}."""
    out: dict[str, str] = {}
    for line in metrics_text(server).splitlines():
        if line.startswith("dvic_alert{"):
            labels = dict(part.split("=", 1) for part in line[len("dvic_alert{"):line.index("}")].split(","))
            out[labels["subject"].strip('"')] = labels["state"].strip('"')
        elif line.startswith("dvic_alerts{"):
            state = line.split('"')[1]
            out[f"count:{state}"] = line.split()[-1]
    return out


async def test_metrics_on_a_replica_not_leading_show_the_leaders_alerts(replicas: list[CentralServer]) -> None:
    leader, other = await leader_and_other(replicas)
    bundle = other.enroll("pi-scraped", kind="raspberry", group="hall-a")
    known_on(leader, bundle["node_id"])
    subject = "demo:pi-scraped/robot"
    async with reporting_node(toward(bundle, other)) as node:
        await node.send({"type": "event", "kind": "demo_crashloop", "message": "demo robot 1.0: 5 exits within 60 s",
                         "data": {"demo": "robot", "version": "1.0", "restarts": 5}})
        fired = await until(lambda: alert_of(other, "demo_crashloop", "pi-scraped"), 30, "the crash-loop alert")
        # A scrape of the replica that does not lead shows the leader's open alerts (its own engine
        # does not evaluate there), the same as a scrape of the leader.
        shown = await until(lambda: (a := alert_series(other)).get(subject) == "firing" and a, 20,
                            "the alert on the other's /metrics")
        assert shown["count:firing"] == alert_series(leader)["count:firing"] == "1.0", shown
        status, acked = other.api("POST", f"/api/v1/alerts/{fired['id']}/ack", {"note": "seen"})
        assert status == 200, acked
        shown = await until(lambda: (a := alert_series(other)).get(subject) == "acknowledged" and a, 20,
                            "the acknowledgement on the other's /metrics")
        assert shown["count:acknowledged"] == "1.0" and shown["count:firing"] == "0.0", shown
        assert shown == alert_series(leader)


def crashloop_status(demo: str) -> dict[str, Any]:
    return {"type": "demo_status", "demo": demo, "version": "1.0.0", "state": "crashloop", "pid": None,
            "restarts": 5, "since": time.time(), "last_exit": {"code": 1, "signal": None, "at": time.time()},
            "last_heartbeat": None, "message": "5 exits within 60 s"}


def status_row(server: CentralServer, demo: str, node: str) -> dict[str, Any] | None:
    status, body = server.api("GET", f"/api/v1/demos/status?demo={demo}")
    return next((r for r in body["status"] if r["node_name"] == node), None) if status == 200 else None


async def outsider_takes_the_lead(conn: asyncpg.Connection, watcher: CentralServer) -> None:
    """Nobody leads: the leader's lock session ends and an outsider (`conn`) takes the lock first."""
    await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       " WHERE application_name LIKE 'dvic-central leader %'")
    await until(lambda: conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, lock_id("features")),
                20, "the outsider to take the lock")
    await until(lambda: watcher.api("GET", "/api/v1/alerts")[0] == 503, 20, "the replica to know nobody leads")


async def test_a_node_input_sent_while_no_replica_leads_is_taken_by_the_next_leader(
        replicas: list[CentralServer]) -> None:
    r1, r2 = replicas
    await leader_and_other(replicas)
    bundle = r1.enroll("pi-meanwhile", kind="raspberry", group="hall-a")
    known_on(r2, bundle["node_id"])
    conn = await asyncpg.connect(r1.database or "")
    try:
        async with reporting_node(toward(bundle, r2)) as node:
            await outsider_takes_the_lead(conn, r2)
            await node.send(crashloop_status("robot"))
            # Held by r2 ("waits for a leader"), or, if r2 still took r1 for the leader, refused by r1.
            await until(lambda: "demo_status of node pi-meanwhile" in r2.log()
                        or f"demo_status of node {bundle['node_id']} from r2" in r1.log(), 20, "r2 to have the input")
            await conn.close()  # the outsider goes: a replica takes the lead, and the input
            row = await until(lambda: status_row(r2, "robot", "pi-meanwhile"), 30, "the status on the leader")
            assert row["state"] == "crashloop", row
            await until(lambda: alert_of(r2, "demo_crashloop", "pi-meanwhile"), 30, "the crash-loop alert")
    finally:
        await conn.close()


async def test_a_node_input_sent_to_a_leader_that_just_died_is_taken_by_the_next_one(
        replicas: list[CentralServer]) -> None:
    leader, other = await leader_and_other(replicas)
    bundle = other.enroll("pi-late-news", kind="raspberry", group="hall-a")
    known_on(leader, bundle["node_id"])
    async with reporting_node(toward(bundle, other)) as node:
        await until(lambda: leader.node(bundle["node_id"])["connected"], 20, "the leader to see the node")
        leader.kill()
        # The other still takes the dead replica for the leader (its last heartbeat is fresh): the
        # input goes to it, and nobody answers.
        await node.send(crashloop_status("robot"))
        await until(lambda: "leads the feature areas" in other.log(), 30, "the other to lead")
        row = await until(lambda: status_row(other, "robot", "pi-late-news"), 30, "the status on the new leader")
        assert row["state"] == "crashloop", row
        await until(lambda: alert_of(other, "demo_crashloop", "pi-late-news"), 30, "the crash-loop alert")


async def test_log_lines_sent_while_no_replica_leads_count_for_the_next_leaders_log_rules(
        replicas: list[CentralServer], receiver: HttpReceiver) -> None:
    r1, r2 = replicas
    await leader_and_other(replicas)
    add_channel_and_rule(r1, receiver, "boom", "BOOM")
    bundle = r1.enroll("pi-unheard", kind="raspberry", group="hall-a")
    known_on(r2, bundle["node_id"])
    conn = await asyncpg.connect(r1.database or "")
    try:
        async with reporting_node(toward(bundle, r2)) as node:
            await outsider_takes_the_lead(conn, r2)
            # Five matching lines (over the rule's rate of 1 a minute), stored while nobody counts, then none.
            await node.send_logs([node.line(f"BOOM {i}", level="ERROR") for i in range(5)])
            await conn.close()  # the outsider goes: a replica takes the lead and counts the last minute
            fired = await until(lambda: alert_of(r2, "boom", "pi-unheard"), 30, "the log alert on the next leader")
            assert fired["state"] == "firing", fired
    finally:
        await conn.close()


async def test_deployment_and_demo_status_frames_reach_stream_clients_of_a_replica_not_leading(
        replicas: list[CentralServer], tmp_path: Path) -> None:
    """The leader has no stream client of its own; the other's stream still gets the frames the
    leader makes of a node's demo_status and of a deployment (they used to be built only for the
    leader's own clients, so nobody elsewhere saw them)."""
    leader, other = await leader_and_other(replicas, "demos")
    bundle = other.enroll("pi-frames", kind="raspberry", group="hall-f")
    known_on(leader, bundle["node_id"])
    status, release = publish(other, demo_release(tmp_path, "1.0.0"))
    assert status == 201, release
    async with StreamClient(other) as stream, \
            sending_node(toward(bundle, other), 0.5, lambda node: crashloop_status("robot")) as node:
        shown = await until(lambda: next((f for f in stream.of_type("demo_status")
                                          if f["node"] == bundle["node_id"]), None),
                            20, "the node's demo_status frame on the other replica's stream")
        assert shown["demo"] == "robot" and shown["state"] == "crashloop", shown
        status, dep = other.api("POST", "/api/v1/deployments", {"demo": "sleeper", "version": "1.0.0",
                                                                "group": "hall-f"})
        assert status == 201, dep
        # The node reports the install (as a daemon does): the rollout's row changes on the leader.
        await node.send({"type": "demo_install", "demo": "sleeper", "version": "1.0.0", "rollout": dep["id"],
                         "state": "downloading", "message": "", "bytes": 10, "total": 100})
        frame = await until(lambda: next((f for f in stream.of_type("deployment")
                                          if f["deployment"]["id"] == dep["id"]), None),
                            20, "the deployment's frame on the other replica's stream")
        assert frame["deployment"]["nodes"][0]["state"] == "downloading", frame
