"""Following a command and tracked actions: the sans-IO core of `dvic run` and the console's Act screens.

A `CommandTracker` is fed what the server says about one command: the command stream's frames
(`on_frame`) and, after the stream is cut, stored snapshots (`GET /commands/{id}`, `on_snapshot`).
It answers with `Update`s: new output (each stored chunk once, by its `chunk` id), state changes,
runs whose output is complete and whose state is final. `done` says the command is over, and
`wants_snapshot` that one more read of the store is due (a final state the stream did not carry). No
sockets, no clock, no widgets: the drivers (tui/cmds/run.py's blocking loop, the console's
tui/console/screens/run.py worker) do the IO and the drawing, and every rule here is tested on
recorded frames (tests/tui/test_follow_cores.py).

Also here, once for both: the confirmation rule, a run's state text and exit status, what a
command ran, and `ActionTracker` for tracked actions (reboot, demo actions, daemon updates).

Standard library only, and neither `typing` nor `dataclasses` at run time: `dvic run` imports this
module at start-up (docs/performance.md, "Remote control").
"""

from __future__ import annotations

from dvic_core.constants import ACTION_FINAL, RUN_FINAL

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    Json = dict[str, Any]

# Exit statuses of a run that did not exit by itself (the command's own code when it exited).
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_CANCELLED = 130  # as for Ctrl-C
EXIT_UNREACHED = 255  # as ssh(1) when the remote side could not run it

POLL_S = 1.0  # after the stream is cut: how often the stored command is read
SETTLE_S = 3.0  # after `done` without some final states: how long the store is read for them
SETTLE_POLL_S = 0.1  # ... and how often (the server's writer commits within milliseconds)
SERVER_GONE_S = 60.0  # how long an unreachable server is retried, beyond the command's timeout
DEFAULT_TIMEOUT_S = 60.0  # the server's default command timeout
ACTION_POLL_S = 2.0  # tracked actions: how often their rows are read while one is unfinished
ACTION_GRACE_S = 60.0  # beyond the latest action deadline, the server has had time to say `lost`


# -- what a command is ---------------------------------------------------------------------------
def command_text(doc: Json) -> str:
    """What a command ran, as one line of text: its shell string or its argv joined."""
    if doc.get("shell"):
        return str(doc["shell"])
    argv = doc.get("argv") or []
    return " ".join(str(a) for a in argv)


def describe_targets(targets: Json, names: dict[str, str] | None = None) -> str:
    """`{"nodes": [...]}` / `{"group": G}` / `{"all": True}` as words for titles and confirmations."""
    from tui.textsafe import clean

    if targets.get("all"):
        return "ALL nodes"
    if "group" in targets:
        return f"group {clean(targets['group'] or '(none)', single_line=True)}"
    nodes = [str(n) for n in targets.get("nodes") or []]
    shown = [clean((names or {}).get(n, n), single_line=True) for n in nodes]
    if len(shown) <= 4:
        return ", ".join(shown) if shown else "no node"
    return f"{', '.join(shown[:3])} and {len(shown) - 3} more"


# -- the confirmation rule -----------------------------------------------------------------------
def needs_confirmation(targets: Json) -> bool:
    """The one rule (docs/remote-control.md, "Confirmation"): a group or the whole fleet is confirmed
    first, because the server resolves that set and it can surprise; named nodes are what the
    operator typed, and are not. `--yes` skips the question; without a terminal it is refused."""
    return bool(targets.get("all")) or "group" in targets


def confirmation_subject(targets: Json, nodes: Iterable[Json], what: str) -> str:
    """`run 'uptime' on 12 node(s) of group 'hall-a'`: what a confirmation asks about (`nodes` from
    GET /nodes; ESP32 boards and revoked nodes run nothing, so they are not counted)."""
    count = sum(1 for n in nodes if n.get("kind") != "esp32" and not n.get("revoked"))
    where = f"group {targets['group']!r}" if "group" in targets else "the whole fleet"
    return f"{what} on {count} node(s) of {where}"


# -- one run -------------------------------------------------------------------------------------
def state_text(run: Json, detail: bool = False) -> str:
    """A run's state: `exited 0`, `killed by signal 9`, `timeout`...; truncated output is said.

    `detail` (the CLI's summary) adds the server's message and how much output was kept; the
    console's table keeps it short. Node-supplied text is cleaned, the rest is the server's words."""
    state = str(run.get("state") or "?")
    if state == "exited":
        code = run.get("code")
        text = f"exited {code}" if isinstance(code, int) else f"killed by signal {run.get('signal')}"
    else:
        text = state
    if detail and run.get("message"):
        from tui.textsafe import clean  # only here: most `dvic run`s print no summary

        text += f" ({clean(run['message'], single_line=True)})"
    if run.get("truncated"):
        if detail:
            from tui import fmt

            text += f" [output truncated: {fmt.size(run.get('output_bytes'))} produced, 1 MiB kept]"
        else:
            text += " (truncated)"
    return text


