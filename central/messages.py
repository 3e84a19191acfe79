"""Node frames in: decoding, the registry's schemas (dvic_core/messages.py), and what the server
makes of a valid message (cleaned facts and demo headers, stored metric series, board log lines).

The server trusts no field a daemon sends: every frame goes through `parse_node_message`, which
returns the cleaned message or raises ProtocolError with the websocket close code to use.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from dvic_core.constants import CLOSE_BAD_VERSION, CLOSE_MALFORMED, CLOSE_UNKNOWN_TYPE
from dvic_core.messages import (
    KEEPALIVE_METRICS,
    MAX_BATCH_LINES,
    MAX_CHUNK_BYTES,
    MAX_FACT_CHARS,
    MAX_FRAME_BYTES,
    MAX_KEEPALIVE_BYTES,
    MAX_METRIC_ABS,
    MAX_MSG_BYTES,
    NODE,
    Message,
    sent_by,
)
from dvic_core.schema import SchemaError

from .errors import Refusal
from .strictjson import JsonError, check_numbers, loads

__all__ = ["MAX_BATCH_LINES", "MAX_CHUNK_BYTES", "MAX_FRAME_BYTES", "MAX_KEEPALIVE_BYTES", "MAX_METRIC_ABS",
           "MAX_MSG_BYTES"]

MAX_FACT_ITEMS = 64
MAX_FACT_KEY_CHARS = 64
# A node's messages: what parse_node_message accepts, and their compiled checks (one call a frame).
NODE_MESSAGES: dict[str, Message] = sent_by(NODE)
_PARSERS = {name: message.schema.parser() for name, message in NODE_MESSAGES.items()}
# Errors with a close code of their own; the rest close with 4001 (bad_message).
CLOSE_CODES = {"bad_version": CLOSE_BAD_VERSION}


class ProtocolError(Refusal):
    """A node's message refused: the connection closes with `status` as its websocket close code."""

    @property
    def close_code(self) -> int:
        return self.status


def _bad(message: str) -> ProtocolError:
    return ProtocolError(CLOSE_MALFORMED, "bad_message", message)


