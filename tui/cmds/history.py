"""`dvic logs` (history and `--follow` over the live stream) and `dvic events`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from dvic_core.constants import LOG_SOURCES
from tui import fmt
from tui.api import calls
from tui.api.aio import AsyncClient
from tui.api.errors import ApiError, Unreachable
from tui.api.follow_logs import Backoff, HistoryPages, LogFilter, LogFollower
from tui.cmds.common import SettingsFn, client, emit_json, parse_level, parse_time, say
from tui.textsafe import clean


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("logs", parents=[parent], help="show (and follow) log lines of one node or all")
    p.add_argument("node", nargs="?", help="node name or UUID (default: every node)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines as they arrive")
    p.add_argument("--level", type=parse_level, help="minimum level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    p.add_argument("--grep", metavar="TEXT", help="full-text search (server side; substring for live lines)")
    p.add_argument("--source", choices=LOG_SOURCES, help="only lines from this source")
    p.add_argument("--since", type=parse_time, help="start time: 10m, 2h, 7d, ISO date or Unix seconds")
    p.add_argument("--until", type=parse_time, help="end time (same forms as --since)")
    p.add_argument("-n", "--limit", type=int, default=100, help="how many history lines (default 100)")
    p.add_argument("--json", action="store_true", help='{"lines": [...]} oldest first; JSON lines with --follow')
    p.set_defaults(handler=run_logs)

    p = sub.add_parser("events", parents=[parent], help="show recent events (state changes, gaps, errors)")
    p.add_argument("--node", help="only this node (name or UUID)")
    p.add_argument("--kind", help="only this kind of event (state, log_gap, failed, ...)")
    p.add_argument("--since", type=parse_time, help="start time: 10m, 2h, 7d, ISO date or Unix seconds")
    p.add_argument("-n", "--limit", type=int, default=50, help="how many events (default 50)")
    p.add_argument("--json", action="store_true", help='{"events": [...]} oldest first')
    p.set_defaults(handler=run_events)


def format_line(line: dict[str, Any], with_node: bool = True) -> str:
    """`14:03:07.123 pi-42 demo/robot-arm INFO  msg`; continuation lines of a message are indented."""
    head = fmt.clock(line.get("ts"))
    if with_node:
        head += " " + clean(line.get("node_name") or line.get("node") or "?", single_line=True)
    unit = clean(line.get("unit") or "", single_line=True)
    head += f" {clean(line.get('source') or '?', single_line=True)}/{unit}" if unit else ""
    level = clean(line.get("level") or "INFO", single_line=True)
    msg = clean(line.get("msg", ""))
    first, *rest = msg.split("\n") or [""]
    out = f"{head} {level:<8} {first}"
    return "\n".join([out, *("    " + r for r in rest)])


def _log_filter(args: argparse.Namespace, node_id: str | None) -> LogFilter:
    return LogFilter(node=node_id, source=args.source, min_level=args.level or "DEBUG", text=args.grep or "")


def _show(lines: list[dict[str, Any]], args: argparse.Namespace, with_node: bool) -> None:
    for line in lines:
        if args.json:
            emit_json(line)
        else:
            say(format_line(line, with_node=with_node))


async def _history(api: AsyncClient, pages: HistoryPages) -> list[dict[str, Any]]:
    """The pages' lines, oldest first (GET /logs is read newest first)."""
    while (params := pages.next_params()) is not None:
        pages.add(await api.send(calls.logs(**params)))
    return pages.lines()


async def run_logs(args: argparse.Namespace, settings: SettingsFn) -> int:
    if args.limit < 0:
        raise argparse.ArgumentTypeError("--limit must be >= 0")
    async with client(settings()) as api:
        node_id = None
        if args.node:
            node_id = str((await api.node(args.node)).get("id"))
        follower = LogFollower(_log_filter(args, node_id))
        if not args.follow:
            lines = await _history(api, follower.history(args.limit, args.since, args.until))
            if args.json:
                emit_json({"lines": lines})
            else:
                _show(lines, args, with_node=node_id is None)
            return 0
        return await _follow(api, args, follower)


async def _follow(api: AsyncClient, args: argparse.Namespace, follower: LogFollower) -> int:
    with_node = follower.filter.node is None
    backoff = Backoff()
    first = True
    while True:
        try:
            stream = await api.stream()
        except ApiError as exc:
            if 400 <= exc.status < 500:
                raise
            delay = backoff.next()
            print(f"dvic: {exc.message}; retrying in {delay:.0f}s", file=sys.stderr)
            await asyncio.sleep(delay)  # back-off between reconnect attempts, not synchronisation
            continue
        try:
            # Subscribed (the server's answer, not only the request: with several replicas a
            # wish takes effect everywhere a moment later) before reading history, so no line
            # falls between the two; duplicates are dropped by (node, seq).
            early = await stream.subscribed([follower.filter.node] if follower.filter.node else ["*"])
            pages = follower.history(args.limit, args.since, args.until) if first else follower.gap()
            first = False
            _show(follower.take(await _history(api, pages), filtered=False), args, with_node)
            backoff.reset()
            for msg in early:
                _show_live(msg, follower, args, with_node)
            async for msg in stream:
                _show_live(msg, follower, args, with_node)
        except Unreachable as exc:
            print(f"dvic: {exc.message}", file=sys.stderr)
        except ApiError as exc:
            if exc.status < 500:
                raise  # bad token, revoked access, unknown node: retrying will not help
            print(f"dvic: the server failed ({exc.code}): {exc.message}", file=sys.stderr)
        finally:
            await stream.close()
        print(f"dvic: live stream closed (code {stream.close_code}); reconnecting", file=sys.stderr)
        await asyncio.sleep(backoff.next())


def _show_live(msg: dict[str, Any], follower: LogFollower, args: argparse.Namespace, with_node: bool) -> None:
    if msg.get("type") == "logs" and isinstance(msg.get("lines"), list):
        _show(follower.take(m for m in msg["lines"] if isinstance(m, dict)), args, with_node)


async def run_events(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        node_id = str((await api.node(args.node)).get("id")) if args.node else None
        events: list[dict[str, Any]] = []
        cursor = None
        while len(events) < args.limit:
            page = await api.events(node=node_id, kind=args.kind, from_=args.since, cursor=cursor,
                                    limit=min(500, args.limit - len(events)))
            events.extend(page["events"])
            cursor = page.get("next_cursor")
            if not cursor or not page["events"]:
                break
    events.reverse()
    if args.json:
        emit_json({"events": events})
        return 0
    now = time.time()
    say(fmt.table(
        ["TIME", "AGE", "NODE", "KIND", "MESSAGE"],
        [[fmt.stamp(e.get("ts")), fmt.age(e.get("ts"), now), e.get("node_name") or e.get("node") or "-",
          e.get("kind", "?"), e.get("message", "")] for e in events],
        right=(1,),
    ))
    return 0
