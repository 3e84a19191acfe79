"""Helpers the `dvic` subcommands share: output, time options, level order, the client factory."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable

from tui.client import ApiClient
from tui.config import Settings

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from typing import Any, TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ROLES = ("viewer", "operator", "admin")
STATES = ("online", "offline", "maintenance", "failed", "new")
KINDS = ("desktop", "raspberry", "esp32", "other")

# Each handler gets the parsed args and a function that resolves the connection settings (so a
# command such as `login` can run without stored settings).
SettingsFn = Callable[..., Settings]


class UsageError(Exception):
    """Bad option values; reported like argparse errors (exit code 2)."""


def terminal_columns() -> int:
    """`shutil.get_terminal_size().columns`, without importing shutil (it imports bz2 and lzma)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class Formatter(argparse.HelpFormatter):
    """argparse's help formatter; it measures the terminal itself instead of through shutil, a few
    milliseconds of every `dvic` start (argparse makes a formatter for each `add_argument`)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """The parser class of every `dvic` parser (sub-parsers inherit it): `Formatter` by default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)


def level_rank(level: object) -> int:
    try:
        return LEVELS.index(str(level).upper())
    except ValueError:
        return 1  # unknown levels count as INFO, as the log format says for unparsable lines


def line_key(line: dict[str, Any]) -> tuple[str, int] | None:
    """A log line's identity: (node, seq) is unique per node; live lines may come without `id`."""
    seq = line.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        return (str(line.get("node", "")), seq)
    lid = line.get("id")
    return ("#id", lid) if isinstance(lid, int) else None


def parse_level(value: str) -> str:
    up = value.upper()
    if up == "WARN":
        up = "WARNING"
    if up not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {value!r} (one of {', '.join(LEVELS)})")
    return up


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, now: float | None = None) -> float:
    """`--since`/`--until`: "90s", "10m", "2h", "7d", "1w" ago; an ISO date/time; or Unix seconds."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(value)
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import datetime  # only here: a few hundred microseconds off every other start

    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read time {value!r}: use 30s, 10m, 2h, 7d, an ISO date such as 2026-11-24T10:00, "
            "or Unix seconds"
        ) from None


def emit_json(doc: Any, out: TextIO | None = None) -> None:
    """One JSON document (or one JSON line) on stdout. ASCII-escaped so no control byte reaches the tty."""
    out = out or sys.stdout
    out.write(json.dumps(doc, ensure_ascii=True, sort_keys=False) + "\n")
    out.flush()


def say(text: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(text + "\n")
    out.flush()


def client(settings: Settings) -> ApiClient:
    return ApiClient(settings)
