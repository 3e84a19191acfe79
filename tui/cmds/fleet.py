"""`dvic nodes` and `dvic node NODE`: the fleet as tables or JSON."""

from __future__ import annotations

import argparse
import time
from typing import Any

from dvic_core.constants import NODE_KINDS, NODE_STATES
from tui import fmt
from tui.cmds.common import SettingsFn, client, emit, emit_json, say
from tui.cmds.parsing import command
from tui.textsafe import clean


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = command(sub, parent, "nodes", "list the nodes of the fleet", run_nodes,
                json='print {"nodes": [...]} as the API returns it')
    p.add_argument("--group", help="only this group")
    p.add_argument("--kind", choices=NODE_KINDS, help="only this kind")
    p.add_argument("--state", choices=NODE_STATES, help="only this state")
    p.add_argument("--all", action="store_true", help="also revoked nodes (hidden by default)")
    command(sub, parent, "node", "show one node (name or UUID)", run_node, "node", json="print the node detail document")


def shown_state(n: dict[str, Any]) -> str:
    """A revoked node is no ordinary offline node: it will never come back."""
    return "revoked" if n.get("revoked") else str(n.get("state", "?"))


def node_row(n: dict[str, Any], now: float) -> list[str]:
    m = n.get("metrics") or {}
    demos = n.get("demos") or {}
    return [
        n.get("name", "?"),
        n.get("kind", ""),
        n.get("group", "") or "-",
        shown_state(n),
        fmt.age(n.get("last_seen"), now),
        fmt.percent(m.get("cpu")),
        fmt.percent(m.get("mem")),
        fmt.percent(m.get("disk")),
        fmt.celsius(m.get("temp")),
        f"{demos.get('alive', 0)}/{demos.get('total', 0)}",
        n.get("daemon_version") or "-",
    ]


NODE_HEADERS = ["NAME", "KIND", "GROUP", "STATE", "SEEN", "CPU", "MEM", "DISK", "TEMP", "DEMOS", "VERSION"]


async def run_nodes(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        nodes = await api.nodes(group=args.group, kind=args.kind, state=args.state)
    hidden = 0 if args.all else sum(1 for n in nodes if n.get("revoked"))
    if hidden:
        nodes = [n for n in nodes if not n.get("revoked")]
    if args.json:
        emit_json({"nodes": nodes})
        return 0
    now = time.time()
    nodes.sort(key=lambda n: (str(n.get("group", "")), str(n.get("name", ""))))
    say(fmt.table(NODE_HEADERS, [node_row(n, now) for n in nodes], right=(4, 5, 6, 7, 8, 9)))
    counts: dict[str, int] = {}
    for n in nodes:
        counts[shown_state(n)] = counts.get(shown_state(n), 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    say(f"\n{len(nodes)} nodes" + (f": {clean(summary, single_line=True)}" if summary else "")
        + (f" ({hidden} revoked not shown: --all shows them)" if hidden else ""))
    return 0


def describe_node(d: dict[str, Any], now: float) -> str:
    """The human view of a node detail document (facts, latest sample, demos)."""
    m = d.get("metrics") or {}
    demos = d.get("demos") or {}
    rows = [
        ("name", d.get("name")),
        ("id", d.get("id")),
        ("kind", d.get("kind")),
        ("group", d.get("group") or "-"),
        ("state", f"{d.get('state')} for {fmt.age(d.get('state_since'), now)}"),
        ("last seen", f"{fmt.age(d.get('last_seen'), now)} ago" if d.get("last_seen") else "never"),
        ("connected", "yes" if d.get("connected") else "no"),
        ("daemon", d.get("daemon_version") or "-"),
        ("revoked", "yes" if d.get("revoked") else "no"),
        ("enrolled", fmt.stamp(d.get("created_at"))),
        ("cpu/mem/disk", f"{fmt.percent(m.get('cpu'))} / {fmt.percent(m.get('mem'))} / {fmt.percent(m.get('disk'))}"),
        ("temp", fmt.celsius(m.get("temp"))),
        ("demos", f"{demos.get('alive', 0)} alive of {demos.get('total', 0)}"),
    ]
    facts = d.get("facts") or {}
    for key in sorted(facts):
        value = facts[key]
        if key == "boot_time" and isinstance(value, int | float):
            value = f"{fmt.stamp(value)} (up {fmt.duration(now - value)})"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        rows.append((f"fact {clean(key, single_line=True)}", value))  # keys come from the node too
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {clean(v if v is not None else '-', single_line=True)}" for k, v in rows]
    demo_list = d.get("demos_list") or []
    if demo_list:
        lines.append("")
        lines.append(
            fmt.table(
                ["DEMO", "STATE", "PID", "STARTED", "LAST BEAT", "TOKEN"],
                [
                    [x.get("name", "?"), x.get("state", "?"), x.get("pid", "-"),
                     fmt.age(x.get("started_at"), now) + " ago",
                     # the demo's latest dvic_log record or heartbeat (docs/log-format.md "Heartbeats")
                     fmt.age(x["last_heartbeat"], now) + " ago" if x.get("last_heartbeat") else "-",
                     x.get("token", "")]
                    for x in demo_list
                ],
            )
        )
    return "\n".join(lines)


async def run_node(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        detail = await api.node(args.node)
    return emit(args, detail, "" if args.json else describe_node(detail, time.time()))
