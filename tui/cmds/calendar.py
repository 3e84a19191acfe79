"""`dvic calendar`, `runbook`, `book` and `bookings`: the venue calendar (docs/calendar.md).

Times are sent as typed (ISO 8601 in the group's zone, `now`, `+30m`, `+2h`, `+1d`): the server reads
them in the group's zone and says what to change when it cannot. Every listing has --json.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from dvic_core.constants import NODE_KINDS
from tui import fmt
from tui.api import calls
from tui.cmds.common import SettingsFn, UsageError, client, emit_json, say
from tui.cmds.parsing import command
from tui.textsafe import clean

Json = dict[str, Any]
ANSWER = "print the server's answer"  # the --json of a command that changes something
WHEN = "ISO 8601 in the group's zone (2027-01-10T09:00), now, or +30m, +2h, +1d"


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("calendar", parents=[parent], help="opening hours and exceptions per group")
    verbs = p.add_subparsers(dest="verb", metavar="show|hours|except")
    show = command(verbs, parent, "show", "hours, exceptions and today's moments", show_calendar,
                   json='print {"groups": [...]}')
    show.add_argument("--group", help="only this group")
    show.add_argument("--week", action="store_true", help="the next 7 days, not only today")
    hours = command(verbs, parent, "hours", "set a group's weekly hours (admin)", set_hours, "group",
                    json=ANSWER)
    hours.add_argument("lines", nargs="+", metavar="HOURS", help='e.g. "mon-fri 10:00-18:00" "sat 14:00-18:00"')
    hours.add_argument("--zone", help="IANA time zone, e.g. Europe/Paris (default: the group's or the server's)")
    exc = command(verbs, parent, "except", "one date's hours: closed, 09:00-22:00, or normal", set_exception,
                  "group", json=ANSWER)
    exc.add_argument("day", metavar="YYYY-MM-DD")
    exc.add_argument("hours", metavar="HOURS", help="closed, ranges such as 09:00-22:00, or normal")
    exc.add_argument("--note", help="why (shown with the day)")
    p.set_defaults(handler=show_calendar, group=None, week=False, json=False)

    p = sub.add_parser("runbook", parents=[parent], help="steps fired at calendar moments")
    verbs = p.add_subparsers(dest="verb", metavar="add|list|show|run-now|history|delete")
    add = command(verbs, parent, "add", "add a runbook (admin)", add_runbook, "group", "name", json=ANSWER)
    add.add_argument("--at", required=True, metavar="MOMENT", help="open, close, open-15m, close+30m or 03:00")
    add.add_argument("--step", action="append", required=True, metavar="STEP", dest="steps",
                     help="start DEMO, stop DEMO, restart DEMO, reboot, run COMMAND, maintenance on|off, "
                          "deploy DEMO@VERSION, undeploy DEMO (repeat, in order)")
    add.add_argument("--catch-up", type=float, metavar="S",
                     help="seconds during which a node offline at the moment still gets the steps when it comes back")
    command(verbs, parent, "list", "the runbooks", list_runbooks,
            json='print {"runbooks": [...]}').add_argument("--group", help="only this group")
    command(verbs, parent, "show", "a runbook, its next moment and latest firings", show_runbook, "group", "name",
            json=ANSWER)
    command(verbs, parent, "run-now", "fire a runbook now (admin)", run_now, "group", "name",
            json="print the firing").add_argument("--wait", action="store_true", help="follow the firing until it ends")
    hist = command(verbs, parent, "history", "firings, newest first", runbook_history,
                   json='print {"firings": [...]}')
    hist.add_argument("group", nargs="?")
    hist.add_argument("name", nargs="?")
    hist.add_argument("--limit", type=int, default=20)
    command(verbs, parent, "delete", "delete a runbook (admin; its history stays)", delete_runbook, "group", "name")
    p.set_defaults(handler=list_runbooks, group=None, json=False)

    p = command(sub, parent, "book", "book machines (or: book cancel ID, book extend ID --to T)", book,
                json="print the booking")
    p.add_argument("nodes", nargs="*", metavar="NODE", help="node names, or cancel ID, or extend ID")
    p.add_argument("--group", help="book --count machines of this group")
    p.add_argument("--kind", choices=NODE_KINDS, help="with --group: only this kind")
    p.add_argument("--count", type=int, help="with --group: how many machines")
    p.add_argument("--from", dest="start", metavar="T", help=f"start (default now): {WHEN}")
    p.add_argument("--to", metavar="T", help=f"end: {WHEN}")
    p.add_argument("--deploy", metavar="NAME@VERSION", help="deploy this on the machines while booked")
    p.add_argument("--note", help="what for (shown to others)")

    p = command(sub, parent, "bookings", "bookings not over yet, or holding at a time", list_bookings,
                json='print {"bookings": [...]}')
    p.add_argument("--mine", action="store_true", help="only mine")
    p.add_argument("--at", metavar="T", help=f"holding at this time: {WHEN}")
    p.add_argument("--group", help="only bookings of this group's machines")


# -- formatting ------------------------------------------------------------------------------------------
def local(ts: float | None, zone: str | None = None) -> str:
    """A time in the group's zone (else this machine's, named: a runbook's group may have another), to
    the minute."""
    if ts is None:
        return "-"
    when = datetime.fromtimestamp(ts, ZoneInfo(zone)) if zone else datetime.fromtimestamp(ts).astimezone()
    return when.strftime("%Y-%m-%d %H:%M %Z").strip()


def _c(value: object) -> str:
    return clean(value, single_line=True)


def describe_group(g: Json) -> str:
    lines = [f"{_c(g['group'])}  ({_c(g['zone'])})" + (
        "" if g.get("open_now") is None else ("  open now" if g["open_now"] else "  closed now"))]
    if g.get("hours") is None:
        lines.append("  no opening hours (dvic calendar hours GROUP \"mon-fri 10:00-18:00\")")
        return "\n".join(lines)
    lines.append("  week: " + "; ".join(_c(h) for h in g["hours"]))
    for e in g.get("exceptions", []):
        lines.append(f"  {_c(e['day'])}: {_c(e['hours'])} (exception)")
    for day in g.get("days", []):
        moments = ", ".join(f"{local(m['at'], g['zone'])[11:16]} {_c(m['runbook'])}" for m in day["moments"])
        lines.append(f"  {_c(day['day'])} {_c(day['hours'])}" + ("*" if day.get("exception") else "")
                     + (f"  [{moments}]" if moments else ""))
    return "\n".join(lines)


def describe_booking(b: Json) -> str:
    return (f"#{b['id']} {_c(b['holder'])}: {', '.join(_c(n) for n in b.get('node_names', []))} "
            f"from {local(b['starts_at'])} to {local(b['ends_at'])}" + (f" ({_c(b['state'])})" if b["state"] != "active"
                                                                       else "")
            + (f"  deploy {deploy_text(b)}" if b.get("deploy") else "")
            + (f"  {_c(b['note'])}" if b.get("note") else ""))


def deploy_text(b: Json) -> str:
    """A booking's release and how far it went (applied at its start, restored at its end)."""
    if not b.get("deploy"):
        return ""
    state = b.get("deploy_state") or "at its start"
    return f"{_c(b['deploy'])} ({_c(state)})"