def run_ok(run: Json) -> bool:
    return run.get("state") == "exited" and run.get("code") == 0


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


def run_key(doc: Json) -> str | None:
    """A run's id: the stream and the POST answer say `run_id`; a stored run also `id`."""
    rid = doc.get("run_id") or doc.get("id")
    return str(rid) if rid else None


def _chunk_id(doc: Json) -> int | None:
    chunk = doc.get("chunk")
    return chunk if isinstance(chunk, int) and not isinstance(chunk, bool) else None


_SHOWN = ("state", "code", "signal", "message", "truncated", "output_bytes")  # what `state_text` and a row read


class Run:
    """One node's run of the command: its latest fields (state, code, message...) and its output so far."""

    __slots__ = ("run_id", "node", "node_name", "fields", "last_chunk", "chunks", "finished")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.node = ""
        self.node_name = run_id
        self.fields: Json = {"run_id": run_id}
        self.last_chunk = 0  # the highest chunk id applied: ids grow per run, so a lower one is a repeat
        self.chunks = 0  # chunks applied (what is new in a stored list without ids, from an older server)
        self.finished = False  # final state known and output complete: reported once

    @property
    def state(self) -> str:
        return str(self.fields.get("state") or "?")

    @property
    def final(self) -> bool:
        return self.fields.get("state") in RUN_FINAL

    def merge(self, doc: Json) -> bool:
        """Takes a run's fields (from any source); True when what a state shows changed."""
        before = [self.fields.get(k) for k in _SHOWN]
        self.fields.update((k, v) for k, v in doc.items() if k not in ("type", "output", "chunk", "stream", "data"))
        node = doc.get("node") or doc.get("node_id")
        if node:
            self.node = str(node)
        if doc.get("node_name"):
            self.node_name = str(doc["node_name"])
        return [self.fields.get(k) for k in _SHOWN] != before


class Update:
    """What a frame or a snapshot changed for one run.

    `kind`: "output" (`stream`, `data`, `chunk`; `stored` when it came from a snapshot), "state"
    (its fields changed), "finished" (final, and every chunk of it has been reported)."""

    __slots__ = ("kind", "run", "stream", "data", "chunk", "stored")

    def __init__(self, kind: str, run: Run, stream: str = "", data: str = "", chunk: int | None = None,
                 stored: bool = False) -> None:
        self.kind, self.run, self.stream, self.data, self.chunk, self.stored = kind, run, stream, data, chunk, stored

    def __repr__(self) -> str:
        return f"Update({self.kind!r}, {self.run.run_id!r}, {self.stream!r}, {self.data!r})"


