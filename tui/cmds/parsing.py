"""The argparse classes of every `dvic` parser.

Apart from tui/cmds/common.py so that importing the shared helpers does not import argparse:
`dvic run` reads its usual command line without it (tui/cmds/run.py, `parse_fast`).
"""

from __future__ import annotations

import argparse

from tui.cmds.common import terminal_columns

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from typing import Any


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


def positive(value: str) -> float:
    """An argparse `type`: a number above 0 (`--speed`, `--idle-limit`, an action's `--timeout`)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value!r}")
    return number


def action_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser,  # type: ignore[type-arg]
                   name: str, help: str, handler: Any, **kwargs: Any) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """`dvic NAME ACTION ...`: a command whose first word says what to do (the handler reads `args.op`)."""
    p = sub.add_parser(name, parents=[parent], help=help, **kwargs)
    p.set_defaults(handler=handler)
    ops: argparse._SubParsersAction = p.add_subparsers(dest="op", required=True, metavar="ACTION")  # type: ignore[type-arg]
    return ops


def action(ops: argparse._SubParsersAction, parent: argparse.ArgumentParser,  # type: ignore[type-arg]
           name: str, help: str, *positionals: str, **kwargs: Any) -> argparse.ArgumentParser:
    """One ACTION of such a command: its plain positionals, and --json (the API's document instead of text)."""
    q: argparse.ArgumentParser = ops.add_parser(name, parents=[parent], help=help, **kwargs)
    for positional in positionals:
        q.add_argument(positional)
    q.add_argument("--json", action="store_true")
    return q


def command(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser,  # type: ignore[type-arg]
            name: str, help: str, handler: Any, *positionals: str, json: str | None = None) -> argparse.ArgumentParser:
    """One command (or one verb of a command): its plain positionals, the handler that runs it and, when
    `json` (its help) is given, --json: the API's document instead of text. Its other options are
    added to what it returns."""
    p: argparse.ArgumentParser = sub.add_parser(name, parents=[parent], help=help)
    for positional in positionals:
        p.add_argument(positional)
    if json is not None:
        p.add_argument("--json", action="store_true", help=json)
    p.set_defaults(handler=handler)
    return p


def listing(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser,  # type: ignore[type-arg]
            name: str, help: str, handler: Any, node_help: str | None = None) -> argparse.ArgumentParser:
    """`dvic actions|sessions|commands`: a list of records, optionally of one node, as a table or JSON."""
    p: argparse.ArgumentParser = sub.add_parser(name, parents=[parent], help=help)
    p.add_argument("--node", help=node_help or f"only this node's {name}")
    p.add_argument("--json", action="store_true", help=f'print {{"{name}": [...]}}')
    p.set_defaults(handler=handler)
    return p
