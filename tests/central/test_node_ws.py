"""The node websocket against a real server over mutual TLS: hello, logs exactly once, presence."""

from __future__ import annotations

import json
import resource
import sqlite3
import ssl
import time

import aiohttp
import pytest

from tests.support import postgres
from tests.support.fake_node import FakeNode
from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for


def state_of(server: CentralServer, name: str) -> str:
    return server.node(name)["state"]


async def test_hello_welcome_and_node_goes_online_then_offline_when_it_leaves(shared_server: CentralServer):
    bundle = shared_server.enroll("pi-1", kind="raspberry", group="hall-a")
    assert state_of(shared_server, "pi-1") == "new"
    async with FakeNode(bundle) as node:
        await node.connect()
        welcome = await node.hello(os="Debian 12", ips=["10.0.0.4"])
        assert welcome["node_id"] == bundle["node_id"]
        assert welcome["last_seq"] == 0
        assert welcome["settings"]["interval"] == 5.0
        detail = shared_server.node("pi-1")
        assert detail["state"] == "online" and detail["connected"] is True
        assert detail["facts"]["os"] == "Debian 12" and detail["daemon_version"] == "test-0"
    # A closed websocket with no keep-alive turns the node offline at once.
    wait_for(lambda: state_of(shared_server, "pi-1") == "offline", timeout=5, what="offline")

    def messages() -> list[str]:
        return [e["message"] for e in shared_server.api("GET", "/api/v1/events?node=pi-1")[1]["events"]]

    wait_for(lambda: any(m.startswith("online -> offline") for m in messages()), timeout=5, what="offline event")
    assert any(m.startswith("new -> online") for m in messages())


async def test_log_lines_are_acked_after_commit_and_a_replay_is_stored_once(shared_server: CentralServer):
    bundle = shared_server.enroll("pi-2")
    async with greeted(bundle) as node:
        lines = [node.line(f"line {i}") for i in range(1, 11)]
        ack = await node.send_logs(lines)
        assert ack["seq"] == 10
        # The same lines again (a daemon that lost the ack) plus two new ones.
        ack = await node.send_logs(lines[5:] + [node.line("line 11"), node.line("line 12")])
        assert ack["seq"] == 12
    status, body = shared_server.api("GET", "/api/v1/logs?node=pi-2&limit=100")
    assert status == 200
    seqs = sorted(line["seq"] for line in body["lines"])
    assert seqs == list(range(1, 13))
    # Reconnecting tells the node what is durably stored.
    async with FakeNode(bundle) as node:
        await node.connect()
        welcome = await node.hello()
        assert welcome["last_seq"] == 12


async def test_a_newer_connection_replaces_the_older_one(shared_server: CentralServer):
    bundle = shared_server.enroll("pi-3")
    async with FakeNode(bundle) as first, FakeNode(bundle) as second:
        await first.connect()
        await first.hello()
        await second.connect()
        await second.hello()
        assert await first.closed() == 4409
        assert shared_server.node("pi-3")["connected"] is True


async def test_no_client_certificate_is_refused_before_the_upgrade(shared_server: CentralServer):
    bundle = shared_server.enroll("pi-4")
    async with FakeNode(bundle) as node:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await node.connect(with_cert=False)
        assert info.value.status == 401


async def test_certificate_from_another_ca_is_refused(shared_server: CentralServer, tmp_path):
    other = CentralServer(tmp_path / "other").start()
    try:
        foreign = other.enroll("pi-x")
    finally:
        other.stop()
    # Same server URL and CA as the real node, but a certificate the real CA never signed.
    bundle = shared_server.enroll("pi-5")
    forged = {**bundle, "cert_pem": foreign["cert_pem"], "key_pem": foreign["key_pem"]}
    async with FakeNode(forged) as node:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await node.connect()
            await node.hello()


async def test_revoked_node_is_closed_and_refused(shared_server: CentralServer):
    bundle = shared_server.enroll("pi-6")
    async with greeted(bundle) as node:
        status, _ = shared_server.api("DELETE", "/api/v1/nodes/pi-6")
        assert status == 200
        assert await node.closed() == 4403
    async with FakeNode(bundle) as node:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await node.connect()
        assert info.value.status == 403
    assert shared_server.node("pi-6")["revoked"] is True
    status, body = shared_server.api("DELETE", "/api/v1/nodes/pi-6")
    assert status == 409 and body["error"]["code"] == "already_revoked"
    # The machine can be enrolled again under its name; the revoked record keeps its history.
    again = shared_server.enroll("pi-6")
    assert again["node_id"] != bundle["node_id"] and shared_server.node("pi-6")["state"] == "new"
    assert shared_server.node(bundle["node_id"])["name"].startswith("pi-6~revoked-")


