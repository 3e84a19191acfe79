"""The alerts API on the real server: who may do what, bad input refused with the reason, audit rows,
an alert acknowledged, silences and rules changed, and GET /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_node import FakeNode
from tests.support.server import CentralServer
from tests.support.wait import wait_for

ALERTING = ("--alerts-interval", "0.5")


def tokens(server: CentralServer) -> dict[str, str]:
    out = {}
    for role in ("viewer", "operator"):
        status, body = server.api("POST", "/api/v1/operators", {"name": f"{role}-1", "role": role})
        assert status == 201, body
        out[role] = body["token"]
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    srv = CentralServer(tmp_path_factory.mktemp("alerts-api") / "central", interval=1.0, offline_after=2.0,
                        extra_args=ALERTING).start()
    srv.tokens = tokens(srv)  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop()


def token(server: CentralServer, role: str) -> str:
    return server.tokens[role]  # type: ignore[attr-defined,no-any-return]


def audit_actions(server: CentralServer, who: str) -> list[tuple[str, int]]:
    status, body = server.api("GET", "/api/v1/audit?limit=1000")
    assert status == 200, body
    return [(e["action"], e["status"]) for e in body["entries"] if e["operator"] == who]


def refused(server: CentralServer, method: str, path: str, body: Any, role: str = "operator") -> tuple[int, str, str]:
    status, answer = server.api(method, path, body, token=token(server, role))
    return status, answer["error"]["code"], answer["error"]["message"]


def test_a_viewer_reads_and_changes_nothing(server: CentralServer) -> None:
    viewer = token(server, "viewer")
    for path in ("/api/v1/alerts", "/api/v1/alerts?all=1", "/api/v1/silences", "/api/v1/rules"):
        status, body = server.api("GET", path, token=viewer)
        assert status == 200, (path, body)
    status, body = server.api("GET", "/api/v1/rules", token=viewer)
    names = {r["name"] for r in body["rules"]}
    assert {"node_offline", "disk_full", "demo_crashloop", "log_errors", "clock_skew"} <= names
    for method, path, payload in (
        ("POST", "/api/v1/silences", {"group": "hall-a", "for": "1h"}),
        ("POST", "/api/v1/rules", {"name": "x", "type": "metric", "metric": "cpu", "threshold": 90}),
        ("PATCH", "/api/v1/rules/disk_full", {"enabled": False}),
        ("DELETE", "/api/v1/rules/disk_full", None),
        ("POST", "/api/v1/alerts/1/ack", {"note": ""}),
    ):
        assert refused(server, method, path, payload, role="viewer")[:2] == (403, "forbidden")
    assert ("POST /api/v1/silences", 403) in audit_actions(server, "viewer-1")


def test_bad_rules_and_silences_are_refused_with_the_reason(server: CentralServer) -> None:
    metric = {"name": "hot", "type": "metric", "metric": "temp", "threshold": 70}
    cases = [
        ("POST", "/api/v1/rules", {**metric, "metric": "humidity"}, "unknown_metric", "unknown metric 'humidity'"),
        ("POST", "/api/v1/rules", {**metric, "for": "a while"}, "bad_duration", "expected a duration"),
        ("POST", "/api/v1/rules", {"name": "l", "type": "log", "pattern": "(", "rate": 5}, "bad_pattern",
         "not a valid regular expression"),
        ("POST", "/api/v1/rules", {"name": "l", "type": "log", "pattern": "(a+)+$", "rate": 5}, "bad_pattern",
         "nested quantifiers"),
        ("POST", "/api/v1/rules", {"name": "l", "type": "log", "pattern": ".*.*.*=", "rate": 5}, "bad_pattern",
         "too slow"),
        ("PATCH", "/api/v1/rules/disk_full", {"threshold": "high"}, "bad_threshold", "threshold: expected a"),
        ("PATCH", "/api/v1/rules/disk_full", {"clear": 95}, "bad_threshold", "clear (95) must be at or below"),
        ("PATCH", "/api/v1/rules/nope", {"enabled": False}, "not_found", "no rule named 'nope'"),
        ("POST", "/api/v1/silences", {"for": "2h"}, "bad_silence", "at least one of"),
        ("POST", "/api/v1/silences", {"group": "a", "for": "forever"}, "bad_duration", "expected a duration"),
        ("DELETE", "/api/v1/silences/999", None, "not_found", "no current silence #999"),
    ]
    for method, path, body, code, says in cases:
        status, got_code, message = refused(server, method, path, body)
        assert (status >= 400, got_code) == (True, code) and says in message, (body, status, got_code, message)
    status, body = server.api("GET", "/api/v1/rules", token=token(server, "operator"))
    assert not [r for r in body["rules"] if not r["stock"]]  # nothing was added
    disk = next(r for r in body["rules"] if r["name"] == "disk_full")
    assert (disk["threshold"], disk["clear"], disk["tuned"]) == (90, 85, False)


def test_rules_are_added_tuned_and_removed(server: CentralServer) -> None:
    op = token(server, "operator")
    status, rule = server.api("POST", "/api/v1/rules", {"name": "usb-resets", "type": "log",
                                                         "pattern": r"usb \d+-\d+: reset", "rate": 5, "for": "2m",
                                                         "scope": {"group": "hall-a"}}, token=op)
    assert status == 201, rule
    assert (rule["type"], rule["threshold"], rule["for"], rule["scope"]) == ("log", 5, "2m", {"group": "hall-a"})
    status, again = server.api("POST", "/api/v1/rules", {"name": "usb-resets", "type": "log", "pattern": "x",
                                                          "rate": 1}, token=op)
    assert (status, again["error"]["code"]) == (400, "name_taken")
    status, tuned = server.api("PATCH", "/api/v1/rules/disk_full", {"threshold": 95, "for": "5m"}, token=op)
    assert status == 200 and (tuned["threshold"], tuned["clear"], tuned["for"], tuned["tuned"]) == (95, 90, "5m", True)
    status, reset = server.api("DELETE", "/api/v1/rules/disk_full", token=op)
    assert status == 200 and (reset["threshold"], reset["tuned"]) == (90, False)
    status, gone = server.api("DELETE", "/api/v1/rules/usb-resets", token=op)
    assert status == 200
    actions = audit_actions(server, "operator-1")
    assert ("POST /api/v1/rules", 201) in actions and ("PATCH /api/v1/rules/{name}", 200) in actions
    assert ("DELETE /api/v1/rules/{name}", 200) in actions


async def test_an_alert_is_acknowledged_with_a_note_and_silences_show_it(server: CentralServer) -> None:
    op = token(server, "operator")
    async with FakeNode(server.enroll("pi-full", kind="raspberry", group="hall-z")) as node:
        await node.connect()
        await node.hello()
        await node.send({"type": "metrics", "ts": time.time(), "disks": [{"mount": "/", "total": 100, "used": 97,
                                                                           "percent": 97.0}]})

        def disk_alert() -> dict[str, Any] | None:
            _, body = server.api("GET", "/api/v1/alerts?node=pi-full", token=op)
            return next((a for a in body["alerts"] if a["rule"] == "disk_full"), None)

        alert = wait_for(disk_alert, timeout=15, what="the disk_full alert")
        assert (alert["subject"], alert["group"], alert["state"], alert["silenced"]) == (
            "node:pi-full", "hall-z", "firing", False)

        status, silence = server.api("POST", "/api/v1/silences", {"group": "hall-z", "for": "2h",
                                                                  "note": "rewiring"}, token=op)
        assert status == 201 and (silence["group"], silence["note"], silence["created_by"]) == (
            "hall-z", "rewiring", "operator-1")
        assert silence["ends"] - silence["starts"] == pytest.approx(7200)
        shown = disk_alert()
        assert shown is not None and shown["silenced"] is True and shown["silenced_by"] == f"silence {silence['id']}"
        _, listed = server.api("GET", "/api/v1/silences", token=token(server, "viewer"))
        assert [s["id"] for s in listed["silences"]] == [silence["id"]]
        status, removed = server.api("DELETE", f"/api/v1/silences/{silence['id']}", token=op)
        assert status == 200 and removed["removed_by"] == "operator-1"

        status, acked = server.api("POST", f"/api/v1/alerts/{alert['id']}/ack", {"note": "new SD card tomorrow"},
                                   token=op)
        assert status == 200, acked
        assert (acked["state"], acked["acked_by"], acked["ack_note"]) == (
            "acknowledged", "operator-1", "new SD card tomorrow")
        status, twice = server.api("POST", f"/api/v1/alerts/{alert['id']}/ack", {"note": ""}, token=op)
        assert (status, twice["error"]["code"]) == (409, "already_acknowledged")
        status, detail = server.api("GET", f"/api/v1/alerts/{alert['id']}", token=token(server, "viewer"))
        assert status == 200
        whats = [(h["what"], h["who"], h["note"]) for h in detail["history"]]
        assert ("acknowledged", "operator-1", "new SD card tomorrow") in whats
        assert whats[0][0] == "fired"
        assert ("POST /api/v1/alerts/{id}/ack", 200) in audit_actions(server, "operator-1")

        await node.send({"type": "metrics", "ts": time.time(), "disks": [{"mount": "/", "total": 100, "used": 50,
                                                                           "percent": 50.0}]})
        wait_for(lambda: disk_alert() is None, timeout=15, what="the alert resolved")
        _, history = server.api("GET", "/api/v1/alerts?all=1&node=pi-full", token=op)
        assert [(a["id"], a["state"]) for a in history["alerts"]] == [(alert["id"], "resolved")]


def test_metrics_need_a_token(server: CentralServer) -> None:
    status, body = server.api("GET", "/metrics", token="")
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    status, body = server.api("GET", "/metrics", token="dvo_forged")
    assert status == 401 and body["error"]["code"] == "bad_token"
    status, text = server.api("GET", "/metrics", token=token(server, "viewer"))
    assert status == 200 and isinstance(text, str)
    assert "# TYPE dvic_node_up gauge" in text and 'dvic_alerts{state="firing"}' in text
    assert "dvic_server_notifications_pending 0.0" in text


def test_metrics_from_an_allowed_address_need_no_token(tmp_path: Path) -> None:
    srv = CentralServer(tmp_path / "central", extra_args=("--metrics-allow", "127.0.0.0/8")).start()
    try:
        status, text = srv.api("GET", "/metrics", token="")
        assert status == 200 and "dvic_server_nodes_connected 0.0" in text
    finally:
        srv.stop()


def test_a_board_logging_errors_in_its_keepalives_raises_log_errors(server: CentralServer) -> None:
    import json
    import urllib.request

    bundle = server.enroll("esp-noisy", kind="esp32", group="hall-b")
    lines = [{"seq": i + 1, "ms": 1000 + i, "level": "ERROR", "msg": f"i2c read failed ({i})"} for i in range(31)]
    body = {"uptime": 12.0, "logs": {"v": 1, "token": "boot-1", "name": "sensor", "now_ms": 2000, "lines": lines}}
    request = urllib.request.Request(server.url + "/api/v1/keepalive", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {bundle['token']}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=server.ssl_context, timeout=30) as answer:
        assert answer.status == 200

    def errors_alert() -> dict[str, Any] | None:
        _, found = server.api("GET", "/api/v1/alerts?rule=log_errors", token=token(server, "viewer"))
        return next((a for a in found["alerts"] if a["subject"] == "demo:esp-noisy/sensor"), None)

    alert = wait_for(errors_alert, timeout=15, what="the board's log_errors alert")
    assert "31 ERROR+ lines in the last minute" in alert["summary"] and alert["kind"] == "esp32"


async def test_a_supervised_demos_status_raises_and_clears_its_crash_loop(server: CentralServer) -> None:
    status_of = {"type": "demo_status", "demo": "robot-arm", "version": "1.4.0", "pid": None, "restarts": 7,
                 "since": time.time(), "last_exit": {"code": 1, "signal": None, "at": time.time()},
                 "last_heartbeat": None, "message": "5 exits within 60 s"}
    async with FakeNode(server.enroll("pi-loop", kind="raspberry", group="hall-y")) as node:
        await node.connect()
        await node.hello()

        def crashloop() -> list[dict[str, Any]]:
            _, body = server.api("GET", "/api/v1/alerts?rule=demo_crashloop&node=pi-loop", token=token(server, "viewer"))
            return [a for a in body["alerts"] if a["subject"] == "demo:pi-loop/robot-arm"]

        await node.send({**status_of, "state": "crashloop"})
        [alert] = wait_for(crashloop, timeout=15, what="the crash-loop alert")
        assert alert["severity"] == "critical" and alert["summary"] == "demo pi-loop/robot-arm is crash-looping"
        await node.send({**status_of, "state": "healthy", "pid": 4242, "message": ""})
        wait_for(lambda: not crashloop(), timeout=15, what="the alert resolved")
