"""Encoding of dvic_log lines: the header and the records, each one JSON object on one line."""

import json
import logging
import math
from typing import Any, Dict, List, Optional, Union

#: Version of the file format, written as "dvic_log" in every header.
FORMAT_VERSION = 1

#: The only level names a record may carry (readers rely on this closed set).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_LEVEL_BY_NAME = {name: getattr(logging, name) for name in LEVELS}
_LEVEL_BY_NAME["WARN"] = logging.WARNING
_LEVEL_BY_NAME["FATAL"] = logging.CRITICAL

# Characters that JSON leaves raw but that some line splitters (Python's str.splitlines, some
# editors and terminals) treat as line breaks. Escaping them keeps "one record, one line" true
# for every reader, not only for readers that split on b"\n".
_LINE_BREAK_ESCAPES = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))

#: Appended to a message or traceback that had to be shortened to fit under the size cap.
TRUNCATION_MARK = " [dvic_log: truncated]"


def level_name(level: Union[int, str]) -> str:
    """Map a logging level (number or name) to one of LEVELS.

    Custom numeric levels fall to the nearest standard level below them, so a record is never
    written with a level name a reader does not know.
    """
    if isinstance(level, str):
        key = level.strip().upper()
        if key in _LEVEL_BY_NAME:
            return logging.getLevelName(_LEVEL_BY_NAME[key])
        raise ValueError(
            "unknown dvic_log level %r: use one of %s or a logging level number" % (level, ", ".join(LEVELS))
        )
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError("dvic_log level must be an int or a level name, not %s" % type(level).__name__)
    if level >= logging.CRITICAL:
        return "CRITICAL"
    if level >= logging.ERROR:
        return "ERROR"
    if level >= logging.WARNING:
        return "WARNING"
    if level >= logging.INFO:
        return "INFO"
    return "DEBUG"


