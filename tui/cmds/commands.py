"""`dvic commands` and `dvic command`: recent commands, and one command's per-node results and output.

The server side is docs/protocol.md section 4.3; `dvic run` (tui/cmds/run.py) starts commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dvic_core.constants import RUN_FINAL
from tui import fmt
from tui.api.follow_command import command_text, run_status, state_text
from tui.cmds.common import SettingsFn, client, emit_json, say, show_list
from tui.cmds.parsing import listing
from tui.cmds.run import OutputPrinter
from tui.textsafe import clean


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = listing(sub, parent, "commands", "recent commands", list_commands, "only commands that ran on this node")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")

    p = sub.add_parser("command", parents=[parent], help="one command: per-node results and stored output")
    p.add_argument("id", help="the command id (from `dvic commands`)")
    p.add_argument("--json", action="store_true", help="print the command document")
    p.set_defaults(handler=show_command)


async def list_commands(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await show_list(args, settings, "commands", lambda api: api.commands(node=args.node, limit=args.limit),
                           _commands_table)


def _commands_table(rows: list[dict[str, Any]]) -> str:
    table = [[r.get("id", ""), fmt.stamp(r.get("created_at")), r.get("operator", ""), r.get("target", ""),
              command_text(r)[:60], f"{r.get('ok') or 0}/{r.get('nodes') or 0}",
              "done" if r.get("done") else "running"] for r in rows]
    return fmt.table(["ID", "WHEN", "OPERATOR", "TARGET", "COMMAND", "OK", "STATE"], table)


async def show_command(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        doc = await api.command(args.id)
    if args.json:
        emit_json(doc)
        return 0
    say(f"command {clean(doc.get('id'))}  by {clean(doc.get('operator'))}  at {fmt.stamp(doc.get('created_at'))}")
    say(f"target  {clean(doc.get('target'), single_line=True)}  timeout {doc.get('timeout')} s"
        + ("" if doc.get("done") else "  (still running)"))
    say(f"$ {clean(command_text(doc), single_line=True)}")
    runs = doc.get("runs") or []
    printer = OutputPrinter([str(r.get("node_name")) for r in runs], sys.stdout, sys.stdout, prefixed=True)
    for run in runs:
        name = str(run.get("node_name"))
        say(f"\n== {clean(name, single_line=True)}: {state_text(run, detail=True)}")
        for chunk in run.get("output") or []:
            printer.write(name, str(chunk.get("stream")), clean(chunk.get("data", "")))
        printer.flush_run(name)
    return max((run_status(r) for r in runs if r.get("state") in RUN_FINAL), default=0) if doc.get("done") else 0
