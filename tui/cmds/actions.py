"""`dvic reboot`, `action`, `actions`, `maintenance` and `update`: tracked actions and their states.

Each handler gets `(args, settings)` like the other sub-commands (see tui/cli.py for the exit codes
of errors). The server side is docs/protocol.md sections 4.4 and 6.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from tui import fmt
from tui.api.aio import AsyncClient, Stream
from tui.api.errors import ApiError
from tui.api.follow_command import ACTION_POLL_S, ActionTracker, needs_confirmation
from tui.cmds.common import SettingsFn, client, emit_json, say, show_list
from tui.cmds.parsing import listing, positive
from tui.cmds.run import check_answer, confirmation_question, targets_of, targets_options
from tui.textsafe import clean

Json = dict[str, Any]

ACTION_CHOICES = {"restart-demo": "restart_demo", "stop-demo": "stop_demo", "start-demo": "start_demo"}


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("reboot", parents=[parent], help="reboot a node (tracked action)")
    p.add_argument("node", help="node name or UUID")
    _action_options(p)
    p.set_defaults(handler=request_action, action="reboot", demo=None)

    p = sub.add_parser("action", parents=[parent], help="restart, stop or start a demo (tracked action)")
    p.add_argument("node", help="node name or UUID")
    p.add_argument("action", choices=sorted(ACTION_CHOICES))
    p.add_argument("--demo", metavar="NAME", help="the demo (default: the node's configured demo)")
    _action_options(p)
    p.set_defaults(handler=request_action)

    listing(sub, parent, "actions", "tracked actions and their states", list_actions)

    p = sub.add_parser("maintenance", parents=[parent], help="put a node in or out of maintenance")
    p.add_argument("node", help="node name or UUID")
    p.add_argument("mode", choices=("on", "off"))
    p.add_argument("--json", action="store_true", help="print the server's answer")
    p.set_defaults(handler=maintenance)

    p = sub.add_parser("update", parents=[parent], help="update nodes' daemon to the server's release")
    p.add_argument("nodes", nargs="*", metavar="NODE", help="node names or UUIDs")
    targets_options(p)
    p.add_argument("--wait", action="store_true", help="follow each update until done, failed or lost")
    p.add_argument("--json", action="store_true", help="print the server's answer (and states) as JSON")
    p.set_defaults(handler=update)


def _action_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the action until done, failed or lost")
    p.add_argument("--timeout", type=positive, metavar="S", help="seconds before the action counts as lost")
    p.add_argument("--json", action="store_true", help="print the action (and its states) as JSON")


# -- confirmation --------------------------------------------------------------------------------
async def confirm(api: AsyncClient, args: argparse.Namespace, targets: Json, what: str) -> None:
    """Asks before a fleet-wide action unless --yes; refuses when nobody can answer (the rule of
    tui/api/follow_command.py `needs_confirmation`)."""
    if args.yes or not needs_confirmation(targets):
        return
    question = confirmation_question(await api.nodes(group=targets.get("group")), targets, what)
    sys.stderr.write(question)
    sys.stderr.flush()
    check_answer(await read_line(sys.stdin.fileno()))


async def read_line(fd: int) -> str:
    """One line from a terminal without blocking the loop (so Ctrl-C at the prompt ends at once)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not got.done():
            try:
                got.set_result(os.read(fd, 4096))
            except OSError as exc:
                got.set_exception(exc)

    loop.add_reader(fd, readable)
    try:
        return (await got).decode(errors="replace")
    finally:
        loop.remove_reader(fd)


# -- actions, maintenance, updates --------------------------------------------------------------
def _action_line(action: Json) -> str:
    message = f": {clean(action['message'], single_line=True)}" if action.get("message") else ""
    demo = f" {clean(action['demo'], single_line=True)}" if action.get("demo") else ""
    return f"{fmt.clock(action.get('updated_at'))}  {clean(action.get('node_name'), single_line=True)}  " \
           f"{action.get('action')}{demo}: {action.get('state')}{message}"


