"""`dvic run`: a command on nodes, its output live, and its exit status (docs/remote-control.md).

Blocking code on tui/api/sync.py on purpose: an operator types `dvic run NODE -- CMD` at a prompt,
so the process's start-up is part of the round trip, and asyncio plus aiohttp cost more to import
than the command takes (docs/performance.md, "Remote control"). Nothing here imports them.
Ctrl-C is caught with a signal handler that only counts; a wake-up pipe (`signal.set_wakeup_fd`)
makes the wait on the stream return at once so the loop acts on it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Collection, Sequence
from types import SimpleNamespace

from tui.api import calls
from tui.api.core import Json, decode_frame
from tui.api.errors import ApiError, StreamClosed, Unreachable
from tui.api.follow_command import CommandTracker, LineSplitter, confirmation_subject, needs_confirmation
from tui.api.sync import SyncClient
from tui.cmds.common import SettingsFn, UsageError, emit_json

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    import argparse
    from types import TracebackType
    from typing import TextIO

    from tui.api.follow_command import Update

CANCEL_WAIT_S = 10.0  # after Ctrl-C: how long the final states are waited for


def targets_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", metavar="G", help="every node of group G")
    p.add_argument("--all", action="store_true", help="every node of the fleet")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before acting on a group or all nodes")


def _run_options(p: argparse.ArgumentParser) -> None:
    targets_options(p)
    p.add_argument("--timeout", type=float, metavar="S", help="seconds before the nodes kill it (default 60)")
    p.add_argument("--shell", action="store_true", help="run CMD as one /bin/sh -c string on the node")
    p.add_argument("--json", action="store_true", help="print the stream's events as JSON lines")


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    import argparse

    # `parse_fast` below reads the usual `dvic run` line without argparse: keep both in step.
    p = sub.add_parser(
        "run", parents=[parent], help="run a command on nodes, output live",
        usage="dvic run NODE[,NODE...]|--group G|--all [--timeout S] [--shell] [--yes] [--json] -- CMD [ARGS...]",
        description="Run a command on one node, several (comma-separated), a group or all nodes. Output "
                    "streams live (prefixed by the node name when several nodes run it). Ctrl-C cancels on "
                    "the nodes. Exit status: the command's code on one node; with several, the highest.")
    _run_options(p)
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="NODE -- CMD", help="target and command")
    p.set_defaults(handler=run_command)


# -- targets and confirmation --------------------------------------------------------------------
def targets_of(args: argparse.Namespace | SimpleNamespace, nodes: Sequence[str]) -> Json:
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


def confirmation_question(nodes: list[Json], targets: Json, what: str) -> str:
    """The question asked before acting on a group or the fleet; refused when stdin cannot answer."""
    subject = confirmation_subject(targets, nodes, what)
    if not sys.stdin.isatty():
        raise UsageError(f"{subject}: confirm with --yes (stdin is not a terminal)")
    return f"{subject}? [y/N] "


def check_answer(answer: str) -> None:
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("cancelled: nothing was sent")


def confirm(api: SyncClient, args: argparse.Namespace | SimpleNamespace, targets: Json, what: str) -> None:
    """Asks before a fleet-wide run unless --yes (Ctrl-C at the prompt ends `dvic` at once)."""
    if args.yes or not needs_confirmation(targets):
        return
    nodes = api.send(calls.nodes(group=targets.get("group")))
    sys.stderr.write(confirmation_question(nodes, targets, what))
    sys.stderr.flush()
    check_answer(os.read(sys.stdin.fileno(), 4096).decode(errors="replace"))


# -- the command line ----------------------------------------------------------------------------
# `dvic [--server URL] [--token T] [--ca FILE] run [OPTIONS] NODE ... -- CMD`, read without argparse:
# importing argparse (with gettext and locale) and building the parser is about a tenth of a
# `dvic run` process's CPU. `parse_fast` takes only the line it reads exactly as argparse does
# (tests/tui_remote/test_run_args.py compares both on many lines) and leaves the rest to argparse:
# help, errors, abbreviated or combined options, values that start with "-".
_CONNECTION_OPTIONS = ("--server", "--token", "--ca")  # as tui/cli.py's _connection_options
_RUN_VALUES = {"--server": "server", "--token": "token", "--ca": "ca", "--group": "group", "--timeout": "timeout"}
_RUN_FLAGS = {"--all": "all", "--yes": "yes", "-y": "yes", "--shell": "shell", "--json": "json"}


def parse_fast(argv: Sequence[str]) -> SimpleNamespace | None:
    """What `tui.cli.build_parser("run").parse_args(argv)` returns, or None to leave it to argparse."""
    ns: dict[str, object] = {"server": None, "token": None, "token_file": None, "ca": None}  # --token-file: argparse
    i = 0
    while i < len(argv) and argv[i] != "run":  # the main parser's options, before the command
        option = _option_value(argv, i, _CONNECTION_OPTIONS)
        if option is None:
            return None
        name, value, i = option
        ns[name[2:]] = value
    if i == len(argv):
        return None
    i += 1
    ns.update(command="run", group=None, all=False, yes=False, timeout=None, shell=False, json=False)
    while i < len(argv) and argv[i].startswith("-"):  # run's options, before the first word
        word = argv[i]
        if word == "--":  # the words start here, `--` included (`dvic run --group G -- CMD`)
            break
        if word in _RUN_FLAGS:
            ns[_RUN_FLAGS[word]] = True
            i += 1
            continue
        option = _option_value(argv, i, _RUN_VALUES)
        if option is None:
            return None
        name, value, i = option
        if name == "--timeout":
            try:
                ns["timeout"] = float(value)
            except ValueError:
                return None
        else:
            ns[_RUN_VALUES[name]] = value
    if i == len(argv):
        return None
    # argparse's REMAINDER: the first word and everything after it, options and `--` included.
    return SimpleNamespace(**ns, words=list(argv[i:]), handler=run_command)


def _option_value(argv: Sequence[str], i: int, names: Collection[str]) -> tuple[str, str, int] | None:
    """`--name=value` or `--name value` at argv[i]: (name, value, index after it), or None when
    it is not one of `names` or its value is missing or looks like an option (argparse's cases)."""
    name, eq, value = argv[i].partition("=")
    if name not in names:
        return None
    if eq:
        return name, value, i + 1
    if i + 1 == len(argv) or argv[i + 1].startswith("-"):
        return None
    return name, argv[i + 1], i + 2


def split_run_words(args: argparse.Namespace | SimpleNamespace) -> tuple[list[str], list[str]]:
    """Node refs and the command from `words`; options written between NODE and `--` are parsed here."""
    words = list(args.words)
    if "--" in words:
        cut = words.index("--")
        pre, command = words[:cut], words[cut + 1:]
    elif args.group is not None or args.all:
        pre, command = [], words
    else:
        pre, command = words[:1], words[1:]
    if any(word.startswith("-") for word in pre):
        nodes = _run_options_between(args, pre)
    else:
        nodes = pre  # what argparse makes of plain words (`nodes`, nargs="*"), without importing it
    if not command:
        raise UsageError("no command: dvic run NODE -- CMD [ARGS...]")
    return nodes, command


def _run_options_between(args: argparse.Namespace | SimpleNamespace, pre: list[str]) -> list[str]:
    """`dvic run NODE --timeout 5 -- CMD`: options after NODE update `args`; the node refs."""
    import argparse

    from tui.cmds.parsing import Parser

    extra = Parser(prog="dvic run", add_help=False, exit_on_error=False)
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
    return list(more.nodes)


class OutputPrinter:
    """Writes runs' output: raw for one node; `name | line` (stderr: `name ! line`) for several."""

    def __init__(self, names: list[str], out: TextIO, err: TextIO, prefixed: bool | None = None) -> None:
        self.prefixed = len(names) > 1 if prefixed is None else prefixed
        self.width = max((len(n) for n in names), default=0)
        self.out, self.err = out, err
        self.lines: dict[str, LineSplitter] = {}  # per node name: a run's output never merges with another's

    def write(self, name: str, stream: str, data: str) -> None:
        if not self.prefixed:
            target = self.err if stream == "stderr" else self.out
            target.write(data)
            target.flush()
            return
        self._lines(name, self.lines.setdefault(name, LineSplitter()).feed(stream, data))

    def flush_run(self, name: str) -> None:
        """A run ended: its unterminated last lines are written."""
        splitter = self.lines.pop(name, None)
        if splitter is not None:
            self._lines(name, splitter.flush())

    def flush_all(self) -> None:
        for name in list(self.lines):
            self.flush_run(name)

    def _lines(self, name: str, lines: list[tuple[str, str]]) -> None:
        for stream, line in lines:
            target, mark = (self.err, "!") if stream == "stderr" else (self.out, "|")
            target.write(f"{name.ljust(self.width)} {mark} {line}\n")
        self.out.flush()
        self.err.flush()


# -- following a command -------------------------------------------------------------------------
class _StopWaiting(Exception):
    """A second Ctrl-C, or the cancel wait ran out: stop following (the runs may still go on)."""


class CommandFollower:
    """Follows one command to its end: the blocking driver of a `CommandTracker` (tui/api/follow_command.py).

    Reads the command stream (which replays the output stored before it connected); when the stream
    is cut, reads the stored command every POLL_S until it is done, riding out a restarting server
    for the command's timeout + SERVER_GONE_S. Ctrl-C cancels on the nodes; a second one stops waiting.

    `interrupted()` is what a SIGINT handler calls; `wake_fd` (the read end of the wake-up pipe)
    makes waits return when a signal came. Without one, waits simply time out.
    """

    def __init__(self, api: SyncClient, command: Json, as_json: bool, wake_fd: int | None = None) -> None:
        self.api = api
        self.id = str(command["id"])
        self.tracker = CommandTracker(command)
        self.as_json = as_json
        self.wake_fd = wake_fd
        names = [run.node_name for run in self.tracker.runs.values()]
        self.printer = OutputPrinter(names, sys.stdout, sys.stderr)
        self.cancelling = False
        self.interrupts = 0  # Ctrl-Cs received (by the signal handler)
        self.interrupts_seen = 0  # Ctrl-Cs acted upon
        self.cancel_deadline: float | None = None
        self.stopped_early = False  # we stopped waiting (Ctrl-C); the runs may still go on

    # -- Ctrl-C ----------------------------------------------------------------------------------
    def interrupted(self, signum: int = signal.SIGINT, frame: object = None) -> None:
        """The SIGINT handler: only counts (it may run in the middle of any write)."""
        self.interrupts += 1

    def _tick(self) -> None:
        """Acts on new Ctrl-Cs; `_StopWaiting` after a second one or when the cancel wait is over."""
        while self.interrupts_seen < self.interrupts:
            self.interrupts_seen += 1
            if self.interrupts_seen > 1:
                raise _StopWaiting
            self.cancelling = True
            self.cancel_deadline = time.monotonic() + CANCEL_WAIT_S
            sys.stderr.write(f"\ndvic: cancelling on the nodes (Ctrl-C again to stop waiting, {CANCEL_WAIT_S:.0f} s max)\n")
            sys.stderr.flush()
            try:
                self.api.send(calls.cancel_command(self.id))
            except ApiError as exc:
                # 404: it finished meanwhile; anything else is said but the wait goes on.
                if exc.status != 404:
                    sys.stderr.write(f"dvic: cancel failed: {exc.message}\n")
        if self.cancel_deadline is not None and time.monotonic() >= self.cancel_deadline:
            raise _StopWaiting

    def _wait_s(self, limit: float | None) -> float | None:
        """How long a wait may last: up to `limit` and the cancel deadline."""
        ends = [t for t in (self.cancel_deadline, None if limit is None else time.monotonic() + limit) if t is not None]
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def _pause(self, seconds: float) -> None:
        """Waits `seconds` (less if Ctrl-C comes or the cancel wait ends)."""
        wait = self._wait_s(seconds)
        if self.wake_fd is None:
            time.sleep(wait or 0)
            return
        if select.select([self.wake_fd], [], [], wait)[0]:
            try:
                os.read(self.wake_fd, 512)
            except BlockingIOError:
                pass

    # -- following -------------------------------------------------------------------------------
    def follow(self) -> None:
        try:
            self._stream()
            if not self.tracker.done or self.tracker.wants_snapshot:
                self._read_store()
        except _StopWaiting:
            self.stopped_early = True
        if not self.as_json:
            self.printer.flush_all()  # runs whose end is unknown: their last unterminated line

    def _stream(self) -> None:
        """The command stream until `done`; a cut is said, and the store takes over."""
        try:
            ws = self.api.websocket(calls.command_stream(self.id))
        except ApiError as exc:  # includes Unreachable
            self._cut(exc.message)
            return
        try:
            while not self.tracker.done:
                self._tick()
                text = ws.receive(self._wait_s(None), self.wake_fd)
                if text is None:
                    continue
                frame = decode_frame(text)  # None for a garbled frame: it must not end the command
                if frame is not None:
                    self._apply(self.tracker.on_frame(frame), frame)
        except StreamClosed as exc:
            self._cut(f"the command stream closed (code {exc.code})" if exc.code is not None else str(exc))
        except ApiError as exc:
            self._cut(exc.message)
        finally:
            ws.close()

    def _cut(self, reason: str) -> None:
        sys.stderr.write(f"dvic: live output interrupted ({reason}); reading the rest from the server\n")
        self.tracker.on_cut(time.monotonic())

    def _read_store(self) -> None:
        """The stored command, as often as the tracker says: after a cut until it is done (riding out
        a restarting server for a while), or for final states the stream did not carry."""
        while True:
            self._tick()
            try:
                self._apply(self.tracker.on_snapshot(self.api.send(calls.command(self.id))))
            except Unreachable:
                if not self.tracker.keep_trying(time.monotonic()):
                    raise
            wait = self.tracker.next_read_in(time.monotonic())
            if wait is None:
                return
            self._pause(wait)

    def _apply(self, updates: list[Update], frame: Json | None = None) -> None:
        """Prints what the tracker says is new (as JSON lines: the stream's frames, once each)."""
        if self.as_json:
            if frame is not None and (frame.get("type") != "output" or updates):
                emit_json(frame)
            for update in updates:
                if update.kind == "output" and update.stored:
                    emit_json({"type": "output", "chunk": update.chunk, "run_id": update.run.run_id,
                               "node_name": update.run.node_name, "stream": update.stream, "data": update.data,
                               "from_store": True})
            return
        for update in updates:
            if update.kind == "output":
                self.printer.write(update.run.node_name, update.stream, update.data)
            elif update.kind == "finished":
                self.printer.flush_run(update.run.node_name)

    def summary(self) -> int:
        """Prints the summary (when due) and returns the exit status (`CommandTracker.exit_status`)."""
        runs = self.tracker.ordered()
        unfinished = self.tracker.unfinished()
        status = self.tracker.exit_status(self.stopped_early, self.cancelling)
        if self.as_json:
            emit_json({"type": "summary", "id": self.id, "status": status, "runs": [r.fields for r in runs]})
            return status
        for line in self.tracker.report():
            sys.stderr.write(line + "\n")
        if unfinished and self.stopped_early:
            sys.stderr.write(f"dvic: stopped waiting; {len(unfinished)} run(s) still going: dvic command {self.id}\n")
        elif unfinished:
            # The server says the command is over but never heard how these ended (it restarted).
            sys.stderr.write(f"dvic: the server lost track of {len(unfinished)} run(s) (did it restart?): "
                             "their result is unknown\n")
        sys.stderr.flush()
        return status


class InterruptsTo:
    """`with InterruptsTo(follower):` SIGINT counted by `follower` and waking its waits (through a
    pipe), restored afterwards. A class, not a `contextlib.contextmanager`: contextlib is not
    imported otherwise."""

    def __init__(self, follower: CommandFollower) -> None:
        self.follower = follower

    def __enter__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            os.set_blocking(fd, False)
        self.old_wakeup = signal.set_wakeup_fd(self.write_fd)
        self.old_handler = signal.signal(signal.SIGINT, self.follower.interrupted)
        self.follower.wake_fd = self.read_fd

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        signal.signal(signal.SIGINT, self.old_handler)
        signal.set_wakeup_fd(self.old_wakeup)
        self.follower.wake_fd = None
        os.close(self.read_fd)
        os.close(self.write_fd)


def run_command(args: argparse.Namespace | SimpleNamespace, settings: SettingsFn) -> int:
    nodes, command = split_run_words(args)
    targets = targets_of(args, nodes)
    argv, shell = (None, " ".join(command)) if args.shell else (command, None)
    with SyncClient(settings()) as api:
        confirm(api, args, targets, f"run {' '.join(command)!r}")
        started = api.send(calls.run_command(targets, argv=argv, shell=shell, timeout=args.timeout))
        follower = CommandFollower(api, started, args.json)
        with InterruptsTo(follower):
            follower.follow()
        return follower.summary()
