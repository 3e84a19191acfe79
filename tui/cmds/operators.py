"""`dvic operators list|add|approve|role|disable|token`: operator accounts (admin role)."""

from __future__ import annotations

import argparse
import time

from tui import fmt
from tui.cmds.common import ROLES, SettingsFn, client, emit_json, say


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("operators", parents=[parent], help="manage operator accounts (admin)")
    ops = p.add_subparsers(dest="op", required=True, metavar="ACTION")
    q = ops.add_parser("list", parents=[parent], help="every account with its role and status")
    q.add_argument("--json", action="store_true")
    q = ops.add_parser("add", parents=[parent], help="create an active account; prints its token once")
    q.add_argument("name")
    q.add_argument("--role", choices=ROLES, default="viewer")
    q.add_argument("--json", action="store_true")
    q = ops.add_parser("approve", parents=[parent], help="activate a pending (self-registered) account")
    q.add_argument("name")
    q.add_argument("--role", choices=ROLES, default="viewer")
    q.add_argument("--json", action="store_true")
    q = ops.add_parser("role", parents=[parent], help="change an account's role")
    q.add_argument("name")
    q.add_argument("role", choices=ROLES)
    q.add_argument("--json", action="store_true")
    q = ops.add_parser("disable", parents=[parent], help="disable an account and all its tokens")
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    q = ops.add_parser("token", parents=[parent], help="issue a new token for an account (shown once)")
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_operators)


async def run_operators(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        if args.op == "list":
            ops = await api.operators()
            if args.json:
                emit_json({"operators": ops})
            else:
                now = time.time()
                say(fmt.table(
                    ["NAME", "ROLE", "STATUS", "CREATED"],
                    [[o.get("name", "?"), o.get("role", "-"), o.get("status", "-"),
                      fmt.age(o.get("created_at"), now) + " ago" if o.get("created_at") else "-"] for o in ops],
                ))
            return 0
        if args.op == "add":
            doc = await api.add_operator(args.name, args.role)
        elif args.op == "approve":
            doc = await api.approve_operator(args.name, args.role)
        elif args.op == "role":
            doc = await api.set_role(args.name, args.role)
        elif args.op == "disable":
            doc = await api.disable_operator(args.name)
        else:
            doc = await api.new_token(args.name)
    if args.json:
        emit_json(doc)
        return 0
    messages = {
        "add": f"created operator {args.name} ({getattr(args, 'role', '')})",
        "approve": f"approved {args.name} as {getattr(args, 'role', '')}",
        "role": f"{args.name} is now {getattr(args, 'role', '')}",
        "disable": f"disabled {args.name} and its tokens",
        "token": f"new token for {args.name}",
    }
    say(messages[args.op])
    if doc.get("token"):
        say(f"token (shown once, keep it secret): {doc['token']}")
    return 0
