"""`dvic channel add|list|test|remove`, `dvic route add|list|remove`, `dvic notifications [resend]`:
where alerts are sent, and what was sent (docs/alerts.md "Notifications", docs/cli.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tui import fmt
from tui.api.aio import AsyncClient
from tui.cmds.common import SettingsFn, UsageError, client, emit, emit_json, say
from tui.cmds.parsing import action, action_parsers
from tui.textsafe import clean

URL_KINDS = ("webhook", "ntfy", "slack", "mattermost", "discord")
SEVERITIES = ("*", "info", "warning", "critical")


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    _channel_parsers(sub, parent)
    _route_parsers(sub, parent)
    p = sub.add_parser("notifications", parents=[parent], help="notifications sent, pending and failed")
    p.add_argument("--failed", action="store_true", help="only the failed ones (as --state failed)")
    p.add_argument("--state", choices=("pending", "sent", "failed"))
    p.add_argument("--channel", metavar="NAME", help="only those of this channel")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="how many, newest first (default 50)")
    p.add_argument("--json", action="store_true")
    nsub = p.add_subparsers(dest="notify_command", metavar="resend")
    q = nsub.add_parser("resend", parents=[parent], help="send notifications again (operator)")
    q.add_argument("ids", nargs="*", type=int, metavar="ID", help="notifications to send again")
    q.add_argument("--failed", action="store_true", dest="all_failed", help="every failed notification")
    q.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_notifications)


def _channel_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    # allow_abbrev=False: `add --to` is an option of `add`, not an abbreviation of --token here.
    ops = action_parsers(sub, parent, "channel", "notification channels: webhook, ntfy, chat, e-mail", run_channel,
                         allow_abbrev=False)
    q = action(ops, parent, "add", "add a channel (operator)", "name",
               description="Add a notification channel: give exactly one of the kinds.")
    kinds = q.add_mutually_exclusive_group(required=True)
    for kind in URL_KINDS:
        kinds.add_argument(f"--{kind}", metavar="URL", help=f"a {kind} URL" + (
            " (the topic's URL: https://ntfy.example/TOPIC)" if kind == "ntfy" else " (incoming webhook)"
            if kind != "webhook" else " (JSON POST)"))
    kinds.add_argument("--smtp", metavar="HOST:PORT", help="an SMTP server (the port may be left out)")
    q.add_argument("--secret", help="webhook: the HMAC-SHA256 key signing each body (prefer --secret-file)")
    q.add_argument("--secret-file", type=Path, metavar="FILE", help="webhook: read the HMAC key from FILE")
    q.add_argument("--ntfy-token-file", type=Path, metavar="FILE", help="ntfy: read an access token from FILE")
    q.add_argument("--to", action="append", metavar="ADDR", help="smtp: a recipient (repeatable)")
    q.add_argument("--from", dest="sender", metavar="ADDR", help="smtp: the sender (default dvic@HOST)")
    q.add_argument("--user", help="smtp: AUTH user (with --password-file)")
    q.add_argument("--password-file", type=Path, metavar="FILE", help="smtp: read the AUTH password from FILE")
    security = q.add_mutually_exclusive_group()
    security.add_argument("--starttls", action="store_const", const="starttls", dest="security",
                          help="smtp: STARTTLS, required (the default; port 587)")
    security.add_argument("--tls", action="store_const", const="tls", dest="security",
                          help="smtp: implicit TLS (port 465)")
    security.add_argument("--plain", action="store_const", const="plain", dest="security",
                          help="smtp: no TLS, for a relay on the lab's network (not with --user)")
    q.add_argument("--channel-ca", type=Path, metavar="FILE",
                   help="PEM certificates to trust for this channel's TLS (a lab's own CA)")
    action(ops, parent, "list", "every channel (secrets are never shown)")
    action(ops, parent, "test", "send a test message now and show the receiver's answer", "name")
    action(ops, parent, "remove", "remove a channel and its routes (operator)", "name")


def _route_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    ops = action_parsers(sub, parent, "route", "routes from (group, severity) to channels", run_route)
    q = action(ops, parent, "add", "send a group's notices at or above a severity to a channel", "channel")
    q.add_argument("--group", default="*", help="a group, '*' for any (the default), '' for nodes without one")
    q.add_argument("--severity", choices=SEVERITIES, default="*", help="the lowest severity it takes (default: all)")
    action(ops, parent, "list", "every route")
    action(ops, parent, "remove", "remove a route").add_argument("id", type=int)


# -- channel ---------------------------------------------------------------------------------------

async def run_channel(args: argparse.Namespace, settings: SettingsFn) -> int:
    fields = channel_fields(args) if args.op == "add" else {}
    async with client(settings()) as api:
        if args.op == "list":
            channels = await api.channels()
            return emit(args, {"channels": channels}, _channels_table(channels) if channels
                        else "no channels: add one with dvic channel add NAME --webhook URL")
        if args.op == "add":
            doc = await api.add_channel(args.name, fields)
            message = f"added {doc.get('kind')} channel {args.name}: {_target(doc)}"
            if not await _has_routes(api):
                message += "\nno routes: every channel receives every notification"
        elif args.op == "test":
            doc = await api.channel_test(args.name)
            message = f"test message delivered to {args.name}: {clean(doc.get('answer', ''), single_line=True)}"
        else:
            doc = await api.remove_channel(args.name)
            message = f"removed channel {args.name} and its routes"
    return emit(args, doc, message)


def channel_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The API body for `channel add`, secrets read from their files here (never on the command line
    when a file is given)."""
    kind = next((k for k in (*URL_KINDS, "smtp") if getattr(args, k, None)), "")
    fields: dict[str, Any] = {"kind": kind}
    if kind == "smtp":
        host, port = _host_port(args.smtp)
        fields.update(host=host, to=args.to or [])
        if port is not None:
            fields["port"] = port
        if not args.to:
            raise UsageError("an --smtp channel needs at least one --to ADDR")
        for key, value in (("from", args.sender), ("user", args.user), ("security", args.security)):
            if value:
                fields[key] = value
        if args.password_file:
            fields["password"] = _read_secret(args.password_file, "--password-file")
        if args.user and not args.password_file:
            raise UsageError("--user needs --password-file FILE (the password is not taken on the command line)")
    else:
        fields["url"] = getattr(args, kind)
        for option in ("to", "sender", "user", "password_file", "security"):
            if getattr(args, option):
                raise UsageError(f"--{option.replace('_', '-').replace('sender', 'from')} is for --smtp channels")
    if args.secret or args.secret_file:
        if kind != "webhook":
            raise UsageError("--secret / --secret-file are for --webhook channels")
        if args.secret:
            print("dvic: warning: --secret shows the secret to every user of this machine (process list); "
                  "use --secret-file FILE instead", file=sys.stderr)
        fields["secret"] = args.secret or _read_secret(args.secret_file, "--secret-file")
    if args.ntfy_token_file:
        if kind != "ntfy":
            raise UsageError("--ntfy-token-file is for --ntfy channels")
        fields["token"] = _read_secret(args.ntfy_token_file, "--ntfy-token-file")
    if args.channel_ca:
        fields["ca_pem"] = _read_text(args.channel_ca, "--channel-ca")
    return fields


