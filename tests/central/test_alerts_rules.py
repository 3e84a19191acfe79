"""Rule, pattern and silence checks: what an operator writes is refused with the reason, and a
pattern that could stall the server never gets in."""

from __future__ import annotations

import time

import pytest

from central.alerts.patterns import PatternError, compile_pattern
from central.alerts.rules import (
    STOCK,
    RuleError,
    format_duration,
    operator_rule,
    parse_duration,
    stored_form,
    tune,
)
from central.alerts.silences import silence_request


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), (90, 90), ("30s", 30), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("0", 0),
    ("1.5m", 90),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "m5", "", "-1", "5x", "8d", True, None, "1h 30m", "5mm"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(RuleError) as exc:
        parse_duration(text)
    assert exc.value.code == "bad_duration"


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 30, 300, 5400, 7200, 86400)] == ["0s", "30s", "5m", "90m", "2h", "1d"]


@pytest.mark.parametrize(("pattern", "why"), [
    ("(a+)+$", "nested quantifiers"),
    ("(x*)*y", "nested quantifiers"),
    ("(a|ab)*c", "alternation inside a repeat"),
    (r"(\w+)\s\1", "backreferences"),
    ("(?=abc)abc", "lookahead"),
    ("(?<!x)y", "lookahead/lookbehind"),
    ("a.*a.*a.*a.*b", "unbounded repeats"),
    (".*.*.*=", "too slow"),
    ("x" * 201, "at most 200"),
    ("[", "not a valid regular expression"),
    ("", "empty"),
])
def test_dangerous_or_broken_patterns_are_refused(pattern: str, why: str) -> None:
    started = time.perf_counter()
    with pytest.raises(PatternError) as exc:
        compile_pattern(pattern)
    assert why in str(exc.value)
    assert time.perf_counter() - started < 1.0  # finding out is itself quick


@pytest.mark.parametrize("pattern", [
    "ERROR.*timeout", r"usb \d+-\d+: reset", "(?i)segfault|core dumped", r"^\[E\] [a-z_]+: ", "a{2,5}b",
    "temp(erature)? too high",
])
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    compile_pattern(pattern)


def test_operator_rules_are_checked_field_by_field() -> None:
    def refused(spec: dict[str, object]) -> str:
        with pytest.raises(RuleError) as exc:
            operator_rule(spec)
        return exc.value.code

    base = {"name": "hot", "type": "metric", "metric": "temp", "threshold": 70}
    assert operator_rule(base).threshold == 70
    assert refused({**base, "metric": "humidity"}) == "unknown_metric"
    assert refused({**base, "for": "soon"}) == "bad_duration"
    assert refused({**base, "severity": "fatal"}) == "bad_severity"
    assert refused({**base, "threshold": "hot"}) == "bad_threshold"
    assert refused({**base, "clear": 80}) == "bad_threshold"  # clears above where it fires
    assert refused({**base, "scope": {"room": "a"}}) == "bad_scope"
    assert refused({**base, "scope": {"kind": "toaster"}}) == "bad_scope"
    assert refused({**base, "name": "Hot Stuff"}) == "bad_name"
    assert refused({**base, "name": "disk_full"}) == "name_taken"
    assert refused({**base, "type": "sql"}) == "bad_rule"
    assert refused({**base, "pattern": "x"}) == "bad_rule"
    assert refused({"name": "l", "type": "log", "pattern": "(a+)+", "rate": 5}) == "bad_pattern"
    assert refused({"name": "l", "type": "log", "pattern": "x", "rate": 0}) == "bad_threshold"
    assert refused({"name": "l", "type": "log", "pattern": "x"}) == "bad_rule"
    low = operator_rule({**base, "metric": "rssi", "op": "<", "threshold": -80, "clear": -75})
    assert (low.op, low.threshold, low.clear) == ("<", -80, -75)
    assert refused({**base, "op": "<", "threshold": -80, "clear": -85}) == "bad_threshold"


def test_a_stored_rule_reads_back_the_same() -> None:
    rule = operator_rule({"name": "usb", "type": "log", "pattern": "usb reset", "rate": 3, "level": "WARNING",
                          "for": "2m", "severity": "critical", "scope": {"group": "hall-a"}})
    assert operator_rule({"name": "usb", **stored_form(rule)}) == rule


def test_stock_rules_tune_only_what_they_have() -> None:
    disk = tune(STOCK["disk_full"], {"threshold": 80})
    assert (disk.threshold, disk.clear) == (80, 75)  # the band moves with the threshold
    with pytest.raises(RuleError):
        tune(STOCK["node_offline"], {"threshold": 3})
    with pytest.raises(RuleError):
        tune(STOCK["disk_full"], {"metric": "cpu"})


def test_silences_need_a_matcher_and_a_time_limit() -> None:
    request = silence_request({"group": "hall-a", "for": "2h", "note": "rewiring"})
    assert (request.matcher, request.duration_s, request.note) == ({"group": "hall-a"}, 7200, "rewiring")

    def refused(body: dict[str, object]) -> str:
        with pytest.raises(RuleError) as exc:
            silence_request(body)
        return exc.value.message

    assert "at least one of" in refused({"for": "1h"})
    assert "how long" in refused({"group": "a"})
    assert "0 to 30d" in refused({"group": "a", "for": "31d"})
    assert "more than 0" in refused({"group": "a", "for": "0"})
    assert "severity" in refused({"severity": "loud", "for": "1h"})
    assert "unknown field" in refused({"room": "a", "for": "1h"})