def parse_node_message(text: str) -> dict[str, Any]:
    """Decode and validate one text frame from a node."""
    try:
        msg = loads(text)
    except JsonError as exc:
        raise _bad(f"not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise _bad("expected a JSON object")
    kind = msg.get("type")
    message = NODE_MESSAGES.get(kind) if isinstance(kind, str) else None  # (a list is unhashable)
    if message is None:
        raise ProtocolError(CLOSE_UNKNOWN_TYPE, "unknown_type", f"unknown message type {kind!r}")
    if message.max_chars is not None and len(text) > message.max_chars:
        raise _bad(f"{kind}: sample larger than {message.max_chars // 1024} KiB")
    if kind != "logs":
        # Parts of these are kept as sent (the latest sample, event data): no number in them may
        # be one that SQLite or strict JSON cannot hold. Log lines, the bulk of the traffic, are
        # checked field by field by their schema instead (it keeps no other field).
        try:
            check_numbers(msg)
        except JsonError as exc:
            raise _bad(str(exc)) from None
    try:
        parsed: dict[str, Any] = _PARSERS[message.type](msg, "", None)
    except SchemaError as exc:
        code = exc.code or "bad_message"
        raise ProtocolError(CLOSE_CODES.get(code, CLOSE_MALFORMED), code, exc.message) from None
    convert = CONVERSIONS.get(message.type)
    return convert(parsed) if convert is not None else parsed


# -- facts and demo headers: kept, not refused ----------------------------------------------------
# C0 and C1 controls, DEL and the bidi overrides: a key holding one could drive the terminal of
# whoever prints it (an OSC 52 clipboard write) or reorder what is shown.
_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _in_metric_range(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return -MAX_METRIC_ABS <= value <= MAX_METRIC_ABS


def clean_facts(facts: Any) -> dict[str, Any]:
    """Facts (and demo headers) as kept: keys of at most 64 characters without control characters,
    values cut to size; other keys and value types are dropped, as docs/protocol.md says."""
    if not isinstance(facts, dict):
        raise _bad("facts: expected an object")
    out: dict[str, Any] = {}
    for key, value in list(facts.items())[:MAX_FACT_ITEMS]:
        if not isinstance(key, str) or len(key) > MAX_FACT_KEY_CHARS or _KEY_CONTROL.search(key):
            continue
        if isinstance(value, str):
            out[key] = value[:MAX_FACT_CHARS]
        elif isinstance(value, list):
            out[key] = [v[:MAX_FACT_CHARS] for v in value[:MAX_FACT_ITEMS] if isinstance(v, str)]
        elif _in_metric_range(value):  # (boot_time: a timestamp clients can still format)
            out[key] = value
    return out


# A demo's header as kept by the server (in memory, in the table, in every node detail): at most
# this many characters of JSON. The daemon sends exe, argv, user, host (and container), which fit
# unless argv is long; what does not fit is left out and the header says "truncated": true.
MAX_DEMO_HEADER_CHARS = 2048
DEMO_HEADER_FIRST = ("exe", "user", "host", "container", "argv")


def _json_chars(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def clean_demo_header(header: Any) -> dict[str, Any]:
    """The header cleaned like facts, then cut to MAX_DEMO_HEADER_CHARS (the daemon's keys first)."""
    facts = clean_facts(header) if isinstance(header, dict) else {}
    keys = [k for k in DEMO_HEADER_FIRST if k in facts] + [k for k in facts if k not in DEMO_HEADER_FIRST]
    room = MAX_DEMO_HEADER_CHARS - len('{"truncated": true}')
    out: dict[str, Any] = {}
    cut = False
    for key in keys:
        value = facts[key]
        cost = _json_chars(key) + 4 + _json_chars(value)  # "key": value,
        if cost > room and isinstance(value, list):
            kept: list[str] = []
            left = room - _json_chars(key) - 6
            for item in value:
                left -= _json_chars(item) + 2
                if left < 0:
                    break
                kept.append(item)
            if kept:
                value, cost = kept, _json_chars(key) + 4 + _json_chars(kept)
        if cost > room:
            cut = True
            continue
        if value is not facts[key]:
            cut = True
        out[key] = value
        room -= cost
    if cut:
        out["truncated"] = True
    return out


def _hello(msg: dict[str, Any]) -> dict[str, Any]:
    msg["facts"] = clean_facts(msg["facts"])
    return msg


def _demo(msg: dict[str, Any]) -> dict[str, Any]:
    msg["header"] = clean_demo_header(msg["header"])
    return msg


CONVERSIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"hello": _hello, "demo": _demo}


# -- stored metric series ----------------------------------------------------------------------------
def _metric(value: Any, field: str) -> float:
    """A value the server stores as a metric: finite and within MAX_METRIC_ABS."""
    if not _in_metric_range(value):
        raise _bad(f"{field}: expected a number from -{MAX_METRIC_ABS:.0e} to {MAX_METRIC_ABS:.0e}")
    return float(value)


def _percent(obj: Any, field: str) -> float | None:
    if not isinstance(obj, dict) or "percent" not in obj:
        return None
    return _metric(obj["percent"], f"{field}.percent")


def metric_series(sample: dict[str, Any]) -> dict[str, float]:
    """The stored time series of a metrics sample (see docs/protocol.md section 5)."""
    series: dict[str, float] = {}
    cpu = sample.get("cpu")
    if isinstance(cpu, dict) and "total" in cpu:
        series["cpu"] = _metric(cpu["total"], "cpu.total")
    load = sample.get("load")
    if isinstance(load, list) and load:
        series["load1"] = _metric(load[0], "load[0]")
    for name in ("mem", "swap"):
        value = _percent(sample.get(name), name)
        if value is not None:
            series[name] = value
    disks = sample.get("disks")
    if isinstance(disks, list):
        percents = [_percent(d, "disks[]") for d in disks[:64]]
        known = [p for p in percents if p is not None]
        if known:
            series["disk"] = max(known)
    temps = sample.get("temps")
    if isinstance(temps, list):
        values = [
            _metric(t["celsius"], "temps[].celsius") for t in temps[:64] if isinstance(t, dict) and "celsius" in t
        ]
        if values:
            series["temp"] = max(values)
    for name in ("uptime", "procs"):
        if name in sample:
            series[name] = _metric(sample[name], name)
    net = sample.get("net")
    if isinstance(net, dict):
        for name in ("rx_bytes", "tx_bytes"):
            if name in net:
                series[f"net_{name[:2]}"] = _metric(net[name], f"net.{name}")
    return series


# -- keep-alive bodies ---------------------------------------------------------------------------------
def keepalive_parts(body: dict[str, Any]) -> tuple[dict[str, float], dict[str, str], dict[str, Any] | None]:
    """A keep-alive body parsed by dvic_core.messages.KEEPALIVE -> (metric series, facts, board logs).

    Board logs (None without `logs`): `{"token", "name", "gap", "lines": [{"seq", "age_ms", "level",
    "msg", "truncated"}]}`, where age_ms is how long before the keep-alive a line was logged: a board
    may not know the date, only its uptime."""
    series = {name: body[name] for name in KEEPALIVE_METRICS if name in body}
    facts = {"firmware": body["firmware"]} if "firmware" in body else {}
    logs = body.get("logs")
    if logs is None:
        return series, facts, None
    now_ms = logs["now_ms"]
    lines = [{"seq": line["seq"], "age_ms": max(0, now_ms - line["ms"]), "level": line["level"], "msg": line["msg"],
              "truncated": line["truncated"]} for line in logs["lines"]]
    return series, facts, {"token": logs["token"], "name": logs["name"], "gap": logs["gap"], "lines": lines}

