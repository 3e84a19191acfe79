"""`dvic calendar`, `runbook`, `book` and `bookings` against the real server: the story of
docs/calendar.md (hours, a runbook run now, a booking a second operator is refused)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.cli import DvicRunner, clean_env
from tests.support.releases import archive, publish
from tests.support.server import CentralServer


async def test_hours_runbook_and_a_booking_from_the_command_line(central_server: CentralServer,
                                                                  tmp_path: Path) -> None:
    server = central_server
    server.enroll("pi-cli", group="hall")
    dvic = DvicRunner(server, clean_env(tmp_path))
    alice, bob = dvic.operator("alice", "operator"), dvic.operator("bob", "operator")

    done = await dvic("calendar", "hours", "hall", "mon-fri 10:00-18:00", "sat 14:00-18:00", "--zone", "Europe/Paris")
    assert done.code == 0, done.err
    assert "hall  (Europe/Paris)" in done.out and "sat 14:00-18:00; sun closed" in done.out
    done = await dvic("calendar", "except", "hall", "2099-12-25", "closed", "--note", "holiday")
    assert done.code == 0 and "2099-12-25: closed (exception)" in done.out, done.err
    bad = await dvic("calendar", "hours", "hall", "mon-fri 10-18")
    assert bad.code != 0 and "write HH:MM-HH:MM" in bad.err and "bad_hours" in bad.err
    shown = json.loads((await dvic("calendar", "show", "--group", "hall", "--week", "--json", token=bob)).out)
    assert shown["groups"][0]["zone"] == "Europe/Paris" and len(shown["groups"][0]["days"]) == 7

    done = await dvic("runbook", "add", "hall", "warmup", "--at", "open-15m", "--step", "run echo hi")
    assert done.code == 0 and "runbook hall/warmup at open-15m: run echo hi" in done.out, done.err
    assert re.search(r"^next: \d{4}-\d\d-\d\d \d\d:\d\d [A-Z+-]\w*$", done.out, re.M), done.out  # its zone named
    listed = json.loads((await dvic("runbook", "list", "--json", token=bob)).out)["runbooks"]
    assert [(r["name"], r["moment"]) for r in listed] == [("warmup", "open-15m")]
    refused = await dvic("runbook", "run-now", "hall", "warmup", token=bob)
    assert refused.code != 0 and "forbidden" in refused.err
    done = await dvic("runbook", "run-now", "hall", "warmup", "--wait", "--json")
    firing = json.loads(done.out)
    assert firing["state"] == "failed" and firing["nodes"][0]["state"] == "offline", firing  # no daemon here
    history = json.loads((await dvic("runbook", "history", "hall", "warmup", "--json")).out)["firings"]
    assert [f["trigger"] for f in history] == ["run-now"]

    done = await dvic("book", "pi-cli", "--to", "+1h", "--note", "demo day", "--json", token=alice)
    assert done.code == 0, done.err
    booking = json.loads(done.out)
    refused = await dvic("book", "pi-cli", "--from", "+30m", "--to", "+2h", token=bob)
    assert refused.code != 0 and f"booking {booking['id']} of 'alice'" in refused.err, refused.err
    refused = await dvic("run", "pi-cli", "--", "true", token=bob)
    assert refused.code != 0 and f"booking {booking['id']} of 'alice'" in refused.err, refused.err
    mine = json.loads((await dvic("bookings", "--mine", "--json", token=alice)).out)["bookings"]
    assert [b["id"] for b in mine] == [booking["id"]]
    assert json.loads((await dvic("bookings", "--at", "+90m", "--json")).out)["bookings"] == []
    done = await dvic("book", "extend", str(booking["id"]), "--to", "+2h", token=alice)
    assert done.code == 0 and f"#{booking['id']} alice: pi-cli" in done.out, done.err
    assert [b["id"] for b in json.loads((await dvic("bookings", "--at", "+90m", "--json")).out)["bookings"]] == \
        [booking["id"]]
    refused = await dvic("book", "cancel", str(booking["id"]), token=bob)
    assert refused.code != 0 and "not_yours" in refused.err and "is held by 'alice': only they" in refused.err
    done = await dvic("book", "cancel", str(booking["id"]), token=alice)
    assert done.code == 0 and "(cancelled)" in done.out
    done = await dvic("bookings")
    assert done.code == 0 and "no booking to come" in done.out

    # a booking's release is shown with it, and how far it went
    archive_path = archive(tmp_path / "kiosk.tar.gz", {"name": "kiosk", "version": "1.0.0", "run": ["true"]})
    assert publish(server, archive_path.read_bytes())[0] == 201
    done = await dvic("book", "pi-cli", "--from", "+1h", "--to", "+2h", "--deploy", "kiosk@1.0.0", token=alice)
    assert done.code == 0 and "deploy kiosk@1.0.0 (at its start)" in done.out, done.err
    done = await dvic("bookings")
    assert done.code == 0 and "DEPLOY" in done.out and "kiosk@1.0.0 (at its start)" in done.out, done.out