def to_text(value: Any) -> str:
    """Turn any message object into text without ever raising."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not lose the record
        return "<unprintable %s: %s>" % (type(value).__name__, type(exc).__name__)


def _to_utf8_line(text: str) -> bytes:
    """Finish a JSON text: escape Unicode line breaks, make it valid UTF-8, add the newline."""
    if not text.isascii():  # O(1) in CPython: pure-ASCII text skips the scans below
        for raw, escaped in _LINE_BREAK_ESCAPES:
            if raw in text:
                text = text.replace(raw, escaped)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Only strings holding surrogates get here: fold valid pairs, replace lone ones.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        data = text.encode("utf-8")
    return data + b"\n"


def encode_line(obj: Dict[str, Any]) -> bytes:
    """Encode one JSON object as one line of valid UTF-8 ending in a single b"\\n".

    Any Unicode is written as is (not \\u-escaped) so files stay readable with cat/less; lone
    surrogates (from os.fsdecode, surrogateescape or broken input) become U+FFFD, while a
    surrogate pair split over two code points is joined back into the character it encodes.
    """
    return _to_utf8_line(
        json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=to_text)
    )


# The C string escaper json.dumps(ensure_ascii=False) itself uses: quotes, backslashes and
# control characters escaped, everything else kept.
_quote = json.encoder.encode_basestring  # type: ignore[attr-defined]
_RECORD_KEYS = frozenset(("ts", "level", "msg", "logger", "exc"))


def record_line(
    ts: float, level: str, msg: str, logger: Optional[str] = None, exc: Optional[str] = None
) -> bytes:
    """The line of one record, built directly (the hot path, ~3x faster than json.dumps).

    Same bytes as encode_line(make_record(...)); ts must be a finite float, the rest str.
    """
    parts = ['{"ts":', repr(round(ts, 3)), ',"level":', _quote(level), ',"msg":', _quote(msg)]
    if logger:
        parts += (',"logger":', _quote(logger))
    if exc:
        parts += (',"exc":', _quote(exc))
    parts.append("}")
    return _to_utf8_line("".join(parts))


def heartbeat_line(ts: float) -> bytes:
    """The line of a heartbeat record (docs/log-format.md, "Heartbeats"): a DEBUG record that
    version-1 readers show as "heartbeat" and newer readers recognise by "heartbeat": 1."""
    return ('{"ts":%s,"level":"DEBUG","msg":"heartbeat","heartbeat":1}\n' % repr(round(ts, 3))).encode("ascii")


def is_heartbeat(record: Dict[str, Any]) -> bool:
    """Whether a parsed record is a heartbeat (its "heartbeat" field is 1)."""
    value = record.get("heartbeat")
    return value == 1 and not isinstance(value, bool)


def encode_record(record: Dict[str, Any]) -> bytes:
    """encode_line() for a record dict, through record_line() when it has the usual shape."""
    ts = record.get("ts")
    if record.keys() - _RECORD_KEYS or not isinstance(ts, float) or not math.isfinite(ts):
        return encode_line(record)  # anything unusual takes the general (and strict) path
    fields = [record.get(key) for key in ("level", "msg", "logger", "exc")]
    if not all(value is None or isinstance(value, str) for value in fields):
        return encode_line(record)
    return record_line(ts, *fields)  # type: ignore[arg-type]


def make_header(
    token: str,
    name: str,
    pid: int,
    pid_start: Optional[int],
    exe: str,
    argv: List[str],
    user: str,
    host: str,
    start: float,
    rotated: int = 0,
) -> Dict[str, Any]:
    """Build the header object (line 1 of every file); "rotated" appears only after a rotation."""
    header: Dict[str, Any] = {
        "dvic_log": FORMAT_VERSION,
        "token": token,
        "name": name,
        "pid": pid,
        "pid_start": pid_start,
        "exe": exe,
        "argv": argv,
        "user": user,
        "host": host,
        "start": round(start, 3),
    }
    if rotated:
        header["rotated"] = rotated
    return header


def make_record(
    ts: float, level: str, msg: str, logger: Optional[str] = None, exc: Optional[str] = None
) -> Dict[str, Any]:
    """Build one record object; "logger" and "exc" are left out when empty."""
    record: Dict[str, Any] = {"ts": round(ts, 3), "level": level, "msg": msg}
    if logger:
        record["logger"] = logger
    if exc:
        record["exc"] = exc
    return record


def _encoded_size(text: str) -> int:
    """Bytes text takes inside a line: JSON-escaped, U+0085/U+2028/U+2029 escaped, lone surrogates as U+FFFD."""
    return len(_to_utf8_line(_quote(text))) - 3  # without the quotes and the newline


def _cut_encoded(text: str, budget: int) -> str:
    """The longest prefix of whole characters of text whose encoded size is at most budget bytes.

    Every library cuts exactly so (docs/log-format.md, "Size of one record"); the size only grows
    with the prefix, so a binary search finds it with about 20 encodings of a 1 MiB text.
    """
    if _encoded_size(text) <= budget:
        return text
    low, high = 0, len(text)  # text[:low] fits, text[:high] does not
    while high - low > 1:
        mid = (low + high) // 2
        if _encoded_size(text[:mid]) <= budget:
            low = mid
        else:
            high = mid
    return text[:low]


def _share(room: int, sizes: Dict[str, int]) -> Dict[str, int]:
    """Split room bytes between fields: small fields keep all they need, big ones share the rest."""
    shares: Dict[str, int] = {}
    pending = sorted(sizes, key=lambda k: sizes[k])
    while pending:
        fair = room // len(pending)
        key = pending.pop(0)
        shares[key] = min(sizes[key], max(0, fair))
        room -= shares[key]
    return shares


def fit_record(record: Dict[str, Any], max_line: int) -> bytes:
    """Encode a record, shortening "msg", "exc" and "logger" so the line is at most max_line bytes.

    A record bigger than a whole file would otherwise break the size cap; it is cut, marked
    with TRUNCATION_MARK, and still written, so the reader sees that something was there.
    """
    line = encode_record(record)
    if len(line) <= max_line:
        return line
    fields = [key for key in ("msg", "exc", "logger") if record.get(key)]
    if not fields:
        return line
    out = dict(record)
    for key in fields:
        out[key] = TRUNCATION_MARK
    room = max_line - len(encode_record(out))
    shares = _share(room, {key: _encoded_size(record[key]) for key in fields})
    for key in fields:
        text = record[key]
        if shares[key] < _encoded_size(text):
            text = _cut_encoded(text, shares[key]) + TRUNCATION_MARK
        out[key] = text
    line = encode_record(out)
    # Escaped characters take more room than their bytes: trim the longest field by the overflow
    # until it fits; every pass removes at least the overflow, so this ends quickly.
    for _ in range(16):
        overflow = len(line) - max_line
        if overflow <= 0:
            return line
        key = max(fields, key=lambda k: len(out[k]))
        text = out[key][: -len(TRUNCATION_MARK)] if out[key].endswith(TRUNCATION_MARK) else out[key]
        out[key] = _cut_encoded(text, _encoded_size(text) - overflow) + TRUNCATION_MARK
        line = encode_record(out)
    return line
