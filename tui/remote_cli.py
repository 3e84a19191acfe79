"""The remote-control commands of `dvic`: run, commands, shell, sessions, replay, actions, updates.

`register(subparsers)` adds them to the `dvic` parser; each sets `handler(args, settings)` like the
other sub-commands (see tui/cli.py for the exit codes of errors). `python -m tui.remote_cli` runs
them on their own. The server side is docs/protocol.md sections 4.3, 4.4 and 6.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from tui import fmt, terminal
from tui.client import ApiError, Stream, Unreachable
from tui.cmds.common import SettingsFn, UsageError, emit_json, say
from tui.config import ConfigError, Settings, resolve
from tui.remote_client import ACTION_FINAL, RUN_FINAL, RemoteClient, StreamCut
from tui.textsafe import clean

Json = dict[str, Any]

# Exit statuses of `dvic run` per node (the command's own code when it exited).
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_CANCELLED = 130  # as for Ctrl-C
EXIT_UNREACHED = 255  # as ssh(1) when the remote side could not run it
CANCEL_WAIT_S = 10.0
POLL_S = 0.5
SERVER_GONE_S = 60.0  # how long `dvic run` waits for a restarting server, beyond the command's timeout
ACTION_POLL_S = 2.0  # --wait polls this often in case the live stream misses a change
ACTION_CHOICES = {"restart-demo": "restart_demo", "stop-demo": "stop_demo", "start-demo": "start_demo"}


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    # The same options as tui/cli.py (copied: importing tui.cli from here would be circular).
    g = parser.add_argument_group("connection (override `dvic login` and DVIC_* variables)")
    g.add_argument("--server", metavar="URL", default=default, help="server URL (env DVIC_SERVER)")
    g.add_argument("--token", metavar="T", default=default, help="API token (env DVIC_TOKEN)")
    g.add_argument("--ca", metavar="FILE", default=default, help="CA certificate to pin (env DVIC_CA)")


def _targets_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", metavar="G", help="every node of group G")
    p.add_argument("--all", action="store_true", help="every node of the fleet")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before acting on a group or all nodes")


def _run_options(p: argparse.ArgumentParser) -> None:
    _targets_options(p)
    p.add_argument("--timeout", type=float, metavar="S", help="seconds before the nodes kill it (default 60)")
    p.add_argument("--shell", action="store_true", help="run CMD as one /bin/sh -c string on the node")
    p.add_argument("--json", action="store_true", help="print the stream's events as JSON lines")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the remote-control sub-commands to the `dvic` parser."""
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)

    p = subparsers.add_parser(
        "run", parents=[common], help="run a command on nodes, output live",
        usage="dvic run NODE[,NODE...]|--group G|--all [--timeout S] [--shell] [--yes] [--json] -- CMD [ARGS...]",
        description="Run a command on one node, several (comma-separated), a group or all nodes. Output "
                    "streams live (prefixed by the node name when several nodes run it). Ctrl-C cancels on "
                    "the nodes. Exit status: the command's code on one node; with several, the highest.")
    _run_options(p)
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="NODE -- CMD", help="target and command")
    p.set_defaults(handler=run_command)

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
    _targets_options(p)
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


# -- targets and confirmation --------------------------------------------------------------------
def targets_of(args: argparse.Namespace, nodes: Sequence[str]) -> Json:
    """The API's target object (`nodes`, `group` or `all`); exactly one kind must be given."""
    given = sum([bool(nodes), args.group is not None, bool(args.all)])
    if given != 1:
        raise UsageError("give the targets once: NODE[,NODE...], --group G or --all")
    if args.all:
        return {"all": True}
    if args.group is not None:
        return {"group": args.group}
    names = [n for ref in nodes for n in ref.split(",") if n]
    if not names:
        raise UsageError("no node given")
    return {"nodes": names}


async def confirm(api: RemoteClient, args: argparse.Namespace, targets: Json, what: str) -> None:
    """Asks before a fleet-wide action unless --yes; refuses when nobody can answer."""
    if "nodes" in targets or args.yes:
        return
    nodes = await api.nodes(group=targets.get("group"))
    count = sum(1 for n in nodes if n.get("kind") != "esp32" and not n.get("revoked"))
    where = f"group {targets['group']!r}" if "group" in targets else "the whole fleet"
    question = f"{what} on {count} node(s) of {where}? [y/N] "
    if not sys.stdin.isatty():
        raise UsageError(f"{what} on {count} node(s) of {where}: confirm with --yes (stdin is not a terminal)")
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = await read_line(sys.stdin.fileno())
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("cancelled: nothing was sent")


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