# -- one command ---------------------------------------------------------------------------------
class CommandTracker:
    """Every run of one command, from the stream and from stored snapshots.

    The server's stream starts with a `command` frame (the runs' states), then replays the stored
    chunks, then sends live events until `done` (central/api_remote.py `command_stream`). Every
    chunk carries its `chunk` id, and so does a stored snapshot's output: a chunk is applied once,
    whichever way it came. A run already final in the `command` frame is reported finished at the
    next frame that is not output, once its stored chunks have been replayed.
    """

    def __init__(self, command: Json | None = None) -> None:
        self.command: Json = {}
        self.runs: dict[str, Run] = {}
        self.done = False
        self.cut = False  # the stream ended before `done`: the store is read instead
        self.gone_by: float | None = None  # after a cut: when an unreachable server stops being retried
        self.wants_snapshot = False  # done, but a run's final state is only in the store (SETTLE_S)
        self._replaying: list[Run] = []  # final in the `command` frame: finished once their output is in
        self._settle_by: float | None = None
        if command:
            self._describe(command)

    # -- input --------------------------------------------------------------------------------
    def on_frame(self, msg: Json) -> list[Update]:
        """One frame of the command stream (`command`, `output`, `state`, `done`)."""
        kind = msg.get("type")
        if kind == "output":
            run = self.runs.get(run_key(msg) or "")
            return [] if run is None else self._output(run, msg, stored=False)
        if kind == "command":
            updates = self._describe(msg)
            self._replaying = [r for r in self.runs.values() if r.final and not r.finished]
            return updates
        updates = self._replayed()
        if kind == "state":
            run = self._run(msg)
            if run is not None:
                updates += self._state(run, run.merge(msg))
        elif kind == "done":
            self.done = True
            updates += [self._finish(r) for r in self.runs.values() if r.final and not r.finished]
            # The server can say `done` before a run's last `state` frame (runs ending at once, or
            # while the stream opens): the store has that state, or will in a moment.
            self.wants_snapshot = any(not r.final for r in self.runs.values())
        return updates

    def on_snapshot(self, doc: Json) -> list[Update]:
        """A stored command (`GET /commands/{id}`): output not applied yet, new states, final runs."""
        if not self.command:
            self.command = _command_fields(doc)
        updates: list[Update] = []
        for fields in doc.get("runs") or []:
            run = self._run(fields) if isinstance(fields, dict) else None
            if run is None:
                continue
            pieces = fields.get("output") if isinstance(fields.get("output"), list) else []
            for index, piece in enumerate(pieces):
                if not isinstance(piece, dict):
                    continue
                if _chunk_id(piece) is None and index < run.chunks:
                    continue  # an older server names no chunk: the count says what is new
                updates += self._output(run, piece, stored=True)
            updates += self._state(run, run.merge(fields))
        if doc.get("done") or (self.runs and all(r.final for r in self.runs.values())):
            self.done = True
        self.wants_snapshot = self.wants_snapshot and any(not r.final for r in self.runs.values())
        return updates

    def on_cut(self, now: float) -> None:
        """The stream ended before `done` (or was refused): the driver reads snapshots until `done`."""
        self.cut = True
        timeout = self.command.get("timeout")
        timeout_s = float(timeout) if isinstance(timeout, int | float) else DEFAULT_TIMEOUT_S
        self.gone_by = now + timeout_s + SERVER_GONE_S

    def next_read_in(self, now: float) -> float | None:
        """When the driver reads the store next, in seconds: every POLL_S after a cut until `done`;
        after a `done` that left final states to the store, every SETTLE_POLL_S for SETTLE_S at most
        (runs still without one are reported unknown); None when no read is due."""
        if not self.done:
            return POLL_S
        if self.wants_snapshot:
            if self._settle_by is None:
                self._settle_by = now + SETTLE_S
            if now < self._settle_by:
                return SETTLE_POLL_S
        return None

    def keep_trying(self, now: float) -> bool:
        """After a cut, whether an unreachable server is still worth retrying (it may be restarting)."""
        return self.gone_by is None or now <= self.gone_by

    # -- results ------------------------------------------------------------------------------
    def ordered(self) -> list[Run]:
        return sorted(self.runs.values(), key=lambda r: r.node_name)

    def unfinished(self) -> list[Run]:
        return [r for r in self.ordered() if not r.final]

    def exit_status(self, stopped_early: bool = False, cancelling: bool = False) -> int:
        """The highest status of the finished runs; 130 when Ctrl-C cancelled or stopped the wait;
        255 for runs whose end is unknown (the server lost track of them)."""
        runs = self.ordered()
        status = max((run_status(r.fields) for r in runs if r.final), default=0)
        if any(not r.final for r in runs):
            status = max(status, EXIT_CANCELLED if stopped_early else EXIT_UNREACHED)
        if cancelling:
            status = max(status, EXIT_CANCELLED)
        return status

    def counts(self) -> dict[str, int]:
        """Runs per label, "ok" for those that exited 0, else their state; sorted by label."""
        counts: dict[str, int] = {}
        for run in self.runs.values():
            label = "ok" if run_ok(run.fields) else run.state
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def report(self) -> list[str]:
        """`dvic run`'s summary: a line of counts, then each run's state in detail. Only when there is
        something to say: several runs, or one that did not simply exit (or lost output)."""
        runs = self.ordered()
        if len(runs) <= 1 and all(r.state == "exited" and not r.fields.get("truncated") for r in runs):
            return []
        width = max(len(r.node_name) for r in runs)
        lines = [f"--- {self.command.get('id')}: " + ", ".join(f"{v} {k}" for k, v in self.counts().items())]
        return lines + [f"{r.node_name.ljust(width)}  {state_text(r.fields, detail=True)}" for r in runs]

    def summary(self) -> str:
        """`1/2 ok, 2/2 finished` (`, running` until done): the console's title."""
        total = len(self.runs)
        ok = sum(1 for r in self.runs.values() if run_ok(r.fields))
        final = sum(1 for r in self.runs.values() if r.final)
        return f"{ok}/{total} ok, {final}/{total} finished" + ("" if self.done else ", running")

    # -- inside -------------------------------------------------------------------------------
    def _describe(self, doc: Json) -> list[Update]:
        self.command = _command_fields(doc)
        updates: list[Update] = []
        for fields in doc.get("runs") or []:
            run = self._run(fields) if isinstance(fields, dict) else None
            if run is not None:
                run.merge(fields)
                updates.append(Update("state", run))
        return updates

    def _run(self, doc: Json) -> Run | None:
        rid = run_key(doc)
        if rid is None:
            return None
        run = self.runs.get(rid)
        if run is None:
            run = self.runs[rid] = Run(rid)
        return run

    def _output(self, run: Run, piece: Json, stored: bool) -> list[Update]:
        chunk = _chunk_id(piece)
        if chunk is not None:
            if chunk <= run.last_chunk:
                return []  # already applied (replayed, streamed, or in an earlier snapshot)
            run.last_chunk = chunk
        run.chunks += 1
        return [Update("output", run, str(piece.get("stream") or "stdout"), str(piece.get("data", "")), chunk,
                       stored)]

    def _state(self, run: Run, changed: bool) -> list[Update]:
        if run.final and not run.finished:
            return [self._finish(run)]
        return [Update("state", run)] if changed else []

    def _finish(self, run: Run) -> Update:
        run.finished = True
        return Update("finished", run)

    def _replayed(self) -> list[Update]:
        """The stored chunks of the runs final in the `command` frame have all come: they are finished."""
        runs, self._replaying = self._replaying, []
        return [self._finish(r) for r in runs if not r.finished]


