"""The venue calendar on the real server: hours, bookings (two operators at the same instant: one
wins), the booking check on every remote-control route, runbooks fired on a real daemon (run-now
and a moment a few seconds ahead), and a restart across a due moment (fired once, or missed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProcess
from tests.support.server import REPO, CentralServer, write_bundle
from tests.support.wait import wait_for


def operator(server: CentralServer, name: str, role: str = "operator") -> str:
    status, body = server.api("POST", "/api/v1/operators", {"name": name, "role": role})
    assert status == 201, body
    return str(body["token"])


def utc_clock(ts: float) -> str:
    """HH:MM:SS in UTC: a runbook moment for a group without hours (the server's zone is UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def runbook(server: CentralServer, name: str, at: str, *steps: str, status: int = 201, **more: Any) -> Any:
    """Add a runbook to group hall; the server's answer, once its status is `status`."""
    got, body = server.api("POST", "/api/v1/runbooks", {"group": "hall", "name": name, "at": at, "steps": list(steps),
                                                         **more})
    assert got == status, body
    return body


def down_past(server: CentralServer, moment: float, margin: float, what: str) -> None:
    """Stop the server before `moment`, start it again once `moment + margin` has passed."""
    server.stop()
    assert time.time() < moment, "stopped after the moment: this run proves nothing"
    wait_for(lambda: time.time() > moment + margin, 10, what)
    server.start()


def firings(server: CentralServer, group: str, name: str) -> list[dict[str, Any]]:
    status, body = server.api("GET", f"/api/v1/firings?group={group}&runbook={name}")
    assert status == 200, body
    return list(body["firings"])


def finished(server: CentralServer, group: str, name: str, count: int = 1) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        rows = firings(server, group, name)
        done = [f for f in rows if f["state"] not in ("pending", "running")]
        return rows if len(done) >= count else None

    return wait_for(check, 30, f"{count} finished firing(s) of {name}")


# -- hours -----------------------------------------------------------------------------------------
def test_hours_exceptions_and_who_may_change_them(central_server: CentralServer) -> None:
    server = central_server
    server.enroll("pi-h1", group="hall")
    viewer = operator(server, "vera", "viewer")
    status, body = server.api("PUT", "/api/v1/calendar/hall/hours",
                              {"hours": ["mon-fri 10:00-18:00", "sat 14:00-18:00"], "zone": "Europe/Paris"})
    assert status == 200, body
    assert body["zone"] == "Europe/Paris" and body["hours"][0] == "mon 10:00-18:00" and body["hours"][6] == "sun closed"
    status, body = server.api("PUT", "/api/v1/calendar/hall/exceptions/2099-12-25", {"hours": "closed", "note": "Xmas"})
    assert status == 200 and body["exceptions"] == [{"day": "2099-12-25", "hours": "closed"}], body
    status, body = server.api("PUT", "/api/v1/calendar/hall/exceptions/2099-01-10", {"hours": "09:00-22:00"})
    assert status == 200 and {"day": "2099-01-10", "hours": "09:00-22:00"} in body["exceptions"]

    # Bad input says what to change, and keeps what was accepted.
    for path, sent, code, says in (
        ("/api/v1/calendar/hall/hours", {"hours": ["mon-fri 18:00-10:00"]}, "bad_hours", "ends before it starts"),
        ("/api/v1/calendar/hall/hours", {"hours": ["mon-fri 10:00-18:00"], "zone": "Mars/Base"}, "bad_hours",
         "IANA name"),
        ("/api/v1/calendar/nowhere/hours", {"hours": ["mon 10:00-11:00"]}, "no_such_group", "groups: hall"),
        ("/api/v1/calendar/hall/exceptions/25-12-2099", {"hours": "closed"}, "bad_hours", "write YYYY-MM-DD"),
        ("/api/v1/calendar/hall/exceptions/2099-03-01", {"hours": "10h-12h"}, "bad_hours", "HH:MM-HH:MM"),
    ):
        status, body = server.api("PUT", path, sent)
        assert status in (400, 404) and body["error"]["code"] == code and says in body["error"]["message"], body
    status, body = server.api("GET", "/api/v1/calendar?group=hall&days=2", token=viewer)
    assert status == 200 and body["groups"][0]["hours"][5] == "sat 14:00-18:00", body
    status, body = server.api("PUT", "/api/v1/calendar/hall/hours", {"hours": ["daily closed"]}, token=viewer)
    assert status == 403 and body["error"]["code"] == "forbidden"
    # Audited, refused or not.
    audit = server.api("GET", "/api/v1/audit?limit=50")[1]["entries"]
    assert any(a["action"] == "PUT /api/v1/calendar/{group}/hours" and a["operator"] == "vera" and a["status"] == 403
               for a in audit)


# -- bookings ----------------------------------------------------------------------------------------
def race_to_book(server: CentralServer, tokens: dict[str, str], node: str) -> dict[str, tuple[int, Any]]:
    """Each operator asks for `node` for the next hour, both requests released at the same instant."""
    barrier = threading.Barrier(len(tokens))
    answers: dict[str, tuple[int, Any]] = {}

    def book(who: str) -> None:
        barrier.wait()
        answers[who] = server.api("POST", "/api/v1/bookings", {"nodes": [node], "from": "now", "to": "+1h",
                                                               "note": f"{who}'s project"}, token=tokens[who])

    threads = [threading.Thread(target=book, args=(who,)) for who in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


def test_two_operators_booking_the_same_machine_at_the_same_moment_one_wins(central_server: CentralServer) -> None:
    server = central_server
    tokens = {"alice": operator(server, "alice"), "bob": operator(server, "bob")}
    for round_ in range(6):
        node = f"pi-race-{round_}"
        server.enroll(node, group="lab")
        answers = race_to_book(server, tokens, node)
        statuses = sorted(status for status, _ in answers.values())
        assert statuses == [201, 409], answers
        winner = next(who for who, (status, _) in answers.items() if status == 201)
        loser = next(who for who in tokens if who != winner)
        booking = answers[winner][1]
        error = answers[loser][1]["error"]
        assert error["code"] == "booked"
        assert f"booking {booking['id']} of {winner!r}" in error["message"], error


def test_a_booking_holds_its_machines_for_its_holder_and_admins(central_server: CentralServer) -> None:
    server = central_server
    for name in ("pi-b1", "pi-b2", "pi-b3"):
        server.enroll(name, group="lab", kind="raspberry")
    alice, bob = operator(server, "alice"), operator(server, "bob")
    status, booking = server.api("POST", "/api/v1/bookings", {"group": "lab", "kind": "raspberry", "count": 1,
                                                              "to": "+2h", "note": "project week"}, token=alice)
    assert status == 201 and booking["holder"] == "alice" and len(booking["node_names"]) == 1, booking
    held = booking["node_names"][0]
    free = sorted({"pi-b1", "pi-b2", "pi-b3"} - {held})
    # The fleet view says who holds a machine until when.
    assert server.node(held)["booking"] == {"id": booking["id"], "holder": "alice", "until": booking["ends_at"]}
    listed = {n["name"]: n["booking"] for n in server.api("GET", "/api/v1/nodes?group=lab")[1]["nodes"]}
    assert listed[held] is not None and listed[free[0]] is None

    # Everyone else: 403 naming the booking, on every route that acts on a node.
    for method, path, body in (
        ("POST", "/api/v1/commands", {"nodes": [held], "argv": ["true"]}),
        ("POST", f"/api/v1/nodes/{held}/actions", {"action": "reboot"}),
        ("GET", f"/api/v1/nodes/{held}/shell", None),
        ("GET", f"/api/v1/nodes/{held}/tunnel?host=127.0.0.1&port=22", None),
        ("POST", "/api/v1/update", {"nodes": [held]}),
        ("POST", "/api/v1/deployments", {"demo": "kiosk", "version": "1.0.0", "node": held}),
        ("POST", "/api/v1/deployments/undeploy", {"demo": "kiosk", "node": held}),
        ("POST", "/api/v1/deployments/rollback", {"demo": "kiosk", "node": held}),
    ):
        status, answer = server.api(method, path, body, token=bob)
        assert status == 403, (path, status, answer)
        assert answer["error"]["code"] == "booked", answer
        assert f"booking {booking['id']} of 'alice'" in answer["error"]["message"], answer
    # A group command skips the held machine instead of failing.
    status, cmd = server.api("POST", "/api/v1/commands", {"group": "lab", "argv": ["true"]}, token=bob)
    assert status == 201 and sorted(r["node_name"] for r in cmd["runs"]) == free, cmd
    # The holder and admins may act (the node is offline: the command's run says so).
    for token in (alice, server.admin_token):
        status, cmd = server.api("POST", "/api/v1/commands", {"nodes": [held], "argv": ["true"]}, token=token)
        assert status == 201 and cmd["runs"][0]["state"] in ("offline", "pending"), cmd
        status, answer = server.api("GET", f"/api/v1/nodes/{held}/shell", token=token)
        assert status == 409 and answer["error"]["code"] == "node_offline", answer

    # Capability booking: more than exist, more than are free.
    status, answer = server.api("POST", "/api/v1/bookings", {"group": "lab", "count": 4, "to": "+1h"}, token=bob)
    assert status == 400 and answer["error"]["code"] == "too_many" and "at most 3" in answer["error"]["message"]
    status, answer = server.api("POST", "/api/v1/bookings", {"group": "lab", "count": 3, "to": "+1h"}, token=bob)
    assert status == 409 and answer["error"]["code"] == "not_enough_free", answer
    status, mine = server.api("POST", "/api/v1/bookings", {"group": "lab", "count": 2, "to": "+1h"}, token=bob)
    assert status == 201 and sorted(mine["node_names"]) == free, mine

    # Listings: all, mine, at a time.
    status, body = server.api("GET", "/api/v1/bookings?mine=true", token=bob)
    assert status == 200 and [b["id"] for b in body["bookings"]] == [mine["id"]]
    status, body = server.api("GET", "/api/v1/bookings?at=%2B3h", token=bob)
    assert status == 200 and body["bookings"] == []

    # Only the holder (or an admin) changes a booking; extend, then cancel frees the machine.
    status, answer = server.api("POST", f"/api/v1/bookings/{booking['id']}/cancel", token=bob)
    assert status == 403 and answer["error"]["code"] == "not_yours"
    status, answer = server.api("POST", f"/api/v1/bookings/{booking['id']}/extend", {"to": "+3h"}, token=alice)
    assert status == 200 and answer["ends_at"] > booking["ends_at"] + 3000
    status, answer = server.api("POST", f"/api/v1/bookings/{booking['id']}/cancel", token=alice)
    assert status == 200 and answer["state"] == "cancelled"
    status, cmd = server.api("POST", "/api/v1/commands", {"nodes": [held], "argv": ["true"]}, token=bob)
    assert status == 201, cmd


def test_bad_bookings_say_what_to_change(central_server: CentralServer) -> None:
    server = central_server
    server.enroll("pi-x", group="lab")
    viewer = operator(server, "vic", "viewer")
    for sent, code, says in (
        ({"nodes": ["pi-x"], "from": "+2h", "to": "+1h"}, "bad_time", "the end comes before the start"),
        ({"nodes": ["pi-x"], "from": "2001-01-01T10:00", "to": "2001-01-01T11:00"}, "bad_time", "in the past"),
        ({"nodes": ["pi-x"], "to": "+31d"}, "too_long", "at most 30 days"),
        ({"nodes": ["pi-x"], "to": "tomorrow"}, "bad_time", "+30m"),
        ({"nodes": ["pi-nope"], "to": "+1h"}, "no_such_node", "pi-nope"),
        ({"group": "nowhere", "count": 1, "to": "+1h"}, "no_such_group", "nowhere"),
        ({"nodes": ["pi-x"], "to": "+1h", "deploy": "kiosk@1.0"}, "unknown_demo", "publish it first"),
        ({"to": "+1h"}, "bad_targets", "give node names"),
    ):
        status, body = server.api("POST", "/api/v1/bookings", sent)
        assert status in (400, 404, 409) and body["error"]["code"] == code, (sent, body)
        assert says in body["error"]["message"], (sent, body)
    status, body = server.api("POST", "/api/v1/bookings", {"nodes": ["pi-x"], "to": "+1h"}, token=viewer)
    assert status == 403
    status, body = server.api("GET", "/api/v1/bookings", token=viewer)
    assert status == 200 and body["bookings"] == []


# -- runbooks on a real daemon --------------------------------------------------------------------------
def test_runbooks_fire_on_a_real_daemon_now_and_at_their_moment(central_server: CentralServer,
                                                                  tmp_path: Path) -> None:
    server = central_server
    bundle = server.enroll("pi-hall", group="hall")
    bare_bundle = server.enroll("pi-bare", group="hall")  # has no kiosk: its steps fail, the others go on
    server.enroll("pi-away", group="hall")  # never connects: reported offline
    state, logs = tmp_path / "state", tmp_path / "logs"
    state.mkdir()
    logs.mkdir()
    (tmp_path / "bare-logs").mkdir()
    marks = tmp_path / "kiosk.txt"
    (state / "demos.json").write_text(json.dumps({"kiosk": {"start": f"echo started >> {marks}",
                                                            "stop": f"echo stopped >> {marks}"}}))
    daemon = DaemonProcess(write_bundle(bundle, tmp_path / "node.json"), state, logs).start()
    bare = DaemonProcess(write_bundle(bare_bundle, tmp_path / "bare.json"), tmp_path / "bare-state",
                         tmp_path / "bare-logs").start()
    try:
        wait_for(lambda: server.node("pi-hall")["connected"] and server.node("pi-bare")["connected"], 30,
                 "the daemons to connect")
        # The demo makes itself known (its dvic_log file), as the example demo does.
        subprocess.run([sys.executable, "-c", "import dvic_log; dvic_log.open_log('kiosk').info('hello')"],
                       env={**os.environ, "PYTHONPATH": str(REPO / "lib" / "python"), "DVIC_LOG_DIR": str(logs)},
                       check=True)
        wait_for(lambda: server.node("pi-hall")["demos"]["total"] >= 1, 30, "the demo to be reported")

        body = runbook(server, "warmup", "open-15m", "start kiosk", status=409)
        assert body["error"]["code"] == "no_hours", body  # relative to hours it does not have
        body = runbook(server, "x", "03:00", "start robot", status=400)
        assert body["error"]["code"] == "unknown_demo" and "known: kiosk" in body["error"]["message"]

        runbook(server, "closing", "23:59", "stop kiosk", "run echo closed")
        status, firing = server.api("POST", "/api/v1/runbooks/hall/closing/run")
        assert status == 201 and firing["trigger"] == "run-now", firing
        (done,) = finished(server, "hall", "closing")
        nodes = {n["node_name"]: n for n in done["nodes"]}
        assert nodes["pi-hall"]["state"] == "ok" and nodes["pi-hall"]["message"] == "stop kiosk; run echo closed", done
        assert nodes["pi-bare"]["state"] == "failed" and nodes["pi-bare"]["step"] == 0, done
        assert "stop kiosk: failed: " in nodes["pi-bare"]["message"] and "not configured" in nodes["pi-bare"]["message"]
        assert nodes["pi-away"]["state"] == "offline", done
        assert done["state"] == "partial" and done["operator"] == "admin", done
        assert done["message"] == "1 failed, 1 offline, 1 ok", done
        assert marks.read_text() == "stopped\n"

        due = time.time() + 4
        runbook(server, "opening", utc_clock(due), "start kiosk")
        (done,) = finished(server, "hall", "opening")
        assert done["trigger"] == "schedule" and done["due_at"] == int(due), done
        assert done["started_at"] >= int(due)
        assert {n["node_name"]: n["state"] for n in done["nodes"]} == {"pi-hall": "ok", "pi-bare": "failed",
                                                                        "pi-away": "offline"}
        assert marks.read_text() == "stopped\nstarted\n"
        status, shown = server.api("GET", "/api/v1/runbooks/hall/opening")
        assert status == 200 and shown["steps"] == ["start kiosk"] and len(shown["firings"]) == 1
    finally:
        daemon.stop()
        bare.stop()


def test_a_moment_due_while_the_server_is_down_fires_once_at_start_or_is_missed(tmp_path: Path) -> None:
    server = CentralServer(tmp_path / "central", extra_args=("--calendar-grace", "60")).start()
    try:
        server.enroll("pi-r", group="hall")
        soon = time.time() + 5
        for name, at in (("soon", soon), ("later", soon + 1)):
            runbook(server, name, utc_clock(at), "run true")
        down_past(server, soon, 2, "the moments to pass with the server down")
        (fired,) = finished(server, "hall", "soon")
        assert fired["trigger"] == "schedule" and fired["state"] == "failed", fired  # its one node is offline
        assert [n["state"] for n in fired["nodes"]] == ["offline"]
        # Once: another restart fires nothing again. A booking holds across it too.
        bob = operator(server, "bob")
        status, booking = server.api("POST", "/api/v1/bookings", {"nodes": ["pi-r"], "to": "+1h"})
        assert status == 201, booking
        server.stop()
        server.start()
        status, body = server.api("POST", "/api/v1/commands", {"nodes": ["pi-r"], "argv": ["true"]}, token=bob)
        assert status == 403 and f"booking {booking['id']} of 'admin'" in body["error"]["message"], body
        finished(server, "hall", "later")
        status, body = server.api("GET", "/api/v1/firings?group=hall")
        assert status == 200 and sorted(f["runbook"] for f in body["firings"]) == ["later", "soon"], body

        # Past the grace window: recorded as missed, never fired.
        server.extra_args = ("--calendar-grace", "1")
        late = time.time() + 4
        runbook(server, "late", utc_clock(late), "run true")
        down_past(server, late, 3, "the moment to pass beyond the grace window")
        (missed,) = finished(server, "hall", "late")
        assert missed["state"] == "missed" and "grace window" in missed["message"], missed
        assert missed["nodes"] == []
    finally:
        server.stop()


def test_an_offline_node_is_caught_up_when_it_comes_back_within_the_window(central_server: CentralServer,
                                                                           tmp_path: Path) -> None:
    server = central_server
    bundle = server.enroll("pi-late", group="hall")
    marks = tmp_path / "ran.txt"
    runbook(server, "morning", "23:59", f"run echo ran >> {marks}", catch_up=120)
    status, firing = server.api("POST", "/api/v1/runbooks/hall/morning/run")
    assert status == 201

    def node_state() -> str:
        nodes = server.api("GET", f"/api/v1/firings/{firing['id']}")[1]["nodes"]
        return str(nodes[0]["state"]) if nodes else ""

    wait_for(lambda: node_state() == "waiting", 10, "the offline node to wait for its catch-up")
    (tmp_path / "logs").mkdir()
    daemon = DaemonProcess(write_bundle(bundle, tmp_path / "node.json"), tmp_path / "state",
                           tmp_path / "logs").start()
    try:
        (done,) = finished(server, "hall", "morning")
        assert done["state"] == "done", done
        assert done["nodes"][0]["state"] == "ok" and "(caught up)" in done["nodes"][0]["message"], done
        assert marks.read_text() == "ran\n"
    finally:
        daemon.stop()
