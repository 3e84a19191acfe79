"""`dvic alerts`, `dvic alert show|ack`, `dvic silence list|add|remove`, `dvic rule list|add|set|remove`.

Reading needs the viewer role; acknowledging, silencing and changing rules the operator role
(docs/alerts.md, docs/cli.md).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dvic_core.schema import given
from tui import fmt
from tui.cmds.common import SettingsFn, UsageError, client, emit, emit_json, say
from tui.cmds.parsing import action, action_parsers
from tui.textsafe import clean

SEVERITIES = ("critical", "warning", "info")
KINDS = ("desktop", "raspberry", "esp32", "other")


def _scope_options(q: argparse.ArgumentParser, everywhere: bool = False) -> None:
    g = q.add_mutually_exclusive_group()
    g.add_argument("--node", help="only this node")
    g.add_argument("--group", help="only the nodes of this group")
    g.add_argument("--kind", choices=KINDS, help="only the nodes of this kind")
    if everywhere:
        g.add_argument("--everywhere", action="store_true", help="every node again (drops the scope)")


def _rule_options(q: argparse.ArgumentParser) -> None:
    q.add_argument("--for", dest="for_", metavar="DURATION",
                   help="how long the condition must hold before the alert fires: 90, 30s, 5m, 2h, 1h30m")
    q.add_argument("--severity", choices=SEVERITIES)
    q.add_argument("--clear", type=float, metavar="VALUE",
                   help="the alert ends only past this value (hysteresis; default: the threshold)")


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("alerts", parents=[parent], help="open alerts, firing first (--all: the history too)")
    p.add_argument("--all", action="store_true", help="resolved alerts too, newest first")
    p.add_argument("--node", help="only this node's alerts")
    p.add_argument("--rule", help="only this rule's alerts")
    p.add_argument("--limit", type=int, default=100, help="with --all: how many (default 100)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_alerts)

    ops = action_parsers(sub, parent, "alert", "one alert: show it with its history, or acknowledge it", run_alert)
    action(ops, parent, "show", "the alert and its history").add_argument("id", type=int)
    q = action(ops, parent, "ack", "acknowledge: reminders stop, others see who is on it")
    q.add_argument("id", type=int)
    q.add_argument("--note", required=True, help="what you are doing about it (shown with the alert)")

    ops = action_parsers(sub, parent, "silence", "hold notices back for matching alerts for a while", run_silence)
    action(ops, parent, "list", "current silences")
    q = action(ops, parent, "add", "silence alerts matching every option given")
    q.add_argument("--group")
    q.add_argument("--node")
    q.add_argument("--rule")
    q.add_argument("--severity", choices=SEVERITIES)
    q.add_argument("--for", dest="for_", required=True, metavar="DURATION", help="e.g. 2h (at most 30d)")
    q.add_argument("--note", default="", help="why (shown with the silence and its alerts)")
    action(ops, parent, "remove", "end a silence now").add_argument("id", type=int)

    ops = action_parsers(sub, parent, "rule", "alert rules: list, add, tune, remove", run_rule)
    action(ops, parent, "list", "stock and operator rules with their settings")
    q = action(ops, parent, "add", "a metric threshold (--metric) or a log pattern (--log)", "name")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--metric", help="cpu, mem, swap, disk, temp, load1, uptime, procs, net_rx, net_tx, "
                                       "free_mem, rssi or clock_skew")
    what.add_argument("--log", metavar="REGEX", help="a pattern searched in each log line")
    side = q.add_mutually_exclusive_group()
    side.add_argument("--above", type=float, metavar="VALUE", help="--metric: fires above VALUE")
    side.add_argument("--below", type=float, metavar="VALUE", help="--metric: fires below VALUE")
    q.add_argument("--rate", type=float, metavar="N", help="--log: fires above N matching lines per minute")
    q.add_argument("--level", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="--log: count only lines at least this level")
    _rule_options(q)
    _scope_options(q)
    q = action(ops, parent, "set", "tune a rule (stock rules too)", "name")
    q.add_argument("--threshold", type=float, metavar="VALUE", help="where it fires (a log rule: the rate)")
    _rule_options(q)
    on = q.add_mutually_exclusive_group()
    on.add_argument("--enable", dest="enabled", action="store_const", const=True)
    on.add_argument("--disable", dest="enabled", action="store_const", const=False)
    _scope_options(q, everywhere=True)
    action(ops, parent, "remove", "delete an operator rule, or put a stock rule back to its defaults", "name")


# -- alerts ----------------------------------------------------------------------------------------
async def run_alerts(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        doc = await api.alerts(everything=args.all, node=args.node, rule=args.rule,
                               limit=args.limit if args.all else None)
    if args.json:
        emit_json(doc)
        return 0
    alerts = doc["alerts"]
    counts = doc.get("counts") or {}
    if alerts:
        say(alerts_table(alerts, time.time()))
    say(f"{counts.get('firing', 0)} firing, {counts.get('acknowledged', 0)} acknowledged, "
        f"{counts.get('silenced', 0)} silenced" + ("" if alerts or args.all else " (no open alerts)"))
    return 0


def _state(alert: dict[str, Any]) -> str:
    if alert.get("state") == "firing" and alert.get("silenced"):
        return "silenced"
    return str(alert.get("state", "?"))


def alerts_table(alerts: list[dict[str, Any]], now: float) -> str:
    rows = []
    for a in alerts:
        started = a.get("started")
        rows.append([a.get("id", "?"), _state(a), a.get("severity", "-"), a.get("rule", "-"),
                     a.get("subject", "-"), fmt.age(started, now) if isinstance(started, (int, float)) else "-",
                     a.get("summary", "")])
    return fmt.table(["ID", "STATE", "SEVERITY", "RULE", "SUBJECT", "SINCE", "SUMMARY"], rows, right=[0])


async def run_alert(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        doc = await api.alert(args.id) if args.op == "show" else await api.ack_alert(args.id, args.note)
    if args.json:
        emit_json(doc)
        return 0
    if args.op == "ack":
        say(f"acknowledged alert #{doc.get('id')} ({clean(str(doc.get('rule')))} on "
            f"{clean(str(doc.get('subject')))})")
        return 0
    say(f"#{doc.get('id')} {_state(doc)} {doc.get('severity')} {clean(str(doc.get('rule')))} "
        f"{clean(str(doc.get('subject')))}")
    say(f"  {clean(str(doc.get('summary', '')))}")
    if doc.get("acked_by"):
        say(f"  acknowledged by {clean(str(doc['acked_by']))} at {fmt.stamp(doc.get('acked_at'))}: "
            f"{clean(str(doc.get('ack_note') or ''))}")
    for h in doc.get("history") or []:
        who = f" by {clean(str(h['who']))}" if h.get("who") else ""
        note = f": {clean(str(h['note']))}" if h.get("note") else ""
        say(f"  {fmt.stamp(h.get('ts'))}  {clean(str(h.get('what')))}{who}{note}")
    return 0


# -- silences --------------------------------------------------------------------------------------
async def run_silence(args: argparse.Namespace, settings: SettingsFn) -> int:
    if args.op == "add":
        matcher = {k: v for k, v in (("group", args.group), ("node", args.node), ("rule", args.rule),
                                     ("severity", args.severity)) if v}
        if not matcher:
            raise UsageError("say what to silence: --group, --node, --rule and/or --severity")
    async with client(settings()) as api:
        if args.op == "list":
            silences = await api.silences()
            return emit(args, {"silences": silences},
                        silences_table(silences, time.time()) if silences else "no current silences")
        if args.op == "add":
            doc = await api.add_silence(matcher, args.for_, args.note)
        else:
            doc = await api.remove_silence(args.id)
    if args.op == "add":
        return emit(args, doc, f"silence #{doc.get('id')} ({_matcher(doc)}) until {fmt.stamp(doc.get('ends'))}")
    return emit(args, doc, f"silence #{doc.get('id')} ended")


def _matcher(silence: dict[str, Any]) -> str:
    return " ".join(f"{k}={clean(str(silence[k]))}" for k in ("group", "node", "rule", "severity") if silence.get(k))


def silences_table(silences: list[dict[str, Any]], now: float) -> str:
    rows = [[s.get("id", "?"), _matcher(s), fmt.stamp(s.get("ends")), s.get("created_by", "-"), s.get("note", "")]
            for s in silences]
    return fmt.table(["ID", "MATCHES", "UNTIL", "BY", "NOTE"], rows, right=[0])


# -- rules -----------------------------------------------------------------------------------------
def _scope(args: argparse.Namespace) -> dict[str, str] | None:
    for key in ("node", "group", "kind"):
        if getattr(args, key, None):
            return {key: getattr(args, key)}
    return {} if getattr(args, "everywhere", False) else None


def rule_spec(args: argparse.Namespace) -> dict[str, Any]:
    """`dvic rule add` options -> the API's rule body (usage errors before anything is sent)."""
    spec: dict[str, Any] = {"name": args.name}
    if args.metric is not None:
        if args.above is None and args.below is None:
            raise UsageError("a metric rule needs --above VALUE or --below VALUE")
        if args.rate is not None or args.level is not None:
            raise UsageError("--rate and --level are for a --log rule")
        spec.update(type="metric", metric=args.metric, op=">" if args.above is not None else "<",
                    threshold=args.above if args.above is not None else args.below)
    else:
        if args.rate is None:
            raise UsageError("a log rule needs --rate N (matching lines per minute)")
        if args.above is not None or args.below is not None:
            raise UsageError("--above and --below are for a --metric rule (a log rule has --rate)")
        spec.update(type="log", pattern=args.log, rate=args.rate)
        if args.level:
            spec["level"] = args.level
    spec.update(_tuning(args))
    return spec


