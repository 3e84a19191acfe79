"""What one node may send (security review M5, M6): metrics, events, keep-alives and demos are bounded
per node, against a real server and a node connected over mutual TLS; a real daemon's rates pass."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.messages import MAX_DEMO_HEADER_CHARS, parse_node_message
from central.nodelimits import ABUSE_DROPS, EVENTS_BURST, KEEPALIVE_BURST, METRICS_BURST, NodeLimits
from central.registry import PUBLISH_WINDOW_S
from tests.support.fake_node import FakeNode
from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for, wait_for


def sample(ts: float, cpu: float = 5.0) -> dict[str, Any]:
    """A metrics frame giving 10 stored series (the review's reproduction)."""
    return {"type": "metrics", "ts": ts, "cpu": {"total": cpu}, "load": [1], "mem": {"percent": 1},
            "swap": {"percent": 1}, "uptime": 5, "procs": 5, "net": {"rx_bytes": 1, "tx_bytes": 1},
            "disks": [{"percent": 3}], "temps": [{"celsius": 40}]}


SERIES = 10


def count(server: CentralServer, sql: str, *params: Any) -> int:
    return int(server.query(sql, params)[0][0])


def metric_rows(server: CentralServer, node_id: str) -> int:
    return count(server, "SELECT count(*) FROM metrics_raw WHERE node_id = ?", node_id)


def node_events(server: CentralServer, node: str, kind: str) -> list[dict[str, Any]]:
    status, body = server.api("GET", f"/api/v1/events?node={node}&kind={kind}&limit=1000")
    assert status == 200, body
    return body["events"]


async def flood(node: FakeNode, frames: list[str]) -> int:
    """Send frames as fast as the socket takes them; returns how many went out before the server closed."""
    assert node.ws is not None
    sent = 0
    for text in frames:
        try:
            await node.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            break
        sent += 1
        if sent % 200 == 0:
            await asyncio.sleep(0)  # let the reader task run
    return sent


async def all_processed(node: FakeNode) -> list[dict[str, Any]]:
    """A log line after everything else: its ack says the server read every frame before it.
    Returns the other frames the server sent meanwhile."""
    await node.send({"type": "logs", "lines": [node.line("after the flood")]})
    others = []
    while (msg := await node.recv(timeout=60))["type"] != "ack":
        others.append(msg)
    return others


class Viewer:
    """A live-stream client that counts the node frames of one node."""

    def __init__(self, server: CentralServer, node_name: str) -> None:
        self.server = server
        self.node_name = node_name
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Viewer:
        self.http = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        self.ws = await self.http.ws_connect(self.server.url + "/api/v1/stream", headers=headers,
                                             ssl=self.server.ssl_context, max_msg_size=0)
        assert json.loads((await self.ws.receive(timeout=10)).data)["type"] == "hello"
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data)
            if frame.get("type") == "node" and frame["node"]["name"] == self.node_name:
                self.frames += 1

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ws.close()
        await self.http.close()


# -- M5: metrics, events, keep-alives ----------------------------------------------------------

async def test_a_metrics_flood_is_bounded_in_stored_rows_and_in_frames_to_a_viewer(central_server: CentralServer):
    server = central_server  # interval 5 s: 2 samples per interval after a burst of METRICS_BURST
    bundle = server.enroll("flooder")
    async with Viewer(server, "flooder") as viewer, greeted(bundle) as node:
        start_frames = viewer.frames
        started = time.monotonic()
        now = time.time()
        sent = await flood(node, [json.dumps(sample(now + i * 0.001)) for i in range(4000)])
        assert sent == 4000
        others = await all_processed(node)
        elapsed = time.monotonic() - started
        accepted_max = METRICS_BURST + 2 * (elapsed / 5.0) + 1
        rows = wait_for(lambda: metric_rows(server, bundle["node_id"]) >= METRICS_BURST * SERIES and
                        metric_rows(server, bundle["node_id"]), timeout=20, what="the accepted samples stored")
        assert rows <= accepted_max * SERIES, (rows, elapsed)  # not 4,000 samples
        errors = [m for m in others if m["type"] == "error"]
        assert len(errors) == 1 and errors[0]["code"] == "rate_limited", others  # told once per window
        assert "per 5 s interval" in errors[0]["message"]
        # live clients get the node's summary at most once per publication window, not once per sample
        # (the first one may still be waiting for its window when the flood ends)

        async def published() -> bool:
            return viewer.frames > start_frames

        await async_wait_for(published, timeout=10, what="the flooder's summary published")
        elapsed = time.monotonic() - started
        assert viewer.frames - start_frames <= elapsed / PUBLISH_WINDOW_S + 3, (viewer.frames, elapsed)
        await node.send(sample(time.time()))  # the node is still connected and heard
    limited = node_events(server, "flooder", "rate_limited")
    assert len(limited) == 1 and limited[0]["data"]["what"] == "metrics"
    assert "dropped" in server.log()


