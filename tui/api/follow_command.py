"""Following a command: target descriptions, the confirmation rule, per-run state and output lines.

Plain functions and small classes without widgets or sockets, shared by the console's Act screens
(tui/console/screens/run.py, actions.py) and the `dvic` commands, so the rules (what needs a
confirmation, how a run's output is split into lines, what a state looks like) are unit-tested alone.
How the console draws them (labels, styles) is tui/console/act.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dvic_core.constants import ACTION_FINAL, RUN_FINAL
from tui.textsafe import clean

Json = dict[str, Any]

MAX_LINES_PER_RUN = 5000  # what the screen keeps per node; the server keeps the full (1 MiB) output


def command_text(doc: Json) -> str:
    """What a command ran, as one line of text: its shell string or its argv joined."""
    if doc.get("shell"):
        return str(doc["shell"])
    argv = doc.get("argv") or []
    return " ".join(str(a) for a in argv)


def describe_targets(targets: Json, names: dict[str, str] | None = None) -> str:
    """`{"nodes": [...]}` / `{"group": G}` / `{"all": True}` as words for titles and confirmations."""
    if targets.get("all"):
        return "ALL nodes"
    if "group" in targets:
        return f"group {clean(targets['group'] or '(none)', single_line=True)}"
    nodes = [str(n) for n in targets.get("nodes") or []]
    shown = [clean((names or {}).get(n, n), single_line=True) for n in nodes]
    if len(shown) <= 4:
        return ", ".join(shown) if shown else "no node"
    return f"{', '.join(shown[:3])} and {len(shown) - 3} more"


def needs_confirmation(targets: Json) -> bool:
    """Fleet-wide runs (a group, every node, or more than one node) are confirmed first."""
    return bool(targets.get("all")) or "group" in targets or len(targets.get("nodes") or []) > 1


def run_state_text(run: Json) -> str:
    """A run's state as shown in the table: `exited 0`, `killed by signal 9`, `timeout`..."""
    state = str(run.get("state") or "?")
    if state == "exited":
        code, sig = run.get("code"), run.get("signal")
        text = f"exited {code}" if isinstance(code, int) else f"killed by signal {sig}"
    else:
        text = state
    if run.get("truncated"):
        text += " (truncated)"
    return clean(text, single_line=True)


def run_ok(run: Json) -> bool:
    return run.get("state") == "exited" and run.get("code") == 0


def normal_run(run: Json) -> Json:
    """A run as the stream names its fields (`run_id`, `node`); the stored command says `id`, `node_id`."""
    out = dict(run)
    if "run_id" not in out and out.get("id"):
        out["run_id"] = out["id"]
    if "node" not in out and out.get("node_id"):
        out["node"] = out["node_id"]
    return out


def action_final(action: Json) -> bool:
    return str(action.get("state")) in ACTION_FINAL


@dataclass
class RunOutput:
    """One node's run: its state and its output cut into complete, cleaned lines."""

    run_id: str
    node: str
    node_name: str
    state: Json = field(default_factory=dict)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (stream, cleaned line)
    partial: dict[str, str] = field(default_factory=dict)  # per stream: text after the last newline
    chunks: int = 0  # output chunks applied: the store's chunks are append-only, so [chunks:] is what is new
    from_store: bool = False  # had output before the stream connected: its output comes from the store only
    dropped: int = 0

    @property
    def final(self) -> bool:
        return str(self.state.get("state")) in RUN_FINAL

    def feed(self, stream: str, data: str) -> list[tuple[str, str]]:
        """Adds a chunk; returns the lines it completed (a line may span chunks)."""
        self.chunks += 1
        text = self.partial.pop(stream, "") + data
        *complete, rest = text.split("\n")
        if rest:
            self.partial[stream] = rest
        return self._keep([(stream, clean(line, single_line=True)) for line in complete])

    def flush(self) -> list[tuple[str, str]]:
        """At the end of a run, the unterminated last line of each stream."""
        out = [(stream, clean(rest, single_line=True)) for stream, rest in self.partial.items() if rest]
        self.partial.clear()
        return self._keep(out)

    def _keep(self, new: list[tuple[str, str]]) -> list[tuple[str, str]]:
        self.lines.extend(new)
        if len(self.lines) > MAX_LINES_PER_RUN:
            cut = len(self.lines) - MAX_LINES_PER_RUN
            self.dropped += cut
            del self.lines[:cut]
        return new


class CommandBoard:
    """Every run of one command, fed by the command stream or by polling `GET /commands/{id}`.

    The stream carries only what happens after it connected. A run that had output by then is read
    from the store instead; a run followed live gets, at the end, the stored chunks the stream missed.
    """

    def __init__(self) -> None:
        self.command: Json = {}
        self.runs: dict[str, RunOutput] = {}
        self.done = False

    def set_command(self, doc: Json) -> None:
        """The command as the stream's first message (or the POST answer) describes it."""
        self.command = doc
        for run in doc.get("runs") or []:
            if isinstance(run, dict) and (run := normal_run(run)).get("run_id"):
                out = self._run(run)
                out.state = {**out.state, **run}
                if int(run.get("output_bytes") or 0) > 0 and out.chunks == 0:
                    out.from_store = True
        if doc.get("done"):
            self.done = True

    def _run(self, run: Json) -> RunOutput:
        rid = str(run.get("run_id"))
        out = self.runs.get(rid)
        if out is None:
            out = self.runs[rid] = RunOutput(rid, str(run.get("node") or ""), str(run.get("node_name") or rid))
        elif not out.node and run.get("node"):
            out.node = str(run["node"])
        return out

    def output(self, run_id: str, stream: str, data: str) -> tuple[RunOutput | None, list[tuple[str, str]]]:
        out = self.runs.get(run_id)
        if out is None or out.from_store:
            return None, []
        return out, out.feed(stream, data)

    def state(self, run: Json) -> tuple[RunOutput, list[tuple[str, str]]]:
        """A run's new state; a final one flushes its unterminated last line."""
        out = self._run(run)
        out.state = {**out.state, **run}
        return out, (out.flush() if out.final else [])

    def stored(self, doc: Json) -> list[tuple[RunOutput, list[tuple[str, str]]]]:
        """Brings the board up to a stored command (`GET /commands/{id}`): new output and states only."""
        changes: list[tuple[RunOutput, list[tuple[str, str]]]] = []
        for run in doc.get("runs") or []:
            if not isinstance(run, dict) or not (run := normal_run(run)).get("run_id"):
                continue
            out = self._run(run)
            new: list[tuple[str, str]] = []
            chunks = run.get("output") if isinstance(run.get("output"), list) else []
            for chunk in chunks[out.chunks:]:
                if isinstance(chunk, dict):
                    new += out.feed(str(chunk.get("stream") or "stdout"), str(chunk.get("data", "")))
                else:
                    out.chunks += 1
            run_state = {k: v for k, v in run.items() if k != "output"}
            out.state = {**out.state, **run_state}
            if out.final:
                new += out.flush()
            changes.append((out, new))
        if doc.get("done"):
            self.done = True
        return changes

    def store_pending(self) -> bool:
        """Some run's output is read from the store and it is not finished yet."""
        return any(r.from_store and not r.final for r in self.runs.values())

    def summary(self) -> str:
        runs = [r.state for r in self.runs.values()]
        ok = sum(1 for r in runs if run_ok(r))
        final = sum(1 for r in runs if str(r.get("state")) in RUN_FINAL)
        return f"{ok}/{len(runs)} ok, {final}/{len(runs)} finished" + ("" if self.done else ", running")