# -- dvic run ------------------------------------------------------------------------------------
def split_run_words(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Node refs and the command from `words`; options written between NODE and `--` are parsed here."""
    words = list(args.words)
    if "--" in words:
        cut = words.index("--")
        pre, command = words[:cut], words[cut + 1:]
    elif args.group is not None or args.all:
        pre, command = [], words
    else:
        pre, command = words[:1], words[1:]
    extra = argparse.ArgumentParser(prog="dvic run", add_help=False, exit_on_error=False)
    _run_options(extra)
    extra.add_argument("nodes", nargs="*")
    try:
        more = extra.parse_args(pre)
    except argparse.ArgumentError as exc:
        raise UsageError(f"run: {exc}") from None
    for key in ("group", "timeout"):
        if getattr(more, key) is not None:
            setattr(args, key, getattr(more, key))
    for key in ("all", "yes", "shell", "json"):
        if getattr(more, key):
            setattr(args, key, True)
    if not command:
        raise UsageError("no command: dvic run NODE -- CMD [ARGS...]")
    return more.nodes, command


def run_status(run: Json) -> int:
    """One run's exit status (see EXIT_* for the runs that did not exit by themselves)."""
    state = run.get("state")
    if state == "exited":
        code, sig = run.get("code"), run.get("signal")
        if isinstance(code, int):
            return code & 0xFF
        return 128 + sig if isinstance(sig, int) else EXIT_UNREACHED
    if state == "timeout":
        return EXIT_TIMEOUT
    if state == "cancelled":
        return EXIT_CANCELLED
    return EXIT_UNREACHED


def describe_run(run: Json) -> str:
    state = str(run.get("state"))
    if state == "exited":
        text = f"exited {run['code']}" if isinstance(run.get("code"), int) else f"killed by signal {run.get('signal')}"
    else:
        text = state
    if run.get("message"):
        text += f" ({clean(run['message'], single_line=True)})"
    if run.get("truncated"):
        text += f" [output truncated: {fmt.size(run.get('output_bytes'))} produced, 1 MiB kept]"
    return text


class OutputPrinter:
    """Writes runs' output: raw for one node; `name | line` (stderr: `name ! line`) for several."""

    def __init__(self, names: list[str], out: TextIO, err: TextIO, prefixed: bool | None = None) -> None:
        self.prefixed = len(names) > 1 if prefixed is None else prefixed
        self.width = max((len(n) for n in names), default=0)
        self.out, self.err = out, err
        self.partial: dict[tuple[str, str], str] = {}

    def write(self, name: str, stream: str, data: str) -> None:
        target = self.err if stream == "stderr" else self.out
        if not self.prefixed:
            target.write(data)
            target.flush()
            return
        key = (name, stream)
        text = self.partial.pop(key, "") + data
        lines = text.split("\n")
        if lines[-1]:
            self.partial[key] = lines[-1]
        mark = "!" if stream == "stderr" else "|"
        for line in lines[:-1]:
            target.write(f"{name.ljust(self.width)} {mark} {line}\n")
        target.flush()

    def flush_run(self, name: str) -> None:
        """A run ended: its unterminated last lines are written (a run's output never merges with another's)."""
        for stream in ("stdout", "stderr"):
            rest = self.partial.pop((name, stream), None)
            if rest is not None:
                self.write(name, stream, rest + "\n")


class CommandFollower:
    """Follows one command to its end: live output, output from the store, cancel on Ctrl-C.

    The stream carries only what happens after it connected, so a run that already had output by
    then is printed from the store instead (GET /commands/{id}, polled while it runs): stored
    chunks are append-only, so "print chunks[n:]" never repeats or skips one.
    """

    def __init__(self, api: RemoteClient, command: Json, as_json: bool) -> None:
        self.api = api
        self.id = str(command["id"])
        self.runs: dict[str, Json] = {r["run_id"]: r for r in command.get("runs", [])}
        self.timeout = float(command.get("timeout") or 60)
        self.as_json = as_json
        self.printer = OutputPrinter([str(r.get("node_name")) for r in self.runs.values()], sys.stdout, sys.stderr)
        self.printed_chunks: dict[str, int] = {rid: 0 for rid in self.runs}
        self.from_store: set[str] = set()
        self.finished: set[str] = set()  # runs whose output is complete on screen
        self.cancelling = False
        self.interrupts = 0
        self.cancel_deadline: float | None = None
        self.abort = asyncio.Event()
        self.stopped_early = False  # we stopped waiting (Ctrl-C); the runs may still go on

    def on_interrupt(self) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            self.abort.set()  # a second Ctrl-C: stop waiting for the nodes
            return
        self.cancelling = True
        self.cancel_deadline = time.monotonic() + CANCEL_WAIT_S
        sys.stderr.write(f"\ndvic: cancelling on the nodes (Ctrl-C again to stop waiting, {CANCEL_WAIT_S:.0f} s max)\n")
        sys.stderr.flush()
        asyncio.ensure_future(self._cancel())

    async def _cancel(self) -> None:
        try:
            await self.api.cancel_command(self.id)
        except ApiError as exc:
            # 404: it finished meanwhile; anything else is said but the wait goes on.
            if exc.status != 404:
                sys.stderr.write(f"dvic: cancel failed: {exc.message}\n")

    async def follow(self) -> None:
        stream = asyncio.ensure_future(self._stream())
        aborted = asyncio.ensure_future(self.abort.wait())
        try:
            while True:
                timeout = None
                if self.cancel_deadline is not None:
                    timeout = max(0.0, self.cancel_deadline - time.monotonic())
                done, _ = await asyncio.wait({stream, aborted}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stream in done:
                    stream.result()
                    return
                if aborted in done or (self.cancel_deadline is not None and time.monotonic() >= self.cancel_deadline):
                    self.stopped_early = True
                    return
        finally:
            for task in (stream, aborted):
                task.cancel()
            await asyncio.gather(stream, aborted, return_exceptions=True)

    async def _stream(self) -> None:
        poller: asyncio.Task[None] | None = None
        try:
            async for event in self.api.command_stream(self.id):
                await self._on_event(event)
                if poller is None and self.from_store:
                    poller = asyncio.ensure_future(self._poll_store())
        except (StreamCut, ApiError) as exc:  # ApiError includes Unreachable
            reason = exc.message if isinstance(exc, ApiError) else str(exc)
            sys.stderr.write(f"dvic: live output interrupted ({reason}); reading the rest from the server\n")
            self.from_store.update(self.runs)
            await self._poll_to_end()
            return
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
        await self._sync_store(set(self.runs) - self.finished, final=True)

    async def _on_event(self, event: Json) -> None:
        kind = event.get("type")
        if self.as_json and not (kind == "output" and event.get("run_id") in self.from_store):
            emit_json(event)
        if kind == "command":
            for run in event.get("runs", []):
                rid = run.get("run_id")
                if rid in self.runs:
                    self.runs[rid] = run
                    if int(run.get("output_bytes") or 0) > 0:
                        self.from_store.add(rid)
            await self._sync_store({r for r in self.from_store if self.runs[r].get("state") in RUN_FINAL}, final=True)
        elif kind == "output":
            rid = str(event.get("run_id"))
            if rid in self.runs and rid not in self.from_store:
                self.printed_chunks[rid] += 1
                if not self.as_json:
                    self.printer.write(str(self.runs[rid].get("node_name")), str(event.get("stream")),
                                       str(event.get("data", "")))
        elif kind == "state":
            rid = str(event.get("run_id"))
            if rid not in self.runs:
                return
            self.runs[rid] = {k: v for k, v in event.items() if k != "type"}
            if event.get("state") in RUN_FINAL:
                if rid in self.from_store:
                    await self._sync_store({rid}, final=True)
                else:
                    self._finish(rid)

    def _finish(self, rid: str) -> None:
        self.finished.add(rid)
        if not self.as_json:
            self.printer.flush_run(str(self.runs[rid].get("node_name")))

    async def _poll_store(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            running = {rid for rid in self.from_store - self.finished if self.runs[rid].get("state") not in RUN_FINAL}
            if running:
                await self._sync_store(running)

    async def _sync_store(self, run_ids: set[str], final: bool = False) -> Json | None:
        """Prints the stored chunks of these runs not printed yet; with `final`, closes them."""
        run_ids = run_ids - self.finished
        if not run_ids:
            return None
        doc = await self.api.command(self.id)
        for run in doc.get("runs", []):
            rid = run.get("id")
            if rid not in run_ids:
                continue
            chunks = (run.get("output") or [])[self.printed_chunks[rid]:]
            self.printed_chunks[rid] += len(chunks)
            name = str(run.get("node_name"))
            for chunk in chunks:
                if self.as_json:
                    emit_json({"type": "output", "run_id": rid, "node_name": name, "stream": chunk.get("stream"),
                               "data": chunk.get("data", ""), "from_store": True})
                else:
                    self.printer.write(name, str(chunk.get("stream")), str(chunk.get("data", "")))
            self.runs[rid].update({k: run.get(k) for k in ("state", "code", "signal", "message", "output_bytes",
                                                           "truncated")})
            if final and run.get("state") in RUN_FINAL:
                self._finish(rid)
        return doc

    async def _poll_to_end(self) -> None:
        """Follows the command through the store; rides out a server restart for a while."""
        deadline = time.monotonic() + float(self.timeout) + SERVER_GONE_S
        while True:
            try:
                doc = await self._sync_store(set(self.runs), final=True)
            except Unreachable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(POLL_S)
                continue
            if doc is None or doc.get("done"):
                return
            await asyncio.sleep(POLL_S)

    def summary(self) -> int:
        runs = sorted(self.runs.values(), key=lambda r: str(r.get("node_name")))
        status = max((run_status(r) for r in runs), default=0)
        if self.as_json:
            emit_json({"type": "summary", "id": self.id, "status": status, "runs": runs})
            return status
        unfinished = [r for r in runs if r.get("state") not in RUN_FINAL]
        if len(runs) > 1 or any(r.get("state") != "exited" or r.get("truncated") for r in runs):
            counts: dict[str, int] = {}
            for r in runs:
                label = "ok" if r.get("state") == "exited" and r.get("code") == 0 else str(r.get("state"))
                counts[label] = counts.get(label, 0) + 1
            width = max(len(str(r.get("node_name"))) for r in runs)
            lines = [f"--- {self.id}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
            lines += [f"{str(r.get('node_name')).ljust(width)}  {describe_run(r)}" for r in runs]
            sys.stderr.write("\n".join(lines) + "\n")
        if unfinished and self.stopped_early:
            sys.stderr.write(f"dvic: stopped waiting; {len(unfinished)} run(s) still going: dvic command {self.id}\n")
            status = max(status, EXIT_CANCELLED)
        elif unfinished:
            # The server says the command is over but never heard how these ended (it restarted).
            sys.stderr.write(f"dvic: the server lost track of {len(unfinished)} run(s) (did it restart?): "
                             "their result is unknown\n")
            status = max(status, EXIT_UNREACHED)
        if self.cancelling:
            status = max(status, EXIT_CANCELLED)
        sys.stderr.flush()
        return status


async def run_command(args: argparse.Namespace, settings: SettingsFn) -> int:
    nodes, command = split_run_words(args)
    targets = targets_of(args, nodes)
    argv, shell = (None, " ".join(command)) if args.shell else (command, None)
    async with _client(settings) as api:
        await confirm(api, args, targets, f"run {' '.join(command)!r}")
        started = await api.run_command(targets, argv=argv, shell=shell, timeout=args.timeout)
        follower = CommandFollower(api, started, args.json)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, follower.on_interrupt)
        try:
            await follower.follow()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        return follower.summary()


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
    parser = argparse.ArgumentParser(prog="dvic", description="DVIC Demo Monitor: remote control.")
    _connection_options(parser, None)
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tui.remote_cli ...`: the same commands and exit codes as through `dvic`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2

    def settings(need_token: bool = True) -> Settings:
        return resolve(args.server, args.token, args.ca, need_token=need_token)

    try:
        return int(asyncio.run(args.handler(args, settings)) or 0)
    except (ConfigError, UsageError) as exc:
        print(f"dvic: {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(f"dvic: {exc.message}", file=sys.stderr)
        return 3
    except ApiError as exc:
        hint = " (run `dvic login URL` or check --token / DVIC_TOKEN)" if exc.status == 401 else ""
        print(f"dvic: {exc.message or exc.code} [{exc.code}, HTTP {exc.status}]{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

