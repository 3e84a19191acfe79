"""The Today view's timeline model (tui/console/today.py) on fixed data: hours in the group's zone,
a moment matched with its firing, a run-now firing on its own row, a fixed-time runbook of a group
without hours, and a booking that started yesterday and ends tomorrow."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from tui.console.today import node_counts, timeline

PARIS = ZoneInfo("Europe/Paris")


def paris(day: str, clock: str) -> float:
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=PARIS).timestamp()


def test_a_groups_day_in_its_zone() -> None:
    now = paris("2027-03-28", "12:00")  # the spring-forward day: local hours, not UTC offsets
    warm = paris("2027-03-28", "09:45")
    calendar = [{"group": "hall", "zone": "Europe/Paris", "hours": "daily 10:00-18:00", "open_now": True,
                 "days": [{"day": "2027-03-28", "hours": "10:00-18:00", "exception": False,
                           "moments": [{"runbook": "warmup", "moment": "open-15m", "at": warm}]}]},
                {"group": "lab", "zone": "UTC", "hours": None, "days": []}]
    runbooks = [{"group": "hall", "name": "warmup", "moment": "open-15m"},
                {"group": "lab", "name": "nightly", "moment": "03:00"}]
    firings = [{"id": 7, "grp": "hall", "runbook": "warmup", "due_at": warm, "trigger": "schedule", "state": "partial",
                "message": "1 failed, 1 ok", "nodes": [{"state": "ok"}, {"state": "failed"}]},
               {"id": 8, "grp": "hall", "runbook": "warmup", "due_at": now - 60, "trigger": "run-now",
                "operator": "ada", "state": "running", "nodes": []}]
    bookings = [{"id": 3, "holder": "olga", "starts_at": now - 86400, "ends_at": now + 86400, "note": "project week",
                 "nodes": ["n1"], "node_names": ["pi-1"]}]
    nodes = {"n1": {"group": "hall"}, "n2": {"group": "lab"}}
    rows = {e.key: e for e in timeline(calendar, runbooks, firings, bookings, nodes, now, me="olga")}

    assert [k for k in rows if k.startswith(("g:", "h:"))] == ["g:hall", "h:hall:0:open", "h:hall:0:close", "g:lab"]
    assert rows["g:hall"].state == "open" and rows["g:hall"].detail == "open until 18:00"
    assert (rows["h:hall:0:open"].time, rows["h:hall:0:close"].time) == ("10:00", "18:00")
    moment = rows[f"m:hall:warmup:{warm:.0f}"]
    assert (moment.time, moment.state, moment.nodes, moment.firing_id) == ("09:45", "partial", "1/2 ok", 7)
    assert moment.detail == "1 failed, 1 ok"
    run_now = rows["f:8"]
    assert run_now.what == "▶ warmup (run now by ada)" and run_now.state == "running" and run_now.nodes == "-"
    booking = rows["b:3:hall"]
    assert booking.time == "…" and booking.state == "holding" and booking.what == "⚑ #3 olga (you): pi-1"
    assert booking.detail.startswith("until Mon 29 12:00") and booking.detail.endswith("project week")
    nightly = next(e for k, e in rows.items() if k.startswith("m:lab:nightly:"))
    assert (nightly.time, nightly.state, rows["g:lab"].state) == ("03:00", "not fired", "no hours")
    order = list(rows)
    assert order.index(f"m:hall:warmup:{warm:.0f}") < order.index("h:hall:0:open") < order.index("f:8")


def test_node_counts() -> None:
    assert node_counts([]) == ("-", "")
    assert node_counts([{"state": "ok"}, {"state": "offline"}, {"state": "held"}]) == ("1/3 ok", "1 held, 1 offline")