def _host_port(value: str) -> tuple[str, int | None]:
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:  # no port, or a bare IPv6 address in brackets
        return value, None
    if not port.isdigit():
        raise UsageError(f"--smtp {value!r}: expected HOST or HOST:PORT")
    return host, int(port)


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _read_secret(path: Path, option: str) -> str:
    secret = _read_text(path, option).strip()
    if not secret:
        raise UsageError(f"{option}: {path} is empty")
    return secret


async def _has_routes(api: AsyncClient) -> bool:
    return bool((await api.alert_routes()).get("routes"))


def _target(channel: dict[str, Any]) -> str:
    if channel.get("kind") == "smtp":
        to = ", ".join(str(a) for a in channel.get("to") or [])
        return clean(f"{to} via {channel.get('host')}:{channel.get('port')} ({channel.get('security')})",
                     single_line=True)
    return clean(channel.get("url", ""), single_line=True)


def _channels_table(channels: list[dict[str, Any]]) -> str:
    rows = []
    for c in channels:
        secrets = ", ".join(str(s) for s in c.get("secrets") or []) or "-"
        rows.append([clean(c.get("name", "?"), single_line=True), c.get("kind", "-"), _target(c), secrets])
    return fmt.table(["NAME", "KIND", "SENDS TO", "SECRETS SET"], rows)


