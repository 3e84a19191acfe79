"""Helpers the `dvic` subcommands share: output, time and level options, the client factories.

No argparse here (its classes are in tui/cmds/parsing.py): `dvic run` starts without it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

from dvic_core.constants import LEVELS
from tui.api.config import Settings

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from typing import Any, TextIO

    from tui.api.aio import AsyncClient

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
    stdout = sys.__stdout__
    if stdout is None:  # started without a stdout (pythonw, a service)
        return 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (ValueError, OSError):
        return 80


def parse_level(value: str) -> str:
    up = value.upper()
    if up == "WARN":
        up = "WARNING"
    if up not in LEVELS:
        import argparse  # loaded already: this is an argparse `type`

        raise argparse.ArgumentTypeError(f"unknown level {value!r} (one of {', '.join(LEVELS)})")
    return up


_RELATIVE = r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$"
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, now: float | None = None) -> float:
    """`--since`/`--until`: "90s", "10m", "2h", "7d", "1w" ago; an ISO date/time; or Unix seconds."""
    import re  # only here: compiling the pattern is a cost of every `dvic` start otherwise

    now = time.time() if now is None else now
    m = re.match(_RELATIVE, value)
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    import argparse  # loaded already: this is an argparse `type`
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


def emit(args: Any, doc: Any, text: str) -> int:
    """The API's document with --json, else the text for people; the command's exit code (0)."""
    if args.json:
        emit_json(doc)
    else:
        say(text)
    return 0


async def show_list(args: Any, settings: SettingsFn, key: str,
                    fetch: Callable[[AsyncClient], Awaitable[list[Any]]],
                    table: Callable[[list[Any]], str]) -> int:
    """`dvic actions|sessions|commands`: the records `fetch` reads, as {key: [...]} with --json, else a table."""
    async with client(settings()) as api:
        rows = await fetch(api)
    return emit(args, {key: rows}, "" if args.json else table(rows))


def say(text: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(text + "\n")
    out.flush()


def client(settings: Settings) -> AsyncClient:
    from tui.api.aio import AsyncClient  # not with this module: `dvic run` uses the stdlib transport

    return AsyncClient(settings)
