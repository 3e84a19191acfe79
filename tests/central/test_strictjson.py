"""Strict JSON in and out (central/strictjson.py), and the fact-key rule (central/messages.py)."""

from __future__ import annotations

import json
import logging

import pytest

from central.messages import clean_facts
from central.strictjson import MAX_DEPTH, JsonError, check_numbers, dumps, loads


@pytest.mark.parametrize(("text", "reason"), [
    ('{"v": NaN}', "NaN is not a JSON number"),
    ('{"v": -Infinity}', "-Infinity is not a JSON number"),
    ("[" * 100_000, "nested too deeply"),
    ('{"v": ' + "9" * 5000 + "}", "too many digits"),
    ("{oops", "Expecting property name"),
    (b'{"a": "\xff"}', "can't decode byte 0xff"),
    ('\ufeff{"a": 1}', "BOM"),
])
def test_loads_refuses_what_is_not_strict_json(text: str | bytes, reason: str) -> None:
    with pytest.raises(JsonError, match=reason):
        loads(text)


@pytest.mark.parametrize(("value", "reason"), [
    ({"v": [1e999]}, "out of range"),
    ({"v": {"w": -1e999}}, "out of range"),
    ({"v": 2**63}, "64-bit"),
    ([-(2**63) - 1], "64-bit"),
    (json.loads('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)), "nested deeper"),
])
def test_check_numbers_refuses(value: object, reason: str) -> None:
    with pytest.raises(JsonError, match=reason):
        check_numbers(value)


def test_loads_reads_what_json_loads_reads() -> None:
    for text in ('{"a": [1, 2.5, "x"]}', b'{"a": [1, 2.5, "x"]}', '{"a": [1, 2.5, "x"]}'.encode("utf-16"),
                 '"\u00e9t\u00e9"'.encode(), '["\u00e9"]'.encode("utf-32")):
        assert loads(text) == json.loads(text)


def test_dumps_options_are_kept_apart() -> None:
    value = {"b": "\u00e9", "a": [1, 2.0]}
    assert dumps(value) == '{"b": "\\u00e9", "a": [1, 2.0]}'
    assert dumps(value, separators=(",", ":")) == '{"b":"\\u00e9","a":[1,2.0]}'
    assert dumps(value, separators=(",", ":"), ensure_ascii=False) == '{"b":"\u00e9","a":[1,2.0]}'
    assert dumps(value) == '{"b": "\\u00e9", "a": [1, 2.0]}'  # the first encoder again, unchanged


def test_check_numbers_accepts_the_limits() -> None:
    check_numbers({"a": [2**63 - 1, -(2**63), 1.7e308, True, None, "NaN"]})
    check_numbers(json.loads('{"a":' * (MAX_DEPTH - 1) + "1" + "}" * (MAX_DEPTH - 1)))


def test_dumps_never_writes_nan_or_infinity(caplog: pytest.LogCaptureFixture) -> None:
    assert dumps({"a": 1.5}) == '{"a": 1.5}'
    with caplog.at_level(logging.ERROR, logger="central.strictjson"):
        text = dumps({"a": float("nan"), "b": [float("inf"), 2.0, (float("-inf"),)]}, separators=(",", ":"))
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {"a": None, "b": [None, 2.0, [None]]}
    assert "non-finite" in caplog.text


def test_fact_keys_with_controls_and_absurd_numbers_are_dropped() -> None:
    facts = {"\x1b]52;c;aGk=\x07": "x", "a\x9bb": "c1 csi", "rtl\u202eevil": "bidi", "\x7f": "del",
             "k" * 65: "long", "ok-key": "\x1b[2J kept", "boot_time": 1e308, "uptime": 12.0, "caf\u00e9": "accent"}
    assert clean_facts(facts) == {"ok-key": "\x1b[2J kept", "uptime": 12.0, "caf\u00e9": "accent"}


def test_error_bodies_are_strict_json_too() -> None:
    # Every error body goes through error_response; whatever a caller adds to it stays strict JSON.
    from central.auth import error_response

    response = error_response(400, "bad_field", "m", limit=float("inf"))
    assert json.loads(response.text, parse_constant=lambda name: pytest.fail(f"bare {name}")) == {
        "error": {"code": "bad_field", "message": "m", "limit": None}}