# -- route -----------------------------------------------------------------------------------------

async def run_route(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        if args.op == "list":
            doc = await api.alert_routes()
            return emit(args, doc, _routes_table(doc["routes"]) if doc["routes"]
                        else "no routes: every channel receives every notification")
        if args.op == "add":
            doc = await api.add_alert_route(args.channel, args.group, args.severity)
            message = (f"route {doc.get('id')}: {_group(args.group)}, {_severity(args.severity)} -> {args.channel}"
                       "\nnotifications now go only where a route sends them")
        else:
            doc = await api.remove_alert_route(args.id)
            message = f"removed route {args.id}"
    return emit(args, doc, message)


def _routes_table(routes: list[dict[str, Any]]) -> str:
    return fmt.table(["ID", "GROUP", "SEVERITY", "CHANNEL"], [
        [r.get("id"), _group(r.get("group")), _severity(r.get("severity")),
         clean(r.get("channel", ""), single_line=True)] for r in routes], right=[0])


def _group(group: object) -> str:
    return {"*": "any group", "": "no group"}.get(str(group), clean(group, single_line=True))


def _severity(severity: object) -> str:
    return "any severity" if severity == "*" else f"{severity} and above"


# -- notifications ---------------------------------------------------------------------------------

async def run_notifications(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        if args.notify_command == "resend":
            if bool(args.ids) == bool(args.all_failed):
                raise UsageError("give notification IDs to send again, or --failed for every failed one")
            if args.all_failed:
                resent = list((await api.resend_failed()).get("resent") or [])
            else:
                resent = [i for n in args.ids for i in (await api.resend_notification(n)).get("resent") or []]
            return emit(args, {"resent": resent},
                        f"queued again: {', '.join(map(str, resent))}" if resent else "nothing to send again")
        if not 1 <= args.limit <= 1000:
            raise UsageError("--limit: from 1 to 1000")
        state = "failed" if args.failed else args.state
        doc = await api.notifications(state=state, channel=args.channel, limit=args.limit)
    if args.json:
        emit_json(doc)
        return 0
    say(_notifications_table(doc["notifications"], time.time()) if doc["notifications"] else "no notifications")
    counts = doc.get("counts") or {}
    say(f"pending {counts.get('pending', 0)}, sent {counts.get('sent', 0)}, failed {counts.get('failed', 0)}")
    return 0


def _notifications_table(items: list[dict[str, Any]], now: float) -> str:
    rows = []
    for n in items:
        outcome = n.get("last_error") if n.get("state") != "sent" else n.get("answer")
        rows.append([n.get("id"), n.get("state"), clean(n.get("channel", ""), single_line=True), n.get("kind"),
                     n.get("severity"), n.get("subjects"), n.get("attempts"),
                     fmt.age(n.get("created_at"), now) + " ago", clean(outcome or "", single_line=True)[:100]])
    return fmt.table(["ID", "STATE", "CHANNEL", "KIND", "SEVERITY", "ALERTS", "TRIES", "CREATED", "LAST ANSWER"],
                     rows, right=[0, 5, 6])