async def test_normal_rate_samples_and_a_reconnect_backlog_are_all_stored(tmp_path: Path):
    # The daemon's own behaviour: one sample per interval, and after an outage the last 720 it buffered at once.
    with CentralServer(tmp_path / "central", interval=0.5) as server:
        bundle = server.enroll("steady")
        async with greeted(bundle) as node:
            now = time.time()
            for i in range(720):  # the backlog, oldest first, as the daemon sends it after welcome
                await node.send(sample(now - (720 - i) * 0.5))
            for _ in range(12):  # then the normal rate
                await node.send(sample(time.time()))
                await asyncio.sleep(0.5)  # pacing the node, like its metrics loop
            others = await all_processed(node)
        assert others == []
        wait_for(lambda: metric_rows(server, bundle["node_id"]) == (720 + 12) * SERIES, timeout=20,
                 what="every sample stored")
        assert node_events(server, "steady", "rate_limited") == []


async def test_an_event_flood_is_bounded_per_node(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("chatty")
    async with greeted(bundle) as node:
        frames = [json.dumps({"type": "event", "kind": "error", "message": f"event {i}", "data": {}})
                  for i in range(3000)]
        assert await flood(node, frames) == 3000
        others = await all_processed(node)
    assert [m["code"] for m in others if m["type"] == "error"] == ["rate_limited"]
    stored = count(server, "SELECT count(*) FROM events WHERE node_id = ? AND kind = 'error'", bundle["node_id"])
    assert EVENTS_BURST <= stored <= EVENTS_BURST + 60, stored  # not 3,000
    assert node_events(server, "chatty", "rate_limited")[0]["data"] == {"what": "events",
                                                                          "dropped": 1}


async def test_sustained_abuse_closes_the_connection(central_server: CentralServer):
    bundle = central_server.enroll("abuser")
    async with greeted(bundle) as node:
        text = json.dumps(sample(time.time()))
        await flood(node, [text] * (METRICS_BURST + ABUSE_DROPS + 500))
        assert await node.closed(timeout=60) == 4429
    # it may come back (and is bounded again)
    async with greeted(bundle):
        pass


def test_keepalives_beyond_the_rate_get_a_clear_429(central_server: CentralServer):
    server = central_server
    bundle = server.enroll("esp", kind="esp32")

    def post() -> tuple[int, dict[str, Any], str]:
        req = urllib.request.Request(server.url + "/api/v1/keepalive", method="POST", data=b'{"uptime": 5}',
                                     headers={"Authorization": f"Bearer {bundle['token']}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=server.ssl_context, timeout=10) as resp:
                return resp.status, json.loads(resp.read()), ""
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), exc.headers.get("Retry-After", "")

    answers = [post() for _ in range(KEEPALIVE_BURST + 10)]
    statuses = [a[0] for a in answers]
    assert statuses[:KEEPALIVE_BURST] == [200] * KEEPALIVE_BURST and 429 in statuses, statuses
    refused = next(a for a in answers if a[0] == 429)
    assert refused[1]["error"]["code"] == "rate_limited" and "every 5 s" in refused[1]["error"]["message"]
    assert refused[2] == "5"
    # Samples commit after their answer (history, acknowledged to nobody): wait for the writer.
    accepted = statuses.count(200)
    wait_for(lambda: count(server, "SELECT count(*) FROM metrics_raw WHERE node_id = ?", bundle["node_id"])
             >= accepted, 10, "the accepted samples to be stored")
    assert count(server, "SELECT count(*) FROM metrics_raw WHERE node_id = ?", bundle["node_id"]) == accepted


# -- M6: demos per node --------------------------------------------------------------------------

def demo(token: str, state: str = "alive", header: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "demo", "token": token, "name": f"demo {token}", "pid": 1, "state": state,
            "started_at": time.time() - 60, "exited_at": time.time() if state == "exited" else None,
            "header": header or {"exe": "/usr/bin/python3", "argv": ["demo.py"], "user": "demo", "host": "pi"},
            **extra}


def demo_rows(server: CentralServer, node_id: str) -> int:
    return count(server, "SELECT count(*) FROM demos WHERE node_id = ?", node_id)


def detail_bytes(server: CentralServer, ref: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(server.url + f"/api/v1/nodes/{ref}",
                                 headers={"Authorization": f"Bearer {server.admin_token}"})
    with urllib.request.urlopen(req, context=server.ssl_context, timeout=30) as resp:
        raw = resp.read()
    return len(raw), json.loads(raw)


@pytest.fixture
def small_demo_server(tmp_path: Path) -> Iterator[CentralServer]:
    with CentralServer(tmp_path / "central", extra_args=("--max-demos", "64")) as server:
        yield server


async def test_a_node_announcing_20000_demos_stays_bounded(small_demo_server: CentralServer):
    server = small_demo_server
    bundle = server.enroll("many-demos")
    big = {f"k{j}": "v" * 256 for j in range(64)}  # the largest header the server took before
    async with greeted(bundle) as node:
        frames = [json.dumps(demo(f"t{i:06d}", header=big if i < 100 else None)) for i in range(20000)]
        await flood(node, frames)
        errors = []
        while (msg := await node.ws.receive(timeout=60)).type == aiohttp.WSMsgType.TEXT:
            errors.append(json.loads(msg.data))
        # refused with a clear error, then (thousands refused within a minute) cut off as abuse
        assert [e["code"] for e in errors] == ["too_many_demos", "rate_limited"], errors
        assert "64 running demos" in errors[0]["message"] and "--max-demos" in errors[0]["message"]
        assert node.ws.close_code == 4429
    size, detail = detail_bytes(server, "many-demos")
    assert detail["demos"] == {"alive": 64, "total": 64} and len(detail["demos_list"]) == 64
    assert size < 64 * (MAX_DEMO_HEADER_CHARS + 400) + 20_000, size  # was 317 MiB for 19,000 demos
    assert all(len(json.dumps(d["header"])) <= MAX_DEMO_HEADER_CHARS for d in detail["demos_list"])
    assert demo_rows(server, bundle["node_id"]) == 64
    async with greeted(bundle) as node:
        # an exited demo makes room for a new one; a running one is never pushed out
        await node.send(demo("t000003", state="exited"))
        await node.send(demo("new-one"))
        await all_processed(node)
        tokens = {d["token"] for d in server.node("many-demos")["demos_list"]}
        assert "new-one" in tokens and "t000003" not in tokens and len(tokens) == 64
        assert demo_rows(server, bundle["node_id"]) == 64
    refused = node_events(server, "many-demos", "too_many_demos")
    assert len(refused) == 1 and refused[0]["data"]["what"] == "demos"


async def test_exited_demos_are_forgotten_after_the_age_in_memory_and_in_the_table(tmp_path: Path):
    with CentralServer(tmp_path / "central", extra_args=("--forget-demos-after", "2")) as server:
        bundle = server.enroll("forgetful")
        async with greeted(bundle) as node:
            await node.send(demo("runs"))
            await node.send(demo("ended", state="exited"))
            # a reconnect's announcement of an exit older than the age is not recorded again
            await node.send(demo("long-ago", state="exited", exited_at=time.time() - 3600))
            await all_processed(node)
            assert {d["token"] for d in server.node("forgetful")["demos_list"]} == {"runs", "ended"}

            def forgotten() -> bool:
                shown = {d["token"] for d in server.node("forgetful")["demos_list"]}
                return shown == {"runs"} and demo_rows(server, bundle["node_id"]) == 1

            wait_for(forgotten, timeout=20, what="the exited demo forgotten")
            assert server.node("forgetful")["demos"] == {"alive": 1, "total": 1}


async def test_a_restart_with_a_lower_cap_trims_the_stored_demos(tmp_path: Path):
    with CentralServer(tmp_path / "central", extra_args=("--max-demos", "300")) as server:
        bundle = server.enroll("crowded")
        async with greeted(bundle) as node:
            await flood(node, [json.dumps(demo(f"t{i:04d}", state="exited" if i < 100 else "alive"))
                               for i in range(300)])
            await all_processed(node)
        assert demo_rows(server, bundle["node_id"]) == 300
        server.stop()
        server.extra_args = ("--max-demos", "50")
        server.start()
        wait_for(lambda: demo_rows(server, bundle["node_id"]) == 50, timeout=20, what="the table trimmed")
        detail = server.node("crowded")
        assert detail["demos"] == {"alive": 50, "total": 50}  # the exited ones went first


# -- the rules themselves ------------------------------------------------------------------------

def test_a_demo_header_is_cut_to_a_bounded_size_keeping_the_daemons_fields_first():
    huge = {**{f"k{j}": "v" * 256 for j in range(40)}, "exe": "/usr/bin/python3", "argv": ["a" * 255] * 64,
            "user": "demo", "host": "pi-42"}
    header = parse_node_message(json.dumps({"type": "demo", "token": "t", "state": "alive", "header": huge}))["header"]
    assert len(json.dumps(header, ensure_ascii=False)) <= MAX_DEMO_HEADER_CHARS
    assert (header["exe"], header["user"], header["host"]) == ("/usr/bin/python3", "demo", "pi-42")
    assert 0 < len(header["argv"]) < 64 and header["truncated"] is True
    usual = {"exe": "/usr/bin/python3", "argv": ["robot.py", "--fast"], "user": "demo", "host": "pi-42"}
    kept = parse_node_message(json.dumps({"type": "demo", "token": "t", "state": "alive", "header": usual}))
    assert kept["header"] == usual


def test_the_limits_refill_at_their_rate_and_report_once_per_window():
    limits = NodeLimits.for_interval(5.0, now=1000.0)
    assert sum(limits.allow("metrics", 1000.0) for _ in range(METRICS_BURST + 10)) == METRICS_BURST
    assert not limits.allow("metrics", 1002.0)  # 2 per 5 s: 0.8 of a sample after 2 s
    assert limits.allow("metrics", 1002.5) and not limits.allow("metrics", 1002.5)
    assert limits.drop("metrics", 1003.0) == 1  # the first drop is told at once
    assert [limits.drop("metrics", 1010.0 + i) for i in range(5)] == [0] * 5  # then counted
    assert limits.drop("metrics", 1063.0) == 6  # and told a window later
    assert not limits.abusive
