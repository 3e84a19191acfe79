"""`dvic shell`, `dvic sessions` and `dvic replay`: a recorded shell on a node, and its recordings.

The server side is docs/protocol.md section 4.3; the terminal side is tui/terminal.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tui import fmt, terminal
from tui.api.follow_command import EXIT_UNREACHED
from tui.cmds.common import SettingsFn, UsageError, client, say, show_list
from tui.cmds.parsing import listing, positive
from tui.textsafe import clean


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("shell", parents=[parent], help="interactive shell on a node (recorded)")
    p.add_argument("node", help="node name or UUID")
    p.set_defaults(handler=open_shell)

    listing(sub, parent, "sessions", "recorded shell sessions", list_sessions)

    p = sub.add_parser("replay", parents=[parent], help="play a recorded shell session in this terminal")
    p.add_argument("id", help="the session id (from `dvic sessions`)")
    p.add_argument("--speed", type=positive, default=1.0, metavar="X", help="playback speed factor (default 1)")
    p.add_argument("--idle-limit", type=positive, metavar="S", help="cap every pause at S seconds")
    p.add_argument("--out", type=Path, metavar="FILE", help="save the asciicast file instead of playing it")
    p.set_defaults(handler=replay)


async def open_shell(args: argparse.Namespace, settings: SettingsFn) -> int:
    cols, rows = terminal.size(sys.stdout.fileno())
    async with client(settings()) as api:
        ws = await api.shell(args.node, cols, rows)
        with terminal.RawMode(sys.stdin.fileno()):
            end = await terminal.relay(ws, sys.stdin.fileno(), sys.stdout.fileno())
    if end.code is None:
        sys.stderr.write(f"dvic: shell on {args.node} ended: {clean(end.message or 'connection closed', single_line=True)}\n")
        return EXIT_UNREACHED
    return end.code & 0xFF


async def list_sessions(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await show_list(args, settings, "sessions", lambda api: api.sessions(node=args.node), _sessions_table)


def _sessions_table(rows: list[dict[str, Any]]) -> str:
    now = time.time()
    table = []
    for r in rows:
        ended = r.get("ended_at")
        length = fmt.duration((ended or now) - r["started_at"]) if isinstance(r.get("started_at"), int | float) else "-"
        table.append([r.get("id", ""), r.get("node_name") or r.get("node_id", ""), r.get("operator", ""),
                      fmt.stamp(r.get("started_at")), length + ("" if ended else " (open)"),
                      "-" if r.get("exit_code") is None else r["exit_code"], fmt.size(r.get("bytes_out"))])
    return fmt.table(["ID", "NODE", "OPERATOR", "STARTED", "LENGTH", "EXIT", "OUTPUT"], table, right=(5, 6))


async def replay(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        cast = await api.recording(args.id)
    if args.out is not None:
        try:
            args.out.write_text(cast)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        say(f"saved {args.out} (asciicast v2: play it with `asciinema play {args.out}`)")
        return 0
    try:
        result = await terminal.play(cast, sys.stdout.fileno(), speed=args.speed, idle_limit=args.idle_limit)
    except ValueError as exc:
        sys.stderr.write(f"dvic: session {args.id}: {exc}\n")
        return 1
    if result.skipped:
        sys.stderr.write(f"\ndvic: {result.skipped} malformed line(s) of the recording skipped "
                         f"(first: line {result.first_bad})\n")
    return 0
