"""Node protocol v1 (docs/protocol.md section 2): limits, and a validator per message type.

The server trusts no field a daemon sends: every message goes through `parse_node_message`,
which returns a cleaned dict or raises ProtocolError with the websocket close code to use.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

from dvic_core.constants import (
    ACTION_STATES,
    CLOSE_BAD_VERSION,
    CLOSE_MALFORMED,
    CLOSE_UNKNOWN_TYPE,
    DEMO_STATES,
    LEVELS,
    LOG_SOURCES,
    PROTOCOL_VERSION,
)

from .strictjson import MAX_INT, JsonError, check_numbers, loads

MAX_FRAME_BYTES = 1024 * 1024
MAX_BATCH_LINES = 500
MAX_MSG_BYTES = 64 * 1024
MAX_FACT_CHARS = 256
MAX_FACT_ITEMS = 64
# A keep-alive body: 4 KiB were plenty until boards sent their log lines with it (docs/esp32.md).
MAX_KEEPALIVE_BYTES = 64 * 1024
MAX_FACT_KEY_CHARS = 64
# The largest magnitude a stored metric may have: room for byte counters up to a petabyte, and
# far from where SQLite's avg()/sum() of many samples could overflow to Infinity.
MAX_METRIC_ABS = 1e15


class ProtocolError(Exception):
    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message


def _bad(message: str) -> ProtocolError:
    return ProtocolError(CLOSE_MALFORMED, "bad_message", message)


def _is_finite(value: int | float) -> bool:
    """math.isfinite, without its OverflowError for an integer too large for a float."""
    return math.isfinite(value) if isinstance(value, float) else -MAX_INT - 1 <= value <= MAX_INT


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and _is_finite(value)


def _number(value: Any, field: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if not _is_number(value):
        raise _bad(f"{field}: expected a finite number")
    return float(value)


def _in_metric_range(value: Any) -> bool:
    return _is_number(value) and -MAX_METRIC_ABS <= value <= MAX_METRIC_ABS


def _metric(value: Any, field: str) -> float:
    """A value the server stores as a metric (or its timestamp): finite and within MAX_METRIC_ABS."""
    if not _in_metric_range(value):
        raise _bad(f"{field}: expected a number from -{MAX_METRIC_ABS:.0e} to {MAX_METRIC_ABS:.0e}")
    return float(value)


def _string(value: Any, field: str, limit: int, *, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise _bad(f"{field}: expected a string")
    if len(value) > limit:
        raise _bad(f"{field}: longer than {limit} characters")
    return value


def _clip(text: str, limit_bytes: int) -> tuple[str, bool]:
    """Valid UTF-8 (lone surrogates replaced) of at most limit_bytes; True when it was cut."""
    if len(text) <= limit_bytes and text.isascii():
        return text, False  # the common case, without encoding the text twice
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit_bytes:
        return raw.decode("utf-8"), False
    return raw[:limit_bytes].decode("utf-8", "ignore"), True


# C0 and C1 controls, DEL and the bidi overrides: a key holding one could drive the terminal of
# whoever prints it (an OSC 52 clipboard write) or reorder what is shown.
_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


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


def parse_hello(msg: dict[str, Any]) -> dict[str, Any]:
    version = msg.get("protocol")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            CLOSE_BAD_VERSION, "bad_version",
            f"protocol version {version!r} is not supported (server speaks {PROTOCOL_VERSION})",
        )
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "daemon_version": _string(msg.get("daemon_version"), "daemon_version", 64, default=""),
        "facts": clean_facts(msg.get("facts", {})),
    }


def _percent(obj: Any, field: str) -> float | None:
    if not isinstance(obj, dict) or "percent" not in obj:
        return None
    return _metric(obj["percent"], f"{field}.percent")


MAX_METRICS_CHARS = 64 * 1024


def parse_metrics(msg: dict[str, Any]) -> dict[str, Any]:
    ts = _metric(msg.get("ts"), "ts")
    sample: dict[str, Any] = {"type": "metrics", "ts": ts}
    for key in ("cpu", "load", "mem", "swap", "disks", "temps", "throttled", "uptime", "procs", "net"):
        if key in msg:
            sample[key] = msg[key]
    # The fields we derive series from are validated by metric_series; the rest is kept as the
    # node's latest sample, whose size parse_node_message bounds by the frame's (MAX_METRICS_CHARS).
    return sample


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
        known_t = [v for v in values if v is not None]
        if known_t:
            series["temp"] = max(known_t)
    for name in ("uptime", "procs"):
        if name in sample:
            series[name] = _metric(sample[name], name)
    net = sample.get("net")
    if isinstance(net, dict):
        for name in ("rx_bytes", "tx_bytes"):
            if name in net:
                series[f"net_{name[:2]}"] = _metric(net[name], f"net.{name}")
    return series


def parse_log_line(line: Any, index: int) -> dict[str, Any]:
    # Runs for every line the fleet sends: checks first, error text only when one fails.
    if not isinstance(line, dict):
        raise _bad(f"lines[{index}]: expected an object")
    seq = line.get("seq")
    if type(seq) is not int or seq < 1 or seq >= 2**63:
        raise _bad(f"lines[{index}].seq: expected an integer >= 1")
    ts = line.get("ts")
    if not ((type(ts) is float and math.isfinite(ts)) or (type(ts) is int and -MAX_INT - 1 <= ts <= MAX_INT)):
        raise _bad(f"lines[{index}].ts: expected a finite number")
    source = line.get("source")
    if source not in LOG_SOURCES:
        raise _bad(f"lines[{index}].source: expected one of {', '.join(LOG_SOURCES)}")
    level = line.get("level")
    if type(level) is not str or level not in LEVELS:  # (an unhashable value must not raise TypeError)
        raise _bad(f"lines[{index}].level: expected one of {', '.join(LEVELS)}")
    msg = line.get("msg")
    if not isinstance(msg, str):
        raise _bad(f"lines[{index}].msg: expected a string")
    unit = line.get("unit")
    if unit is None:
        unit = ""
    elif not isinstance(unit, str) or len(unit) > 256:
        unit = _string(unit, f"lines[{index}].unit", 256)
    demo = line.get("demo")
    if demo is None:
        demo = ""
    elif not isinstance(demo, str) or len(demo) > 64:
        demo = _string(demo, f"lines[{index}].demo", 64)
    text, clipped = _clip(msg, MAX_MSG_BYTES)
    return {
        "seq": seq,
        "ts": float(ts),
        "source": source,
        "unit": unit,
        "demo": demo,
        "level": level,
        "msg": text,
        "truncated": bool(line.get("truncated")) or clipped,
    }


def parse_logs(msg: dict[str, Any]) -> dict[str, Any]:
    lines = msg.get("lines")
    if not isinstance(lines, list):
        raise _bad("lines: expected a list")
    if len(lines) > MAX_BATCH_LINES:
        raise _bad(f"lines: more than {MAX_BATCH_LINES} lines in one batch")
    return {"type": "logs", "lines": [parse_log_line(line, i) for i, line in enumerate(lines)]}


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


def parse_demo(msg: dict[str, Any]) -> dict[str, Any]:
    state = msg.get("state")
    if state not in DEMO_STATES:
        raise _bad(f"state: expected one of {', '.join(DEMO_STATES)}")
    pid = msg.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
        raise _bad("pid: expected a non-negative integer")
    header = msg.get("header", {})
    return {
        "type": "demo",
        "token": _string(msg.get("token"), "token", 64),
        "name": _string(msg.get("name"), "name", 256, default=""),
        "pid": pid,
        "state": state,
        "started_at": _number(msg.get("started_at"), "started_at", allow_none=True),
        "exited_at": _number(msg.get("exited_at"), "exited_at", allow_none=True),
        "header": clean_demo_header(header),
        # The ts of the demo's latest dvic_log record (docs/log-format.md "Heartbeats"); absent from older daemons.
        "last_heartbeat": _number(msg.get("last_heartbeat"), "last_heartbeat", allow_none=True),
    }


def parse_event(msg: dict[str, Any]) -> dict[str, Any]:
    data = msg.get("data", {})
    if not isinstance(data, dict):
        raise _bad("data: expected an object")
    if len(json.dumps(data)) > 16 * 1024:
        raise _bad("data: larger than 16 KiB")
    return {
        "type": "event",
        "kind": _string(msg.get("kind"), "kind", 64),
        "message": _string(msg.get("message"), "message", 4096, default=""),
        "data": data,
    }


MAX_CHUNK_BYTES = 48 * 1024


def _request_id(msg: dict[str, Any]) -> str:
    return _string(msg.get("id"), "id", 64)


def _int_or_none(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{field}: expected an integer or null")
    return value


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) > (MAX_CHUNK_BYTES * 4) // 3 + 8:
        raise _bad(f"{field}: expected base64 text of at most {MAX_CHUNK_BYTES} decoded bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{field}: not valid base64") from None


def parse_exec_started(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "exec_started", "id": _request_id(msg), "pid": _int_or_none(msg.get("pid"), "pid")}


def parse_exec_output(msg: dict[str, Any]) -> dict[str, Any]:
    stream = msg.get("stream")
    if stream not in ("stdout", "stderr"):
        raise _bad("stream: expected stdout or stderr")
    data = _string(msg.get("data"), "data", MAX_CHUNK_BYTES)
    return {"type": "exec_output", "id": _request_id(msg), "stream": stream, "data": _clip(data, MAX_CHUNK_BYTES)[0]}


EXIT_REASONS = ("exited", "timeout", "cancelled", "failed", "duplicate", "refused")


def parse_exec_exit(msg: dict[str, Any]) -> dict[str, Any]:
    reason = msg.get("reason", "exited")
    if reason not in EXIT_REASONS:
        raise _bad(f"reason: expected one of {', '.join(EXIT_REASONS)}")
    return {
        "type": "exec_exit", "id": _request_id(msg), "code": _int_or_none(msg.get("code"), "code"),
        "signal": _int_or_none(msg.get("signal"), "signal"), "reason": reason,
        "message": _string(msg.get("message"), "message", 4096, default=""),
        "truncated": bool(msg.get("truncated")),
    }


def parse_shell_opened(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "shell_opened", "id": _request_id(msg), "pid": _int_or_none(msg.get("pid"), "pid")}


def parse_shell_output(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "shell_output", "id": _request_id(msg), "data": _b64(msg.get("data"), "data")}


def parse_shell_exit(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "shell_exit", "id": _request_id(msg), "code": _int_or_none(msg.get("code"), "code"),
            "message": _string(msg.get("message"), "message", 4096, default="")}


def parse_action_state(msg: dict[str, Any]) -> dict[str, Any]:
    state = msg.get("state")
    if state not in ACTION_STATES:
        raise _bad(f"state: expected one of {', '.join(ACTION_STATES)}")
    return {"type": "action_state", "id": _request_id(msg), "state": state,
            "message": _string(msg.get("message"), "message", 4096, default="")}


def parse_tunnel_opened(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tunnel_opened", "id": _request_id(msg)}


def parse_tunnel_data(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tunnel_data", "id": _request_id(msg), "data": _b64(msg.get("data"), "data")}


def parse_tunnel_closed(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tunnel_closed", "id": _request_id(msg),
            "message": _string(msg.get("message"), "message", 4096, default="")}


UPDATE_STATES = ("downloading", "verified", "restarting", "refused", "failed", "rolled_back")


def parse_update_state(msg: dict[str, Any]) -> dict[str, Any]:
    state = msg.get("state")
    if state not in UPDATE_STATES:
        raise _bad(f"state: expected one of {', '.join(UPDATE_STATES)}")
    return {"type": "update_state", "id": _request_id(msg), "state": state,
            "message": _string(msg.get("message"), "message", 4096, default="")}


def parse_unsupported(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "unsupported", "id": _string(msg.get("id"), "id", 64, default=""),
            "what": _string(msg.get("what"), "what", 64, default="")}


# Replies to server requests (docs/protocol.md section 6), routed to the remote-control hubs.
REMOTE_TYPES = frozenset({
    "exec_started", "exec_output", "exec_exit", "shell_opened", "shell_output", "shell_exit", "action_state",
    "tunnel_opened", "tunnel_data", "tunnel_closed", "update_state", "unsupported",
})

PARSERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "exec_started": parse_exec_started,
    "exec_output": parse_exec_output,
    "exec_exit": parse_exec_exit,
    "shell_opened": parse_shell_opened,
    "shell_output": parse_shell_output,
    "shell_exit": parse_shell_exit,
    "action_state": parse_action_state,
    "tunnel_opened": parse_tunnel_opened,
    "tunnel_data": parse_tunnel_data,
    "tunnel_closed": parse_tunnel_closed,
    "update_state": parse_update_state,
    "unsupported": parse_unsupported,
    "hello": parse_hello,
    "metrics": parse_metrics,
    "logs": parse_logs,
    "demo": parse_demo,
    "event": parse_event,
}


def parse_node_message(text: str) -> dict[str, Any]:
    """Decode and validate one text frame from a node."""
    try:
        msg = loads(text)
    except JsonError as exc:
        raise _bad(f"not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise _bad("expected a JSON object")
    kind = msg.get("type")
    parser = PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ProtocolError(CLOSE_UNKNOWN_TYPE, "unknown_type", f"unknown message type {kind!r}")
    if kind == "metrics" and len(text) > MAX_METRICS_CHARS:
        raise _bad(f"metrics: sample larger than {MAX_METRICS_CHARS // 1024} KiB")
    if kind != "logs":
        # Parts of these are kept as sent (the latest sample, event data): no number in them may
        # be one that SQLite or strict JSON cannot hold. Log lines, the bulk of the traffic, are
        # checked field by field by parse_log_line instead (it keeps no other field).
        try:
            check_numbers(msg)
        except JsonError as exc:
            raise _bad(str(exc)) from None
    return parser(msg)


def parse_keepalive(body: Any) -> tuple[dict[str, float], dict[str, str]]:
    """Keep-alive body -> (metric series, facts). Raises ValueError with a readable reason."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    series: dict[str, float] = {}
    for name in ("uptime", "free_mem", "rssi", "cpu", "temp"):
        value = body.get(name)
        if value is None:
            continue
        if not _in_metric_range(value):
            raise ValueError(f"{name}: expected a number from -{MAX_METRIC_ABS:.0e} to {MAX_METRIC_ABS:.0e}")
        series[name] = float(value)
    facts: dict[str, str] = {}
    firmware = body.get("firmware")
    if firmware is not None:
        if not isinstance(firmware, str) or len(firmware) > MAX_FACT_CHARS:
            raise ValueError(f"firmware: expected a string of at most {MAX_FACT_CHARS} characters")
        facts["firmware"] = firmware
    return series, facts


