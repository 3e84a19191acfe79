"""Strict JSON in and out (RFC 8259): how the server reads what nodes and clients send, and writes
its answers.

Python's json module reads and writes `NaN`, `Infinity` and integers of any size. Left alone, a
node or a client could make the server store numbers SQLite cannot hold, overflow an average, or
answer text that strict parsers (browsers, most non-Python clients) reject.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

MAX_INT = 2**63 - 1  # SQLite's INTEGER
MAX_DEPTH = 32  # protocol messages nest 4 levels; event data and bodies get room, not a stack overflow


class JsonError(ValueError):
    """Text that is not strict JSON, or a number or nesting beyond the limits; says which."""


def _refuse_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number")


# Made once: `json.loads`/`json.dumps` with any option build a new decoder/encoder per call, a
# few microseconds on every node frame and every answer.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_ENCODERS: dict[tuple[tuple[str, Any], ...], json.JSONEncoder] = {}


def loads(text: str | bytes) -> Any:
    """Decodes JSON, refusing `NaN`/`Infinity`; every failure is a JsonError with a short reason."""
    try:
        if not isinstance(text, str):  # as json.loads: UTF-8, -16 or -32, told by the first bytes
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        elif text.startswith("\ufeff"):
            raise JsonError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
        return _DECODER.decode(text)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError("nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JsonError(str(exc)) from None
    except ValueError:  # int() refuses to convert more than sys.get_int_max_str_digits() digits
        raise JsonError("a number has too many digits") from None


def check_numbers(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """JsonError unless every float is finite, every integer fits in 64 bits and nothing is nested
    deeper than `max_depth` (`1e999` decodes to an infinite float; `parse_constant` never sees it)."""
    level, depth = [value], 0
    while level:  # one nesting level at a time: no recursion, and cheap enough for every frame
        deeper: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is dict:
                deeper.extend(item.values())
            elif kind is list:
                deeper.extend(item)
            elif kind is float and not math.isfinite(item):
                raise JsonError("a number is out of range (beyond about 1.8e308)")
            elif kind is int and not -MAX_INT - 1 <= item <= MAX_INT:
                raise JsonError("an integer is beyond the 64-bit range")
        if deeper and depth == max_depth:
            raise JsonError(f"nested deeper than {max_depth} levels")
        level, depth = deeper, depth + 1


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that never writes `NaN`/`Infinity`.

    Input validation keeps non-finite numbers out of everything the server stores and holds; if
    one still slips through, it is logged and sent as `null` rather than as invalid JSON or a 500.
    """
    try:
        return _encoder(kwargs).encode(value)
    except ValueError as exc:
        log.error("an answer held a non-finite number (%s): sent as null", exc)
        return json.dumps(_finite_only(value), allow_nan=False, **kwargs)


def _encoder(options: dict[str, Any]) -> json.JSONEncoder:
    """One encoder per set of options (callers pass a few fixed sets, in a fixed order)."""
    key = tuple(options.items())
    encoder = _ENCODERS.get(key)
    if encoder is None:
        encoder = _ENCODERS[key] = json.JSONEncoder(allow_nan=False, **options)
    return encoder


def _finite_only(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def json_response(data: Any, *, status: int = 200, **kwargs: Any) -> web.Response:
    """`web.json_response` encoded with `dumps`: every API answer is strict JSON."""
    return web.json_response(data, status=status, dumps=dumps, **kwargs)