def _tuning(args: argparse.Namespace) -> dict[str, Any]:
    return given(**{"for": args.for_}, severity=args.severity, clear=args.clear, scope=_scope(args))


async def run_rule(args: argparse.Namespace, settings: SettingsFn) -> int:
    if args.op == "add":
        body = rule_spec(args)
    elif args.op == "set":
        body = _tuning(args)
        if args.threshold is not None:
            body["threshold"] = args.threshold
        if args.enabled is not None:
            body["enabled"] = args.enabled
        if not body:
            raise UsageError("nothing to change: give --threshold, --clear, --for, --severity, --enable/--disable "
                             "or a scope")
    async with client(settings()) as api:
        if args.op == "list":
            rules = await api.rules()
            return emit(args, {"rules": rules}, rules_table(rules))
        if args.op == "add":
            doc = await api.add_rule(body)
        elif args.op == "set":
            doc = await api.set_rule(args.name, body)
        else:
            doc = await api.remove_rule(args.name)
    if args.json:
        emit_json(doc)
        return 0
    done = {"add": "added", "set": "changed", "remove": "back to its defaults" if doc.get("stock") else "removed"}
    say(f"rule {clean(str(doc.get('name')))} {done[args.op]}")
    if args.op != "remove" or doc.get("stock"):
        say(rules_table([doc]))
    return 0