async def test_metrics_demo_and_event_messages_reach_the_api(shared_server: CentralServer):
    bundle = shared_server.enroll("pi-7")
    async with greeted(bundle) as node:
        now = time.time()
        sample = {"type": "metrics", "ts": now, "cpu": {"total": 42.0, "per_core": [40.0, 44.0]},
                  "mem": {"percent": 61.5}, "disks": [{"mount": "/", "percent": 30.0}, {"mount": "/data", "percent": 80.0}],
                  "temps": [{"name": "cpu", "celsius": 55.5}], "load": [0.5, 0.4, 0.3], "throttled": "0x0",
                  "uptime": 12, "procs": 140, "net": {"rx_bytes": 10, "tx_bytes": 20}}
        await node.send(sample)
        await node.send({"type": "demo", "token": "0123456789abcdef", "name": "robot-arm", "pid": 4242,
                         "state": "started", "started_at": now, "exited_at": None})
        await node.send({"type": "event", "kind": "failed", "message": "camera unplugged", "data": {}})
        wait_for(lambda: state_of(shared_server, "pi-7") == "failed", timeout=5, what="failed state")
        detail = shared_server.node("pi-7")
        assert detail["metrics"] == {"cpu": 42.0, "mem": 61.5, "disk": 80.0, "temp": 55.5, "load1": 0.5}
        assert detail["sample"] == sample  # as sent (kept marshalled: central/registry.py)
        # A keep-alive's metrics join the node's; its latest sample stays the one the node sent.
        async with aiohttp.ClientSession() as http, http.post(
                bundle["keepalive_url"], json={"rssi": -61}, headers={"Authorization": f"Bearer {bundle['token']}"},
                ssl=shared_server.ssl_context) as resp:
            assert resp.status == 200
        detail = shared_server.node("pi-7")
        assert detail["all_metrics"]["rssi"] == -61.0 and detail["sample"] == sample
        assert detail["demos"] == {"alive": 1, "total": 1}
        assert detail["demos_list"][0]["name"] == "robot-arm"
        await node.send({"type": "demo", "token": "0123456789abcdef", "name": "robot-arm", "pid": 4242,
                         "state": "exited", "started_at": now, "exited_at": now + 1})
        wait_for(lambda: shared_server.node("pi-7")["demos"]["alive"] == 0, timeout=5, what="demo exited")
    status, body = shared_server.api("GET", f"/api/v1/nodes/pi-7/metrics?from={now - 60}&to={now + 60}&step=1")
    assert status == 200 and body["series"]["cpu"][0][1:] == [42.0, 42.0, 42.0]
    status, body = shared_server.api("GET", f"/api/v1/nodes/pi-7/metrics?from={now - 600}&to={now + 600}&step=60")
    assert status == 200 and body["series"]["disk"][0][3] == 80.0
    _, events = shared_server.api("GET", "/api/v1/events?node=pi-7")
    kinds = {e["kind"] for e in events["events"]}
    assert {"demo_started", "demo_exited", "failed", "state"} <= kinds


async def test_keepalive_keeps_a_node_online_after_its_socket_closes(fast_central_server: CentralServer):
    server = fast_central_server
    bundle = server.enroll("esp-1", kind="esp32")
    async with aiohttp.ClientSession() as http:
        async def beat() -> int:
            async with http.post(bundle["keepalive_url"], json={"uptime": 12, "rssi": -61, "firmware": "1.2"},
                                 headers={"Authorization": f"Bearer {bundle['token']}"},
                                 ssl=server.ssl_context) as resp:
                body = await resp.json()
                assert body["node_id"] == bundle["node_id"] and body["interval"] == 1.0
                return resp.status

        assert await beat() == 200
        assert state_of(server, "esp-1") == "online"
        assert server.node("esp-1")["facts"]["firmware"] == "1.2"
        # Silence: offline after offline_after (2 s in this server).
        wait_for(lambda: state_of(server, "esp-1") == "offline", timeout=10, what="offline after silence")
        assert await beat() == 200
        assert state_of(server, "esp-1") == "online"


async def test_silent_but_connected_node_goes_offline(fast_central_server: CentralServer):
    bundle = fast_central_server.enroll("pi-8")
    async with greeted(bundle) as node:
        wait_for(lambda: state_of(fast_central_server, "pi-8") == "offline", timeout=10, what="offline")
        # Speaking again brings it back.
        await node.send({"type": "metrics", "ts": time.time()})
        wait_for(lambda: state_of(fast_central_server, "pi-8") == "online", timeout=5, what="online again")


async def test_many_batches_in_flight_are_all_acked_in_order(shared_server: CentralServer):
    bundle = shared_server.enroll("pi-9")
    async with greeted(bundle) as node:
        for _ in range(20):
            await node.send({"type": "logs", "lines": [node.line(f"x{node.seq}") for _ in range(100)]})
        acks = [(await node.recv())["seq"]]
        while acks[-1] < 2000:  # one ack may cover several batches committed together
            acks.append((await node.recv())["seq"])
        assert acks == sorted(set(acks)) and len(acks) <= 20 and all(a % 100 == 0 for a in acks)
    _, body = shared_server.api("GET", "/api/v1/logs?node=pi-9&limit=1")
    assert body["lines"][0]["seq"] == 2000