# The `logs` object of a keep-alive body (docs/protocol.md section 3): an ESP32 board's log lines.
KEEPALIVE_LOGS_VERSION = 1


def _whole(value: Any, field: str, low: int, high: int = MAX_INT) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{field}: expected an integer from {low} to {high}")
    return value


def _keepalive_line(line: Any, index: int, now_ms: int) -> dict[str, Any]:
    field = f"logs.lines[{index}]"
    if not isinstance(line, dict):
        raise ValueError(f"{field}: expected an object")
    level = line.get("level")
    if type(level) is not str or level not in LEVELS:
        raise ValueError(f"{field}.level: expected one of {', '.join(LEVELS)}")
    msg = line.get("msg")
    if not isinstance(msg, str):
        raise ValueError(f"{field}.msg: expected a string")
    text, clipped = _clip(msg, MAX_MSG_BYTES)
    return {
        "seq": _whole(line.get("seq"), f"{field}.seq", 1),
        # how long before the keep-alive it was logged: a board may not know the date, only its uptime
        "age_ms": max(0, now_ms - _whole(line.get("ms"), f"{field}.ms", 0)),
        "level": level,
        "msg": text,
        "truncated": bool(line.get("truncated")) or clipped,
    }


def parse_keepalive_logs(body: dict[str, Any]) -> dict[str, Any] | None:
    """The board's log lines of a keep-alive body, validated; None when it has no `logs`.

    Raises ValueError with a readable reason (the keep-alive answers 400 bad_field). A board sends
    `{"v": 1, "token", "name", "now_ms", "lines": [...], "gap": {...}}`; see docs/esp32.md.
    """
    logs = body.get("logs")
    if logs is None:
        return None
    if not isinstance(logs, dict):
        raise ValueError("logs: expected an object")
    version = logs.get("v")
    if version != KEEPALIVE_LOGS_VERSION:
        raise ValueError(f"logs.v: version {version!r} is not supported (this server reads {KEEPALIVE_LOGS_VERSION})")
    token = logs.get("token")
    if not isinstance(token, str) or not 1 <= len(token) <= 64:
        raise ValueError("logs.token: expected a string of 1 to 64 characters (the board's boot token)")
    name = logs.get("name", "")
    if not isinstance(name, str) or len(name) > 256:
        raise ValueError("logs.name: expected a string of at most 256 characters")
    now_ms = _whole(logs.get("now_ms"), "logs.now_ms", 0)
    lines = logs.get("lines", [])
    if not isinstance(lines, list) or len(lines) > MAX_BATCH_LINES:
        raise ValueError(f"logs.lines: expected a list of at most {MAX_BATCH_LINES} lines")
    gap = logs.get("gap")
    if gap is not None:
        if not isinstance(gap, dict):
            raise ValueError("logs.gap: expected an object")
        first = _whole(gap.get("first_seq"), "logs.gap.first_seq", 1)
        gap = {"first_seq": first, "last_seq": _whole(gap.get("last_seq"), "logs.gap.last_seq", first)}
    return {"token": token, "name": name, "gap": gap,
            "lines": [_keepalive_line(line, i, now_ms) for i, line in enumerate(lines)]}
