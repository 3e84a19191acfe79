"""Line encoding: one JSON object per line, valid UTF-8 whatever the text, bounded size."""

import json
import logging

import pytest
from dvic_log._format import (
    LEVELS,
    TRUNCATION_MARK,
    encode_line,
    encode_record,
    fit_record,
    level_name,
    make_header,
    make_record,
    to_text,
)


def decode_one(line: bytes) -> dict:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    text = line.decode("utf-8")  # strict
    assert len(text.splitlines()) == 1, "a line splitter would cut this record"
    return json.loads(text)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.DEBUG, "DEBUG"),
        (5, "DEBUG"),
        (logging.INFO, "INFO"),
        (25, "INFO"),
        (logging.WARNING, "WARNING"),
        (logging.ERROR, "ERROR"),
        (45, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
        (99, "CRITICAL"),
        ("warn", "WARNING"),
        (" info ", "INFO"),
        ("FATAL", "CRITICAL"),
    ],
)
def test_levels_map_to_the_closed_set(level, expected):
    assert level_name(level) == expected
    assert expected in LEVELS


def test_unknown_level_names_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown dvic_log level 'LOUD'"):
        level_name("LOUD")
    with pytest.raises(TypeError, match="int or a level name"):
        level_name(2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "two\nlines\r\nand a tab\t",
        "NUL \x00 and escape \x1b[31m",
        "accents é à ü, CJK 漢字, emoji 😀, RTL שלום",
        "line breaks for splitlines: \x85 \u2028 \u2029 \x1c \x1d \x1e \x0b \x0c",
        'quote " backslash \\',
    ],
)
def test_any_text_round_trips_on_one_line(text):
    obj = decode_one(encode_line(make_record(1.0, "INFO", text)))
    assert obj["msg"] == text


def test_lone_surrogates_become_replacement_characters():
    # From os.fsdecode(b"\xff") / surrogateescape, and a high surrogate with no partner.
    line = encode_line(make_record(1.0, "INFO", "bad \udcff and \ud800 end"))
    assert decode_one(line)["msg"] == "bad \ufffd and \ufffd end"


def test_a_surrogate_pair_is_joined_into_its_character():
    line = encode_line(make_record(1.0, "INFO", "pair \ud83d\ude00 lone \udc80"))
    assert decode_one(line)["msg"] == "pair 😀 lone \ufffd"


def test_non_text_messages_never_raise():
    class Broken:
        def __str__(self):
            raise RuntimeError("no")

    assert to_text(b"\xffab") == "\ufffdab"
    assert to_text(42) == "42"
    assert to_text(Broken()) == "<unprintable Broken: RuntimeError>"


def test_record_fields_and_ms_timestamps():
    rec = make_record(1764000000.123456, "ERROR", "m", logger="app.db", exc="Traceback...")
    assert rec == {
        "ts": 1764000000.123,
        "level": "ERROR",
        "msg": "m",
        "logger": "app.db",
        "exc": "Traceback...",
    }
    assert make_record(1.0, "INFO", "m") == {"ts": 1.0, "level": "INFO", "msg": "m"}


def test_header_fields():
    header = make_header("0123456789abcdef", "demo", 10, 55, "/usr/bin/x", ["x", "-v"], "u", "h", 2.5)
    assert list(header) == [
        "dvic_log",
        "token",
        "name",
        "pid",
        "pid_start",
        "exe",
        "argv",
        "user",
        "host",
        "start",
    ]
    assert header["dvic_log"] == 1
    assert make_header("0123456789abcdef", "d", 1, None, "", [], "u", "h", 1.0, rotated=3)["rotated"] == 3


@pytest.mark.parametrize(
    "body",
    ["x" * 100_000, "é" * 60_000, "\x00" * 50_000, "😀" * 30_000],
    ids=["ascii", "latin", "nul", "emoji"],
)
def test_oversized_records_are_cut_to_fit_and_marked(body):
    line = fit_record(make_record(1.0, "INFO", body, exc="tb" * 5000), 4000)
    assert len(line) <= 4000
    obj = decode_one(line)
    assert obj["msg"].endswith(TRUNCATION_MARK) or obj["exc"].endswith(TRUNCATION_MARK)
    assert obj["msg"].startswith(body[:10])


def test_records_that_fit_are_untouched():
    rec = make_record(1.0, "INFO", "short")
    assert fit_record(rec, 4000) == encode_line(rec)


@pytest.mark.parametrize(
    "record",
    [
        make_record(1764000000.123, "INFO", "plain"),
        make_record(
            1764000000.0, "ERROR", 'q"\\\n\t\x00\x1f é 😀 \u2028 \x85', logger="a.b", exc="Trace\nback"
        ),
        make_record(1.5, "DEBUG", "lone \udcff pair \ud83d\ude00", logger="\udc80"),
        {"ts": 1, "level": "INFO", "msg": "int ts"},
        {"ts": 1.0, "level": "INFO", "msg": "extra field", "other": [1, 2]},
    ],
    ids=["plain", "escapes", "surrogates", "int-ts", "extra-field"],
)
def test_the_fast_record_encoder_matches_json_dumps(record):
    assert encode_record(record) == encode_line(record)
    assert json.loads(encode_record(record)) == json.loads(encode_line(record))


def test_a_non_finite_timestamp_is_refused():
    with pytest.raises(ValueError):
        encode_record({"ts": float("nan"), "level": "INFO", "msg": "x"})
