"""The remote-control commands of `dvic`: commands, shell, sessions, replay, actions, updates.

`register(subparsers)` adds them to the `dvic` parser; each sets `handler(args, settings)` like the
other sub-commands (see tui/cli.py for the exit codes of errors). `dvic run` lives in tui/cmds/run.py
(it starts without asyncio and aiohttp). `python -m tui.remote_cli` runs them all, `run` included,
on their own. The server side is docs/protocol.md sections 4.3, 4.4 and 6.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dvic_core.constants import ACTION_FINAL, RUN_FINAL
from tui import fmt, terminal
from tui.client import ApiError, Stream
from tui.cmds import run as run_cmd
from tui.cmds.common import SettingsFn, UsageError, emit_json, say
from tui.cmds.parsing import Parser
from tui.cmds.run import (
    EXIT_UNREACHED,
    OutputPrinter,
    check_answer,
    confirmation_question,
    describe_run,
    run_status,
    targets_of,
    targets_options,
)
from tui.config import Settings, resolve
from tui.remote_client import RemoteClient
from tui.textsafe import clean

Json = dict[str, Any]

ACTION_POLL_S = 2.0  # --wait polls this often in case the live stream misses a change
ACTION_CHOICES = {"restart-demo": "restart_demo", "stop-demo": "stop_demo", "start-demo": "start_demo"}


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    # The same options as tui/cli.py (copied: importing tui.cli from here would be circular).
    g = parser.add_argument_group("connection (override `dvic login` and DVIC_* variables)")
    g.add_argument("--server", metavar="URL", default=default, help="server URL (env DVIC_SERVER)")
    g.add_argument("--token", metavar="T", default=default, help="API token (env DVIC_TOKEN)")
    g.add_argument("--token-file", metavar="FILE", default=default, help="read the API token from FILE")
    g.add_argument("--ca", metavar="FILE", default=default, help="CA certificate to pin (env DVIC_CA)")


# The sub-commands `register` adds (tui/cli.py imports this module only to run one of them).
COMMANDS = ("commands", "command", "shell", "sessions", "replay", "reboot", "action", "actions", "maintenance",
            "update", "release")


def register(subparsers: argparse._SubParsersAction, with_run: bool = False) -> None:  # type: ignore[type-arg]
    """Adds the remote-control sub-commands to the `dvic` parser (`run` too with `with_run`)."""
    common = Parser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)
    if with_run:
        run_cmd.add_parsers(subparsers, common)

    p = subparsers.add_parser("commands", parents=[common], help="recent commands")
    p.add_argument("--node", help="only commands that ran on this node")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help='print {"commands": [...]}')
    p.set_defaults(handler=list_commands)

    p = subparsers.add_parser("command", parents=[common], help="one command: per-node results and stored output")
    p.add_argument("id", help="the command id (from `dvic commands`)")
    p.add_argument("--json", action="store_true", help="print the command document")
    p.set_defaults(handler=show_command)

    p = subparsers.add_parser("shell", parents=[common], help="interactive shell on a node (recorded)")
    p.add_argument("node", help="node name or UUID")
    p.set_defaults(handler=open_shell)

    p = subparsers.add_parser("sessions", parents=[common], help="recorded shell sessions")
    p.add_argument("--node", help="only this node's sessions")
    p.add_argument("--json", action="store_true", help='print {"sessions": [...]}')
    p.set_defaults(handler=list_sessions)

    p = subparsers.add_parser("replay", parents=[common], help="play a recorded shell session in this terminal")
    p.add_argument("id", help="the session id (from `dvic sessions`)")
    p.add_argument("--speed", type=_positive, default=1.0, metavar="X", help="playback speed factor (default 1)")
    p.add_argument("--idle-limit", type=_positive, metavar="S", help="cap every pause at S seconds")
    p.add_argument("--out", type=Path, metavar="FILE", help="save the asciicast file instead of playing it")
    p.set_defaults(handler=replay)

    p = subparsers.add_parser("reboot", parents=[common], help="reboot a node (tracked action)")
    p.add_argument("node", help="node name or UUID")
    _action_options(p)
    p.set_defaults(handler=request_action, action="reboot", demo=None)

    p = subparsers.add_parser("action", parents=[common], help="restart, stop or start a demo (tracked action)")
    p.add_argument("node", help="node name or UUID")
    p.add_argument("action", choices=sorted(ACTION_CHOICES))
    p.add_argument("--demo", metavar="NAME", help="the demo (default: the node's configured demo)")
    _action_options(p)
    p.set_defaults(handler=request_action)

    p = subparsers.add_parser("actions", parents=[common], help="tracked actions and their states")
    p.add_argument("--node", help="only this node's actions")
    p.add_argument("--json", action="store_true", help='print {"actions": [...]}')
    p.set_defaults(handler=list_actions)

    p = subparsers.add_parser("maintenance", parents=[common], help="put a node in or out of maintenance")
    p.add_argument("node", help="node name or UUID")
    p.add_argument("mode", choices=("on", "off"))
    p.add_argument("--json", action="store_true", help="print the server's answer")
    p.set_defaults(handler=maintenance)

    p = subparsers.add_parser("update", parents=[common], help="update nodes' daemon to the server's release")
    p.add_argument("nodes", nargs="*", metavar="NODE", help="node names or UUIDs")
    targets_options(p)
    p.add_argument("--wait", action="store_true", help="follow each update until done, failed or lost")
    p.add_argument("--json", action="store_true", help="print the server's answer (and states) as JSON")
    p.set_defaults(handler=update)

    p = subparsers.add_parser("release", parents=[common], help="the daemon release (or publish one)")
    p.add_argument("--json", action="store_true", help="print the release document")
    rsub = p.add_subparsers(dest="release_command", metavar="publish")
    pub = rsub.add_parser("publish", parents=[common], help="publish a newer daemon file (admin)")
    pub.add_argument("file", type=Path, help="the daemon file (its DAEMON_VERSION must be newer)")
    pub.add_argument("--json", action="store_true", help="print the server's answer")
    p.set_defaults(handler=release)


def _action_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="follow the action until done, failed or lost")
    p.add_argument("--timeout", type=_positive, metavar="S", help="seconds before the action counts as lost")
    p.add_argument("--json", action="store_true", help="print the action (and its states) as JSON")


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value!r}")
    return number


def _client(settings: SettingsFn) -> RemoteClient:
    return RemoteClient(settings())


# -- confirmation --------------------------------------------------------------------------------
async def confirm(api: RemoteClient, args: argparse.Namespace, targets: Json, what: str) -> None:
    """Asks before a fleet-wide action unless --yes; refuses when nobody can answer."""
    if "nodes" in targets or args.yes:
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


# -- dvic commands / command ---------------------------------------------------------------------
def command_text(doc: Json) -> str:
    if doc.get("shell"):
        return str(doc["shell"])
    argv = doc.get("argv") or []
    return " ".join(str(a) for a in argv)


async def list_commands(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with _client(settings) as api:
        rows = await api.commands(node=args.node, limit=args.limit)
    if args.json:
        emit_json({"commands": rows})
        return 0
    table = [[r.get("id", ""), fmt.stamp(r.get("created_at")), r.get("operator", ""), r.get("target", ""),
              command_text(r)[:60], f"{r.get('ok') or 0}/{r.get('nodes') or 0}",
              "done" if r.get("done") else "running"] for r in rows]
    say(fmt.table(["ID", "WHEN", "OPERATOR", "TARGET", "COMMAND", "OK", "STATE"], table))
    return 0


async def show_command(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with _client(settings) as api:
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
        say(f"\n== {clean(name, single_line=True)}: {describe_run(run)}")
        for chunk in run.get("output") or []:
            printer.write(name, str(chunk.get("stream")), clean(chunk.get("data", "")))
        printer.flush_run(name)
    return max((run_status(r) for r in runs if r.get("state") in RUN_FINAL), default=0) if doc.get("done") else 0


# -- dvic shell ----------------------------------------------------------------------------------
async def open_shell(args: argparse.Namespace, settings: SettingsFn) -> int:
    cols, rows = terminal.size(sys.stdout.fileno())
    async with _client(settings) as api:
        ws = await api.shell(args.node, cols, rows)
        with terminal.RawMode(sys.stdin.fileno()):
            end = await terminal.relay(ws, sys.stdin.fileno(), sys.stdout.fileno())
    if end.code is None:
        sys.stderr.write(f"dvic: shell on {args.node} ended: {clean(end.message or 'connection closed', single_line=True)}\n")
        return EXIT_UNREACHED
    return end.code & 0xFF


# -- dvic sessions / replay ----------------------------------------------------------------------
async def list_sessions(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with _client(settings) as api:
        rows = await api.sessions(node=args.node)
    if args.json:
        emit_json({"sessions": rows})
        return 0
    now = time.time()
    table = []
    for r in rows:
        ended = r.get("ended_at")
        length = fmt.duration((ended or now) - r["started_at"]) if isinstance(r.get("started_at"), int | float) else "-"
        table.append([r.get("id", ""), r.get("node_name") or r.get("node_id", ""), r.get("operator", ""),
                      fmt.stamp(r.get("started_at")), length + ("" if ended else " (open)"),
                      "-" if r.get("exit_code") is None else r["exit_code"], fmt.size(r.get("bytes_out"))])
    say(fmt.table(["ID", "NODE", "OPERATOR", "STARTED", "LENGTH", "EXIT", "OUTPUT"], table, right=(5, 6)))
    return 0


async def replay(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with _client(settings) as api:
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


# -- actions, maintenance, updates, release ------------------------------------------------------
def _action_line(action: Json) -> str:
    message = f": {clean(action['message'], single_line=True)}" if action.get("message") else ""
    demo = f" {clean(action['demo'], single_line=True)}" if action.get("demo") else ""
    return f"{fmt.clock(action.get('updated_at'))}  {clean(action.get('node_name'), single_line=True)}  " \
           f"{action.get('action')}{demo}: {action.get('state')}{message}"


async def follow_actions(api: RemoteClient, stream: Stream | None, actions: list[Json], as_json: bool) -> int:
    """Prints every state change of the actions until each is final. 0 when all are done.

    Changes come from the live stream's `action_<state>` events (opened before the request, so
    none is missed); a poll of GET /actions every few seconds covers a stream that drops.
    """
    current: dict[str, Json] = {a["id"]: dict(a) for a in actions}
    deadline = max((float(a.get("deadline") or 0) for a in actions), default=0.0) + 60.0
    events: asyncio.Queue[Json] = asyncio.Queue()

    async def read_stream() -> None:
        assert stream is not None
        async for msg in stream:
            event = msg.get("event") if msg.get("type") == "event" else None
            if isinstance(event, dict) and isinstance(event.get("data"), dict):
                events.put_nowait(event)

    def change(aid: str, state: str, fields: Json) -> None:
        action = current[aid]
        if action.get("state") in ACTION_FINAL or action.get("state") == state:
            return
        action.update(fields, state=state)
        if as_json:
            emit_json({"type": "action", **action})
        else:
            say(_action_line(action))

    reader = asyncio.ensure_future(read_stream()) if stream is not None else None
    try:
        while any(a.get("state") not in ACTION_FINAL for a in current.values()):
            if time.time() > deadline:
                sys.stderr.write("dvic: no final state from the server in time; see `dvic actions`\n")
                return 1
            try:
                event = await asyncio.wait_for(events.get(), ACTION_POLL_S)
            except TimeoutError:
                for row in await api.actions():
                    if row.get("id") in current:
                        change(row["id"], str(row.get("state")), row)
                continue
            data = event["data"]
            if data.get("id") in current and isinstance(data.get("state"), str):
                text = str(event.get("message") or "")
                _, _, message = text.partition(": ")
                change(data["id"], data["state"], {"message": message, "updated_at": event.get("ts")})
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return 0 if all(a.get("state") == "done" for a in current.values()) else 1


async def _open_stream(api: RemoteClient) -> Stream | None:
    """The live events stream for --wait; None (polling only) when the server refuses it."""
    try:
        stream = await api.stream()
        await stream.subscribe([])
        return stream
    except ApiError:
        return None


async def request_action(args: argparse.Namespace, settings: SettingsFn) -> int:
    kind = ACTION_CHOICES.get(args.action, args.action)
    async with _client(settings) as api:
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
    async with _client(settings) as api:
        rows = await api.actions(node=args.node)
    if args.json:
        emit_json({"actions": rows})
        return 0
    table = [[r.get("id", ""), r.get("node_name") or r.get("node_id", ""), r.get("action", ""), r.get("demo") or "-",
              r.get("state", ""), fmt.stamp(r.get("requested_at")), fmt.stamp(r.get("updated_at")),
              r.get("operator", ""), r.get("message") or ""] for r in rows]
    say(fmt.table(["ID", "NODE", "ACTION", "DEMO", "STATE", "REQUESTED", "UPDATED", "BY", "MESSAGE"], table))
    return 0


async def maintenance(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with _client(settings) as api:
        doc = await api.set_maintenance(args.node, args.mode == "on")
    if args.json:
        emit_json(doc)
    else:
        say(f"{clean(args.node, single_line=True)}: maintenance {args.mode}"
            + (" (operators' remote control is refused; admins may still act)" if args.mode == "on" else ""))
    return 0


async def update(args: argparse.Namespace, settings: SettingsFn) -> int:
    targets = targets_of(args, args.nodes)
    async with _client(settings) as api:
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


async def release(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with _client(settings) as api:
        if getattr(args, "release_command", None) == "publish":
            try:
                data = args.file.read_bytes()
            except OSError as exc:
                raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
            doc = await api.publish_release(data)
            if args.json:
                emit_json(doc)
            else:
                say(f"published daemon {doc.get('version')} ({fmt.size(doc.get('size'))}, sha256 {doc.get('sha256')})")
            return 0
        doc = await api.release()
    if args.json:
        emit_json(doc)
        return 0
    key = doc.get("release_key") or {}
    modulus = str(key.get("n", "")) if isinstance(key, dict) else ""
    rows = [("version", doc.get("version") or "none published"), ("sha256", doc.get("sha256") or "-"),
            ("size", fmt.size(doc.get("size"))),
            ("release key", f"RSA {len(modulus) * 4} bits, e={key.get('e')}, n={modulus[:16]}…" if modulus else "-"),
            ("endorsements", str(len(doc.get("endorsements") or [])))]
    say("\n".join(f"{k.ljust(12)}  {clean(v, single_line=True)}" for k, v in rows))
    return 0


# -- standalone entry point ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dvic", description="DVIC Demo Monitor: remote control.")
    _connection_options(parser, None)
    register(parser.add_subparsers(dest="command", metavar="COMMAND"), with_run=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tui.remote_cli ...`: the same commands and exit codes as through `dvic`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2

    def settings(need_token: bool = True) -> Settings:
        return resolve(args.server, args.token, args.ca, need_token=need_token,
                       token_file=getattr(args, "token_file", None))

    from tui.cli import run_handler, warn_token_in_argv  # not at the top: tui.cli imports this module

    warn_token_in_argv(args)
    return run_handler(lambda: args.handler(args, settings))


if __name__ == "__main__":
    sys.exit(main())