def _g(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "-"


def _condition(rule: dict[str, Any]) -> str:
    threshold, clear = _g(rule.get("threshold")), _g(rule.get("clear"))
    if rule.get("type") == "metric":
        return f"{rule.get('metric')} {rule.get('op', '>')} {threshold} (clear {clear})"
    if rule.get("type") in ("log", "log_errors"):
        what = f"/{rule['pattern']}/" if rule.get("pattern") else f"{rule.get('level', 'ERROR')}+ lines"
        return f"{what} > {threshold}/min (clear {clear})"
    if rule.get("threshold") is not None:
        return f"> {threshold} (clear {clear})"
    return "-"


def rules_table(rules: list[dict[str, Any]]) -> str:
    rows = []
    for r in rules:
        scope = " ".join(f"{k}={v}" for k, v in (r.get("scope") or {}).items()) or "all"
        state = ("on" if r.get("enabled") else "off") + (" (tuned)" if r.get("tuned") else "")
        if r.get("suspended"):
            state += " SUSPENDED"
        rows.append([r.get("name", "?"), "stock" if r.get("stock") else "operator", state, r.get("severity", "-"),
                     r.get("for", "-"), _condition(r), scope])
    return fmt.table(["RULE", "KIND", "STATE", "SEVERITY", "FOR", "CONDITION", "SCOPE"], rows)
