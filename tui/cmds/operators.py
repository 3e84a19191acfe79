"""`dvic operators list|add|approve|role|disable|delete|token`: operator accounts (admin role)."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from typing import Any

from dvic_core.constants import ROLES
from tui import fmt
from tui.api.aio import AsyncClient
from tui.cmds.common import _RELATIVE, _UNIT, SettingsFn, UsageError, client, emit, emit_json, say
from tui.cmds.parsing import action, action_parsers
from tui.textsafe import clean


def parse_expiry(value: str) -> int:
    """`--expires`: a lifetime such as 12h, 30d or 52w (whole seconds from now)."""
    m = re.match(_RELATIVE, value)
    seconds = float(m.group(1)) * _UNIT[m.group(2)] if m else 0
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"cannot read lifetime {value!r}: use e.g. 12h, 30d or 52w")
    return int(seconds)


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    ops = action_parsers(sub, parent, "operators", "manage operator accounts (admin)", run_operators)
    action(ops, parent, "list", "every account with its role and status")
    q = action(ops, parent, "add", "create an active account; prints its token once", "name")
    q.add_argument("--role", choices=ROLES, default="viewer")
    _expires_option(q)
    q = action(ops, parent, "approve", "activate a pending (self-registered) account", "name")
    q.add_argument("--role", choices=ROLES, default="viewer")
    q.add_argument("--code", help="the one-time code the person was shown when registering (asked for if omitted)")
    action(ops, parent, "role", "change an account's role", "name").add_argument("role", choices=ROLES)
    action(ops, parent, "disable", "disable an account and all its tokens", "name")
    action(ops, parent, "delete", "delete a pending or disabled account and its tokens; its name becomes free", "name")
    _expires_option(action(ops, parent, "token", "issue a new token for an account (shown once)", "name"))


def _expires_option(q: argparse.ArgumentParser) -> None:
    q.add_argument("--expires", type=parse_expiry, metavar="LIFETIME",
                   help="the token stops working after this long, e.g. 30d (default: no expiry)")


async def run_operators(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        if args.op == "list":
            ops = await api.operators()
            return emit(args, {"operators": ops}, _operators_table(ops, time.time()))
        if args.op == "add":
            doc = await api.add_operator(args.name, args.role, args.expires)
        elif args.op == "approve":
            doc = await api.approve_operator(args.name, args.role, await _approval_code(api, args))
        elif args.op == "role":
            doc = await api.set_role(args.name, args.role)
        elif args.op == "disable":
            doc = await api.disable_operator(args.name)
        elif args.op == "delete":
            doc = await api.delete_operator(args.name)
        else:
            doc = await api.new_token(args.name, args.expires)
    if args.json:
        emit_json(doc)
        return 0
    messages = {
        "add": f"created operator {args.name} ({getattr(args, 'role', '')})",
        "approve": f"approved {args.name} as {getattr(args, 'role', '')}",
        "role": f"{args.name} is now {getattr(args, 'role', '')}",
        "disable": f"disabled {args.name} and its tokens",
        "delete": f"deleted the {clean(str(doc.get('was', '')))} account {args.name} and its tokens; the name is free",
        "token": f"new token for {args.name}",
    }
    say(messages[args.op])
    expires = doc.get("expires_at")
    if isinstance(expires, (int, float)):
        say(f"the token expires: {fmt.stamp(expires)}")
    if doc.get("token"):
        say(f"token (shown once, keep it secret): {doc['token']}")
    return 0


def _operators_table(ops: list[dict[str, Any]], now: float) -> str:
    def ago(ts: object) -> str:
        return fmt.age(ts, now) + " ago" if isinstance(ts, (int, float)) else "-"

    rows = []
    for o in ops:
        status = str(o.get("status", "-")) + (" (code)" if o.get("needs_code") else "")
        rows.append([o.get("name", "?"), o.get("role", "-"), status, ago(o.get("created_at")),
                     ago(o.get("last_used_at"))])
    return fmt.table(["NAME", "ROLE", "STATUS", "CREATED", "LAST USED"], rows)


async def _approval_code(api: AsyncClient, args: argparse.Namespace) -> str | None:
    """--code, or asked for on a terminal when the account registered with one."""
    if args.code is not None:
        return str(args.code)
    account = next((o for o in await api.operators() if o.get("name") == args.name), None)
    if account is None or not account.get("needs_code"):
        return None  # the server says what is wrong (unknown, not pending), or no code is needed
    if not sys.stdin.isatty():
        raise UsageError(f"{args.name} registered with a one-time code: ask them for it and pass --code CODE")
    try:
        code = (await asyncio.to_thread(input, f"One-time code {args.name} was shown when registering "
                                                "(ask them): ")).strip()
    except EOFError:
        code = ""
    if not code:
        raise UsageError("no code given; nothing changed")
    return code
