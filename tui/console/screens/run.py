"""Run a command on nodes: the command input, live per-node output and states, cancel.

Opened on the marked fleet nodes, one node, a group or every node; or on a past command (from a
node's history) to read its stored output and follow it if it still runs. The screen drives a
`CommandTracker` (tui/api/follow_command.py, shared with `dvic run`): the command stream, which
replays the stored output first; when the stream is refused or cut, the stored command, polled.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, RichLog, Static

from tui.api.aio import AsyncClient
from tui.api.errors import ApiError, StreamClosed, Unreachable
from tui.api.follow_command import (
    CommandTracker,
    LineSplitter,
    command_text,
    describe_targets,
    needs_confirmation,
    state_text,
)
from tui.console.act import RUN_STYLE
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ConfirmDialog
from tui.console.widgets.tables import data_table
from tui.textsafe import clean, literal

if TYPE_CHECKING:
    from tui.api.follow_command import Run, Update

MAX_SHOWN = 20000  # lines in the output pane
MAX_LINES_PER_RUN = 5000  # lines kept per node (for "only this node"); the server keeps the full 1 MiB
COLUMNS = (("node", "Node", 20), ("state", "State", 22), ("lines", "Lines", 7))


class RunScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+x", "cancel_command", "Cancel run", priority=True),
        Binding("n", "new_command", "New"),
        Binding("enter", "only_node", "Only this node", show=False),
        Binding("a", "all_nodes", "All output", show=False),
    ]

    def __init__(self, targets: dict[str, Any] | None = None, command_id: str | None = None) -> None:
        super().__init__(classes="run-screen")
        self.targets = targets or {}
        self.command_id = command_id
        self.board = CommandTracker()  # the command followed (tui/api/follow_command.py)
        self.lines: dict[str, LineSplitter] = {}  # per run id: its output lines
        self.only: str | None = None  # run id whose output alone is shown

    @property
    def api(self) -> AsyncClient:
        return self.dvic.api

    def body(self) -> ComposeResult:
        yield Static(id="run-title")
        yield Input(placeholder="shell command, run with /bin/sh -c on each node — Enter runs", id="run-input")
        yield data_table("run-table", COLUMNS)
        yield RichLog(id="run-output", markup=False, highlight=False, wrap=True, max_lines=MAX_SHOWN)

    def on_mount(self) -> None:
        super().on_mount()
        self._title()
        box = self.query_one("#run-input", Input)
        if self.command_id:
            box.display = False
            self.query_one("#run-table", DataTable).focus()
            self.follow(self.command_id)
        else:
            box.focus()

    def _names(self) -> dict[str, str]:
        return {nid: str(n.get("name", nid)) for nid, n in self.dvic.fleet.nodes.items()}

    def _title(self) -> None:
        text = Text("Run on ", style="bold")
        cmd = self.board.command
        if cmd:
            text.append_text(literal(cmd.get("target") or describe_targets(self.targets, self._names())))
            text.append("  $ ", style="dim")
            text.append_text(literal(command_text(cmd), style="bold"))
            text.append(f"  │ {self.board.summary()}", style="green" if self.board.done else "yellow")
        else:
            text.append_text(literal(describe_targets(self.targets, self._names())))
        self.query_one("#run-title", Static).update(text)

    # -- starting ------------------------------------------------------------------------------
    @on(Input.Submitted, "#run-input")
    def _submitted(self, event: Input.Submitted) -> None:
        command = event.value.strip()
        if not command:
            self.notify("type a command first", severity="warning")
            return
        if self.board.command and not self.board.done:
            self.notify("a command is still running here: cancel it (ctrl+x) or wait", severity="warning")
            return
        self.start(command)

    @work(group="run-start")
    async def start(self, command: str) -> None:
        if needs_confirmation(self.targets):  # the one rule (docs/remote-control.md, "Confirmation")
            where = describe_targets(self.targets, self._names())
            question = f"Run on {where}?\n\n$ {clean(command, single_line=True)}"
            if not await self.app.push_screen_wait(ConfirmDialog(question, "Run")):
                return
        try:
            doc = await self.api.run_command(self.targets, shell=command)
        except ApiError as exc:
            self.notify(f"run: {exc.message} ({exc.code})", severity="error", markup=False)
            return
        self.board = CommandTracker()
        self.lines = {}
        self.only = None
        self.query_one("#run-table", DataTable).clear()
        self.query_one("#run-output", RichLog).clear()
        self.command_id = str(doc.get("id"))
        self._apply(self.board.on_frame({"type": "command", **doc}))
        self.query_one("#run-input", Input).display = False
        self.query_one("#run-table", DataTable).focus()
        self.follow(self.command_id)

    # -- following -----------------------------------------------------------------------------
    @work(exclusive=True, group="run-follow")
    async def follow(self, command_id: str) -> None:
        """Streams the command's output; after a cut (or a refusal), the store until it is done."""
        try:
            async for msg in self.api.command_stream(command_id):
                self._apply(self.board.on_frame(msg))
                if self.board.done:
                    break
        except (StreamClosed, ApiError):
            pass  # read the store instead: the server keeps every chunk
        if not self.board.done:
            self.board.on_cut(time.monotonic())
        if not self.board.done or self.board.wants_snapshot:
            await self._poll_store(command_id)

    async def _poll_store(self, command_id: str) -> None:
        """The stored command, as often as the tracker says: after a cut until it is done, or for
        final states the stream did not carry."""
        while True:
            try:
                self._apply(self.board.on_snapshot(await self.api.command(command_id)))
            except Unreachable as exc:
                if not self.board.keep_trying(time.monotonic()):
                    self.notify(f"command {command_id}: {exc.message}", severity="warning", markup=False)
                    return
            except ApiError as exc:
                self.notify(f"command {command_id}: {exc.message}", severity="warning", markup=False)
                return
            wait = self.board.next_read_in(time.monotonic())
            if wait is None:
                return
            await asyncio.sleep(wait)

    def _apply(self, updates: list[Update]) -> None:
        for update in updates:
            run = update.run
            lines = self.lines.setdefault(run.run_id, LineSplitter(keep=MAX_LINES_PER_RUN))
            if update.kind == "output":
                self._show(run, lines.feed(update.stream, update.data))
            elif update.kind == "finished":
                self._show(run, lines.flush())
            self._row(run)
        self._title()

    # -- showing -------------------------------------------------------------------------------
    def _row(self, run: Run) -> None:
        table = self.query_one("#run-table", DataTable)
        lines = self.lines.get(run.run_id)
        cells = (literal(run.node_name, style="bold"),
                 literal(state_text(run.fields), style=RUN_STYLE.get(run.state, "")),
                 Text(str(lines.count() if lines else 0), style="dim"))
        if run.run_id in table.rows:
            for key, cell in zip(("node", "state", "lines"), cells, strict=True):
                table.update_cell(run.run_id, key, cell)
        else:
            table.add_row(*cells, key=run.run_id)

    def _line(self, run_id: str, stream: str, line: str) -> Text:
        run = self.board.runs.get(run_id)
        text = Text(no_wrap=False, end="")
        text.append(clean(run.node_name if run else run_id, single_line=True), style="bold cyan")
        text.append(" │ ", style="dim")
        text.append(clean(line, single_line=True), style="red" if stream == "stderr" else "")
        return text

    def _show(self, run: Run, lines: list[tuple[str, str]]) -> None:
        if lines and self.only in (None, run.run_id):
            log = self.query_one("#run-output", RichLog)
            for stream, line in lines:
                log.write(self._line(run.run_id, stream, line))

    def _redraw(self) -> None:
        log = self.query_one("#run-output", RichLog)
        log.clear()
        for run_id, lines in self.lines.items():
            if self.only in (None, run_id):
                for stream, line in lines.lines:
                    log.write(self._line(run_id, stream, line))

    def output_text(self) -> str:
        """What the output pane holds, as plain text (for tests and copying)."""
        log = self.query_one("#run-output", RichLog)
        return "\n".join("".join(seg.text for seg in strip) for strip in log.lines)

    # -- actions -------------------------------------------------------------------------------
    def action_back(self) -> None:
        if self.board.command and not self.board.done:
            self.notify("the command keeps running on the nodes; its output stays in the node's history",
                        markup=False)
        self.dismiss()

    @work(group="run-cancel")
    async def action_cancel_command(self) -> None:
        if not self.command_id or self.board.done:
            self.notify("nothing running to cancel", severity="warning")
            return
        try:
            await self.api.cancel_command(self.command_id)
        except ApiError as exc:
            self.notify(f"cancel: {exc.message} ({exc.code})", severity="error", markup=False)
            return
        self.notify("cancel sent to every node still running it", markup=False)

    def action_new_command(self) -> None:
        if not self.targets:
            return
        box = self.query_one("#run-input", Input)
        box.display = True
        box.focus()

    def action_only_node(self) -> None:
        table = self.query_one("#run-table", DataTable)
        if table.row_count == 0:
            return
        rid = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        self.only = None if self.only == rid else rid
        self._redraw()

    def action_all_nodes(self) -> None:
        self.only = None
        self._redraw()

    @on(DataTable.RowSelected, "#run-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_only_node()