def _command_fields(doc: Json) -> Json:
    return {k: v for k, v in doc.items() if k not in ("runs", "type")}


# -- output lines --------------------------------------------------------------------------------
class LineSplitter:
    """One run's output cut into whole lines, per stream (a line may span chunks); raw text, not cleaned.

    With `keep`, the last `keep` lines are kept (`lines`), and `dropped` counts the older ones."""

    __slots__ = ("partial", "keep", "lines", "dropped")

    def __init__(self, keep: int = 0) -> None:
        self.partial: dict[str, str] = {}
        self.keep = keep
        self.lines: list[tuple[str, str]] = []  # (stream, line)
        self.dropped = 0

    def feed(self, stream: str, data: str) -> list[tuple[str, str]]:
        """Adds a chunk; returns the lines it completed."""
        *complete, rest = (self.partial.pop(stream, "") + data).split("\n")
        if rest:
            self.partial[stream] = rest
        return self._kept([(stream, line) for line in complete])

    def flush(self) -> list[tuple[str, str]]:
        """At the end of a run: the unterminated last line of each stream, stdout first."""
        order = sorted(self.partial, key=lambda s: (s != "stdout", s != "stderr", s))
        out = [(stream, self.partial[stream]) for stream in order]
        self.partial.clear()
        return self._kept(out)

    def count(self) -> int:
        return len(self.lines) + self.dropped

    def _kept(self, new: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.keep:
            self.lines.extend(new)
            if len(self.lines) > self.keep:
                cut = len(self.lines) - self.keep
                self.dropped += cut
                del self.lines[:cut]
        return new


# -- tracked actions -----------------------------------------------------------------------------
def action_final(action: Json) -> bool:
    return str(action.get("state")) in ACTION_FINAL


class ActionTracker:
    """Tracked actions followed to their final states (`dvic reboot --wait`, the console's actions screen).

    Changes come from the live stream's `action_<state>` events and from rows of GET /actions (read
    every ACTION_POLL_S while one is unfinished: a stream can drop, and a lost action has no event
    until its deadline). A change is reported once; a final state is never changed again.
    """

    def __init__(self, actions: Iterable[Json]) -> None:
        self.actions: dict[str, Json] = {str(a["id"]): dict(a) for a in actions if a.get("id")}
        deadlines = [float(a.get("deadline") or 0) for a in self.actions.values()]
        self.deadline = max(deadlines, default=0.0) + ACTION_GRACE_S  # wall-clock, as the server's

    def on_event(self, event: Json) -> list[Json]:
        """A live-stream event (`{"kind": "action_done", "data": {"id", "state"}, "message", "ts"}`)."""
        data = event.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("state"), str):
            return []
        _, _, message = str(event.get("message") or "").partition(": ")
        return self._change(str(data.get("id")), data["state"], {"message": message, "updated_at": event.get("ts")})

    def on_rows(self, rows: Iterable[Json]) -> list[Json]:
        """Rows of GET /actions: the followed ones whose state changed."""
        changed: list[Json] = []
        for row in rows:
            changed += self._change(str(row.get("id")), str(row.get("state")), row)
        return changed

    @property
    def done(self) -> bool:
        return all(action_final(a) for a in self.actions.values())

    @property
    def ok(self) -> bool:
        return all(a.get("state") == "done" for a in self.actions.values())

    def progress(self) -> tuple[int, int, int]:
        """(done, final, total) of the followed actions."""
        values = self.actions.values()
        return (sum(1 for a in values if a.get("state") == "done"), sum(1 for a in values if action_final(a)),
                len(self.actions))

    def _change(self, aid: str, state: str, fields: Json) -> list[Json]:
        action = self.actions.get(aid)
        if action is None or action_final(action) or action.get("state") == state:
            return []
        action.update(fields, state=state)
        return [action]
