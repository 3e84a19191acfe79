"""The calendar's pure parts: the hours parser, moments and their fire times, including the real 2027
daylight-saving dates in Europe/Paris and America/New_York (fire times computed, never slept for)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from central.calendar.holds import Holds
from central.calendar.hours import Hours, HoursError, local_instant, parse_spans, parse_week, zone
from central.calendar.moments import next_occurrence, occurrences_between, parse_moment
from central.calendar.steps import StepError, parse_step, parse_steps
from central.calendar.times import parse_when

PARIS = "Europe/Paris"
NEW_YORK = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def hall(zone_name: str = PARIS) -> Hours:
    return Hours(zone_name, parse_week(["mon-fri 10:00-18:00", "sat 14:00-18:00"]))


# -- the parser ------------------------------------------------------------------------------------
def test_week_lines_give_each_day_its_ranges() -> None:
    week = parse_week(["mon-fri 10:00-18:00", "sat 14:00-18:00"])
    assert week[0] == week[4] == [(600, 1080)]
    assert week[5] == [(840, 1080)]
    assert week[6] == []  # a day no line names is closed
    assert parse_week(["daily 09:00-12:00,13:00-17:00"])[3] == [(540, 720), (780, 1020)]
    assert parse_week(["sun closed", "mon,wed 08:00-24:00"])[2] == [(480, 1440)]


@pytest.mark.parametrize(("lines", "says"), [
    (["mon-fri 10:00-25:00"], "write HH:MM from 00:00 to 24:00"),
    (["mon-fri 18:00-10:00"], "ends before it starts"),
    (["mon-fri 10-18"], "write HH:MM-HH:MM"),
    (["mon-fry 10:00-18:00"], "write mon, tue"),
    (["fri-mon 10:00-18:00"], "write the days in week order"),
    (["mon-fri 10:00-18:00", "fri 14:00-18:00"], "fri is already given"),
    (["mon 10:00-14:00,13:00-18:00"], "overlap: join them"),
    (["10:00-18:00"], "write DAYS HOURS"),
    ([], "at least one line"),
])
def test_bad_hours_say_what_to_change(lines: list[str], says: str) -> None:
    with pytest.raises(HoursError, match=says):
        parse_week(lines)


def test_unknown_zone_and_dates_are_refused() -> None:
    with pytest.raises(HoursError, match="IANA name such as Europe/Paris"):
        zone("Mars/Olympus")
    with pytest.raises(HoursError, match="IANA"):
        zone("../../etc/passwd")
    with pytest.raises(HoursError, match="write YYYY-MM-DD"):
        from central.calendar.hours import parse_date
        parse_date("25/12/2026")


def test_an_exception_replaces_the_week_for_its_day() -> None:
    hours = Hours(PARIS, hall().week, {date(2026, 12, 25): [], date(2027, 1, 10): parse_spans("09:00-22:00")})
    assert hours.spans_on(date(2026, 12, 25)) == []  # a Friday, closed
    assert hours.spans_on(date(2027, 1, 10)) == [(540, 1320)]  # a Sunday, special hours
    assert hours.is_open(utc(2027, 1, 10, 20, 0))  # 21:00 in Paris
    assert not hours.is_open(utc(2026, 12, 25, 12, 0))


# -- daylight saving -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("zone_name", "day", "expected_utc"), [
    # Spring forward: 02:00 -> 03:00 (Paris, 2027-03-28) and 02:00 -> 03:00 (New York, 2027-03-14).
    # 02:30 does not exist: it is the instant the clocks jump (03:00 local).
    (PARIS, date(2027, 3, 28), utc(2027, 3, 28, 1, 0)),
    (NEW_YORK, date(2027, 3, 14), utc(2027, 3, 14, 7, 0)),
    # Fall back: 03:00 -> 02:00 (Paris, 2027-10-31) and 02:00 -> 01:00 (New York, 2027-11-07).
    # Paris: 02:30 happens twice; it is the first one (CEST, 00:30 UTC).
    (PARIS, date(2027, 10, 31), utc(2027, 10, 31, 0, 30)),
    (NEW_YORK, date(2027, 11, 7), utc(2027, 11, 7, 7, 30)),
])
def test_a_0230_step_on_the_dst_nights(zone_name: str, day: date, expected_utc: datetime) -> None:
    moment = parse_moment("02:30")
    found = occurrences_between(moment, Hours(zone_name, parse_week(["daily closed"])),
                                utc(day.year, day.month, day.day) - timedelta(days=1),
                                utc(day.year, day.month, day.day) + timedelta(days=2))
    on_day = [o for o in found if o.key == day.isoformat()]
    assert [o.due for o in on_day] == [expected_utc]


def test_new_york_fall_back_hour_fires_once_at_its_first_occurrence() -> None:
    # 01:30 happens twice in New York on 2027-11-07 (EDT, then EST): one occurrence, the first.
    hours = Hours(NEW_YORK, parse_week(["daily closed"]))
    found = occurrences_between(parse_moment("01:30"), hours, utc(2027, 11, 7, 0), utc(2027, 11, 8, 0))
    assert [(o.key, o.due) for o in found] == [("2027-11-07", utc(2027, 11, 7, 5, 30))]


def test_skipped_times_keep_their_order() -> None:
    tz = zone(PARIS)
    day = date(2027, 3, 28)
    times = [local_instant(day, m, tz) for m in (119, 135, 165, 180, 181)]  # 01:59 02:15 02:45 03:00 03:01
    assert times == sorted(times)
    assert times[1] == times[2] == times[3] == utc(2027, 3, 28, 1, 0)


@pytest.mark.parametrize("zone_name", [PARIS, NEW_YORK])
def test_every_moment_fires_once_a_day_through_a_whole_dst_year(zone_name: str) -> None:
    """Scanning 2027 in small windows (as the scheduler does) gives each key exactly once, and a
    fixed time once per local day, on both transition nights."""
    hours = hall(zone_name)
    for text in ("03:00", "02:30", "01:30", "open-15m", "close", "close+30m"):
        moment = parse_moment(text)
        seen: list[str] = []
        at = utc(2027, 1, 1)
        while at < utc(2028, 1, 1):
            nxt = min(at + timedelta(hours=7), utc(2028, 1, 1))
            seen += [o.key for o in occurrences_between(moment, hours, at, nxt)]
            at = nxt
        assert len(seen) == len(set(seen)), text
        # 2027: 365 days, of which 261 weekdays and 52 Saturdays open.
        assert len(seen) == (365 if moment.anchor == "at" else 261 + 52), text


def test_open_and_close_moments_follow_the_local_hours_across_dst() -> None:
    hours = hall(PARIS)
    open_early = parse_moment("open-15m")
    # Friday 2027-03-26 (CET, +01:00) and Monday 2027-03-29 (CEST, +02:00): 09:45 local both days.
    assert next_occurrence(open_early, hours, utc(2027, 3, 26, 0)).due == utc(2027, 3, 26, 8, 45)  # type: ignore[union-attr]
    assert next_occurrence(open_early, hours, utc(2027, 3, 28, 0)).due == utc(2027, 3, 29, 7, 45)  # type: ignore[union-attr]
    close_late = parse_moment("close+30m")
    assert next_occurrence(close_late, hours, utc(2027, 11, 1, 0)).due == utc(2027, 11, 1, 17, 30)  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "says"), [
    ("open-13h", "at most 12h"), ("noon", "is not a moment"), ("25:00", "HH:MM"), ("24:00", "00:00 to 23:59"),
])
def test_bad_moments(text: str, says: str) -> None:
    with pytest.raises(HoursError, match=says):
        parse_moment(text)


# -- steps, times, holds ---------------------------------------------------------------------------------
def test_steps_parse_to_their_stored_form() -> None:
    assert parse_steps(["start kiosk", "reboot", "run systemctl restart x", "maintenance on",
                        "deploy kiosk@1.2.0", "undeploy kiosk"]) == [
        {"do": "start_demo", "demo": "kiosk"}, {"do": "reboot"}, {"do": "run", "shell": "systemctl restart x"},
        {"do": "maintenance", "on": True}, {"do": "deploy", "demo": "kiosk", "version": "1.2.0"},
        {"do": "undeploy", "demo": "kiosk"}]
    for bad, says in (("launch kiosk", "unknown step 'launch'"), ("start", "name the demo"),
                      ("deploy kiosk", "DEMO@VERSION"), ("maintenance maybe", "on or maintenance off")):
        with pytest.raises(StepError, match=says):
            parse_step(bad)


def test_times_absolute_relative_and_in_the_groups_zone() -> None:
    now = 1_800_000_000.0
    tz = zone(PARIS)
    assert parse_when("now", now, tz) == now
    assert parse_when("+30m", now, tz) == now + 1800
    assert parse_when("+1d", now, tz) == now + 86400
    assert parse_when("2027-01-10T09:00", now, tz) == utc(2027, 1, 10, 8, 0).timestamp()
    assert parse_when("2027-01-10T09:00Z", now, tz) == utc(2027, 1, 10, 9, 0).timestamp()
    with pytest.raises(HoursError, match=r"\+30m"):
        parse_when("tomorrow", now, tz)


def test_holds_refuse_others_but_not_the_holder_or_admins() -> None:
    holds = Holds()
    holds.add(7, "alice", ["n1"], 100.0, 200.0)
    assert holds.refusal("n1", "pi-1", "bob", "operator", at=150.0) is not None
    assert "booking 7 of 'alice'" in (holds.refusal("n1", "pi-1", "bob", "operator", at=150.0) or "")
    assert holds.refusal("n1", "pi-1", "alice", "operator", at=150.0) is None
    assert holds.refusal("n1", "pi-1", "root", "admin", at=150.0) is None
    assert holds.refusal("n1", "pi-1", "bob", "operator", at=50.0) is None  # not begun
    assert holds.refusal("n1", "pi-1", "bob", "operator", at=200.0) is None  # over (and forgotten)
    holds.add(8, "carol", ["n1"], 300.0, 400.0)
    holds.drop(8)
    assert holds.refusal("n1", "pi-1", "bob", "operator", at=350.0) is None