async def follow_actions(api: AsyncClient, stream: Stream | None, actions: list[Json], as_json: bool) -> int:
    """Prints every state change of the actions until each is final. 0 when all are done.

    Changes come from the live stream's `action_<state>` events (opened before the request, so
    none is missed); a poll of GET /actions every few seconds covers a stream that drops.
    """
    tracker = ActionTracker(actions)
    events: asyncio.Queue[Json] = asyncio.Queue()

    async def read_stream() -> None:
        assert stream is not None
        async for msg in stream:
            event = msg.get("event") if msg.get("type") == "event" else None
            if isinstance(event, dict):
                events.put_nowait(event)

    def show(changed: list[Json]) -> None:
        for action in changed:
            if as_json:
                emit_json({"type": "action", **action})
            else:
                say(_action_line(action))

    reader = asyncio.ensure_future(read_stream()) if stream is not None else None
    try:
        while not tracker.done:
            if time.time() > tracker.deadline:
                sys.stderr.write("dvic: no final state from the server in time; see `dvic actions`\n")
                return 1
            try:
                event = await asyncio.wait_for(events.get(), ACTION_POLL_S)
            except TimeoutError:
                show(tracker.on_rows(await api.actions()))
                continue
            show(tracker.on_event(event))
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return 0 if tracker.ok else 1


async def _open_stream(api: AsyncClient) -> Stream | None:
    """The live events stream for --wait; None (polling only) when the server refuses it."""
    try:
        stream = await api.stream()
        await stream.subscribe([])
        return stream
    except ApiError:
        return None


async def request_action(args: argparse.Namespace, settings: SettingsFn) -> int:
    kind = ACTION_CHOICES.get(args.action, args.action)
    async with client(settings()) as api:
        stream = await _open_stream(api) if args.wait else None
        try:
            action = await api.request_action(args.node, kind, demo=args.demo, timeout=args.timeout)
            if args.json:
                emit_json({"type": "action", **action})
            else:
                say(_action_line(action) + f"  (id {action.get('id')})")
            if not args.wait:
                return 0 if action.get("state") not in ("failed", "lost") else 1
            return await follow_actions(api, stream, [action], args.json)
        finally:
            if stream is not None:
                await stream.close()


async def list_actions(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await show_list(args, settings, "actions", lambda api: api.actions(node=args.node), _actions_table)


def _actions_table(rows: list[Json]) -> str:
    table = [[r.get("id", ""), r.get("node_name") or r.get("node_id", ""), r.get("action", ""), r.get("demo") or "-",
              r.get("state", ""), fmt.stamp(r.get("requested_at")), fmt.stamp(r.get("updated_at")),
              r.get("operator", ""), r.get("message") or ""] for r in rows]
    return fmt.table(["ID", "NODE", "ACTION", "DEMO", "STATE", "REQUESTED", "UPDATED", "BY", "MESSAGE"], table)


async def maintenance(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        doc = await api.set_maintenance(args.node, args.mode == "on")
    if args.json:
        emit_json(doc)
    else:
        say(f"{clean(args.node, single_line=True)}: maintenance {args.mode}"
            + (" (operators' remote control is refused; admins may still act)" if args.mode == "on" else ""))
    return 0


async def update(args: argparse.Namespace, settings: SettingsFn) -> int:
    targets = targets_of(args, args.nodes)
    async with client(settings()) as api:
        await confirm(api, args, targets, "update the daemon")
        stream = await _open_stream(api) if args.wait else None
        try:
            doc = await api.update(targets)
            actions = doc.get("actions") or []
            if args.json:
                emit_json(doc)
            else:
                for action in actions:
                    say(f"{clean(action.get('node_name'), single_line=True)}: update to {doc.get('version')} "
                        f"{action.get('state')} (id {action.get('id')})")
                if not actions:
                    say(f"every target already runs {doc.get('version')} (or none is eligible): nothing to do")
            if not args.wait or not actions:
                return 0 if all(a.get("state") not in ("failed", "lost") for a in actions) else 1
            return await follow_actions(api, stream, actions, args.json)
        finally:
            if stream is not None:
                await stream.close()