@pytest.mark.skipif(postgres.wanted(), reason="fills SQLite's files; PostgreSQL going away: test_pg_outage.py")
async def test_a_full_disk_closes_the_node_without_an_ack_and_the_resent_batch_is_stored_once(
        central_server: CentralServer):
    bundle = central_server.enroll("pi-full")
    wal = central_server.data_dir / "dvic.sqlite3-wal"
    batch_lines: list[dict] = []
    async with greeted(bundle) as node:
        await node.send_logs([node.line("before")])
        # A real write error: the server may not grow its files any more (SQLite sees EFBIG).
        pid = central_server.proc.pid
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (wal.stat().st_size, resource.RLIM_INFINITY))
        try:
            batch_lines = [node.line("y" * 1000) for _ in range(300)]
            await node.send({"type": "logs", "lines": batch_lines})
            error = await node.recv()
            assert error == {"type": "error", "code": "storage", "message": "storage unavailable, retry later"}
            assert await node.closed() == 1011  # closed without an ack for the batch
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    async with FakeNode(bundle) as node:  # what a daemon does: reconnect and resend what was not acked
        await node.connect()
        welcome = await node.hello()
        assert welcome["last_seq"] == 1
        ack = await node.send_logs(batch_lines)
        assert ack["seq"] == 301
    _, body = central_server.api("GET", "/api/v1/logs?node=pi-full&limit=500")
    assert sorted(line["seq"] for line in body["lines"]) == list(range(1, 302))


@pytest.mark.skipif(postgres.wanted(), reason="a SQLite trigger refuses the batch")
async def test_a_batch_the_database_refuses_closes_the_node_and_nothing_after_it_is_acked(
        central_server: CentralServer):
    """A batch the database refuses (a trigger here; the other batches of its commit are stored) is
    not acked, nor is any batch after it, stored or not (an ack is cumulative), and the node is
    closed: it resends them all when it reconnects."""
    bundle = central_server.enroll("pi-refused")
    db = sqlite3.connect(central_server.db_path)
    try:
        async with greeted(bundle) as node:
            assert (await node.send_logs([node.line("before")]))["seq"] == 1
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON logs WHEN NEW.msg = 'refuse me' "
                       "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
            db.commit()
            refused = [node.line("refuse me")]
            later = [[node.line(f"after {i}")] for i in range(20)]  # in its commit or in later ones
            await node.send({"type": "logs", "lines": refused})
            for lines in later:
                await node.send({"type": "logs", "lines": lines})
            assert node.ws is not None
            msg = await node.ws.receive(timeout=10)
            assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1011, "log batch not stored"), msg
        db.execute("DROP TRIGGER refuse")
        db.commit()
        async with FakeNode(bundle) as node:
            await node.connect()
            assert (await node.hello())["last_seq"] >= 1
            assert (await node.send_logs(refused + [line for lines in later for line in lines]))["seq"] == 22
    finally:
        db.close()
    _, body = central_server.api("GET", "/api/v1/logs?node=pi-refused&limit=100")
    assert sorted(line["seq"] for line in body["lines"]) == list(range(1, 23))


@pytest.mark.skipif(postgres.wanted(), reason="fails a store by filling SQLite's files")
async def test_live_subscribers_see_each_line_once_across_replays_and_a_failed_store(
        central_server: CentralServer):
    # Lines go to subscribers when received, before their commit: a replayed batch, and a batch
    # that could not be stored and comes back on reconnect, must not be shown a second time.
    server = central_server
    bundle = server.enroll("pi-tail")
    wal = server.data_dir / "dvic.sqlite3-wal"
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    shown: list[int] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url + "/api/v1/stream", headers=headers, ssl=server.ssl_context) as ws:
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
            await ws.send_str(json.dumps({"type": "subscribe", "logs": ["pi-tail"]}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "subscribed"

            async def read_until(last_seq: int) -> None:
                while not shown or shown[-1] < last_seq:
                    msg = json.loads((await ws.receive(timeout=10)).data)
                    if msg["type"] == "logs":
                        shown.extend(line["seq"] for line in msg["lines"])

            async with greeted(bundle) as node:
                lines = [node.line(f"line {i}") for i in range(1, 11)]
                assert (await node.send_logs(lines))["seq"] == 10
                assert (await node.send_logs(lines[5:] + [node.line("line 11")]))["seq"] == 11
                await read_until(11)
                pid = server.proc.pid
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (wal.stat().st_size, resource.RLIM_INFINITY))
                try:
                    unstored = [node.line("z" * 1000) for _ in range(300)]
                    await node.send({"type": "logs", "lines": unstored})
                    assert (await node.recv())["code"] == "storage"
                    assert await node.closed() == 1011
                finally:
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                await read_until(311)  # shown live although the disk refused them
            async with FakeNode(bundle) as node:
                await node.connect()
                assert (await node.hello())["last_seq"] == 11
                node.seq = 311
                assert (await node.send_logs(unstored + [node.line("after")]))["seq"] == 312
                await read_until(312)
    assert shown == list(range(1, 313))
    _, body = server.api("GET", "/api/v1/logs?node=pi-tail&limit=500")
    assert sorted(line["seq"] for line in body["lines"]) == list(range(1, 313))
