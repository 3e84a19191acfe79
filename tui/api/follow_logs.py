"""Following logs: the order of levels and the identity of a line, shared by `dvic logs` and the console.

Standard library only (the `TYPE_CHECKING = False` idiom of tui/cmds/run.py): the CLI imports it.
"""

from __future__ import annotations

from dvic_core.constants import LEVELS

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from typing import Any


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