def firing_rows(firings: list[Json]) -> str:
    rows = []
    for f in firings:
        nodes = ", ".join(f"{_c(n['node_name'])}:{_c(n['state'])}" for n in f.get("nodes", []))
        rows.append([str(f["id"]), f"{_c(f['grp'])}/{_c(f['runbook'])}", fmt.stamp(f["due_at"]), _c(f["trigger"]),
                     _c(f["state"]), nodes or _c(f.get("message", ""))])
    return fmt.table(["ID", "RUNBOOK", "DUE", "TRIGGER", "STATE", "NODES"], rows)


# -- calendar ----------------------------------------------------------------------------------------------
async def show_calendar(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        groups = await api.send(calls.calendar(group=args.group, days=7 if args.week else 1))
    if args.json:
        emit_json({"groups": groups})
    elif not groups:
        say("no group has opening hours yet: dvic calendar hours GROUP \"mon-fri 10:00-18:00\" --zone Europe/Paris")
    else:
        say("\n\n".join(describe_group(g) for g in groups))
    return 0


async def set_hours(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        group = await api.send(calls.set_hours(args.group, args.lines, args.zone))
    emit_json(group) if args.json else say(describe_group(group))
    return 0


async def set_exception(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        group = await api.send(calls.set_exception(args.group, args.day, args.hours, args.note))
    emit_json(group) if args.json else say(describe_group(group))
    return 0


# -- runbooks ------------------------------------------------------------------------------------------------
async def add_runbook(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        rb = await api.send(calls.add_runbook(args.group, args.name, args.at, args.steps, args.catch_up))
        shown = await api.send(calls.runbook(args.group, args.name, limit=1))
    if args.json:
        emit_json(shown)
    else:
        say(f"runbook {_c(rb['group'])}/{_c(rb['name'])} at {_c(rb['moment'])}: {'; '.join(_c(s) for s in rb['steps'])}"
            f"\nnext: {local(shown.get('next_at'))}")
    return 0


async def list_runbooks(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        books = await api.send(calls.runbooks(group=args.group))
    if args.json:
        emit_json({"runbooks": books})
        return 0
    say(fmt.table(["GROUP", "NAME", "AT", "STEPS"],
                  [[_c(r["group"]), _c(r["name"]), _c(r["moment"]), "; ".join(_c(s) for s in r["steps"])] for r in books]))
    return 0


async def show_runbook(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        rb = await api.send(calls.runbook(args.group, args.name))
    if args.json:
        emit_json(rb)
        return 0
    say(f"{_c(rb['group'])}/{_c(rb['name'])} at {_c(rb['moment'])} (by {_c(rb['created_by'])})\n"
        f"steps: {'; '.join(_c(s) for s in rb['steps'])}\nnext: {local(rb.get('next_at'))}\n")
    say(firing_rows(rb["firings"]) if rb["firings"] else "never fired yet")
    return 0


async def run_now(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        firing = await api.send(calls.run_runbook(args.group, args.name))
        while args.wait and firing["state"] in ("pending", "running"):
            await _pause()
            firing = await api.send(calls.firing(firing["id"]))
    if args.json:
        emit_json(firing)
    else:
        say(firing_rows([firing]))
    return 0 if firing["state"] in ("pending", "running", "done") else 1


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.5)  # polling a firing's state for --wait (the server has no stream of firings)


async def runbook_history(args: argparse.Namespace, settings: SettingsFn) -> int:
    if args.name and not args.group:
        raise UsageError("give the group before the runbook's name")
    async with client(settings()) as api:
        firings = await api.send(calls.firings(group=args.group, runbook=args.name, limit=args.limit))
    if args.json:
        emit_json({"firings": firings})
    else:
        say(firing_rows(firings) if firings else "no firing yet")
    return 0


async def delete_runbook(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        rb = await api.send(calls.delete_runbook(args.group, args.name))
    say(f"deleted runbook {_c(rb['group'])}/{_c(rb['name'])} (its history stays)")
    return 0


# -- bookings ---------------------------------------------------------------------------------------------------
def _booking_id(args: argparse.Namespace, verb: str) -> int:
    if len(args.nodes) != 2 or not args.nodes[1].isdigit():
        raise UsageError(f"write: dvic book {verb} ID" + (" --to T" if verb == "extend" else ""))
    return int(args.nodes[1])


async def book(args: argparse.Namespace, settings: SettingsFn) -> int:
    verb = args.nodes[0] if args.nodes else ""
    if verb == "cancel":
        request = calls.cancel_booking(_booking_id(args, verb))
    elif verb == "extend":
        booking_id = _booking_id(args, verb)
        if not args.to:
            raise UsageError("dvic book extend ID --to T: give the new end")
        request = calls.extend_booking(booking_id, args.to)
    else:
        request = calls.book(_booking_fields(args))
    async with client(settings()) as api:
        booking = await api.send(request)
    emit_json(booking) if args.json else say(describe_booking(booking))
    return 0


def _booking_fields(args: argparse.Namespace) -> Json:
    if not args.to:
        raise UsageError(f"give --to (the end): {WHEN}")
    if args.nodes and (args.group or args.count or args.kind):
        raise UsageError("book NODE... or --group G --count N [--kind K], not both")
    if not args.nodes and not (args.group and args.count):
        raise UsageError("book NODE..., or --group G --count N [--kind K]")
    return {"nodes": args.nodes or None, "group": args.group, "kind": args.kind, "count": args.count,
            "from": args.start, "to": args.to, "note": args.note, "deploy": args.deploy}


async def list_bookings(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        rows = await api.send(calls.bookings(at=args.at, mine=args.mine, group=args.group))
    if args.json:
        emit_json({"bookings": rows})
        return 0
    if not rows:
        say("no booking" + (" then" if args.at else " to come"))
        return 0
    now = time.time()
    say(fmt.table(["ID", "HOLDER", "MACHINES", "FROM", "TO", "DEPLOY", "NOTE"],
                  [[str(b["id"]), _c(b["holder"]), ", ".join(_c(n) for n in b["node_names"]),
                    local(b["starts_at"]) + (" (now)" if b["starts_at"] <= now < b["ends_at"] else ""),
                    local(b["ends_at"]), deploy_text(b), _c(b.get("note", ""))] for b in rows]))
    return 0
