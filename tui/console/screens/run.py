"""Run a command on nodes: the command input, live per-node output and states, cancel.

Opened on the marked fleet nodes, one node, a group or every node; or on a past command (from a
node's history) to read its stored output and follow it if it still runs. Output comes from the
command stream; when the stream is refused or cut, the stored command is polled instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Input, RichLog, Static

from tui.api.client import ApiError
from tui.api.follow_command import (
    CommandBoard,
    RunOutput,
    describe_targets,
    needs_confirmation,
    run_state_text,
)
from tui.api.remote_client import RemoteClient, StreamCut
from tui.console.act import RUN_STYLE
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ConfirmDialog
from tui.console.widgets.banner import ConnectionBanner
from tui.textsafe import clean, literal

POLL_S = 1.0  # how often the stored command is read when there is no stream
MAX_SHOWN = 20000  # lines in the output pane (the per-node lines are kept in the board)


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
        self.board = CommandBoard()
        self.only: str | None = None  # run id whose output alone is shown

    @property
    def api(self) -> RemoteClient:
        return self.dvic.api

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield Static(id="run-title")
        yield Input(placeholder="shell command, run with /bin/sh -c on each node — Enter runs", id="run-input")
        table: DataTable[Any] = DataTable(id="run-table", cursor_type="row", zebra_stripes=True)
        for key, label, width in (("node", "Node", 20), ("state", "State", 22), ("lines", "Lines", 7)):
            table.add_column(label, key=key, width=width)
        yield table
        yield RichLog(id="run-output", markup=False, highlight=False, wrap=True, max_lines=MAX_SHOWN)
        yield Footer()

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
            shown = cmd.get("shell") or " ".join(str(a) for a in cmd.get("argv") or [])
            text.append("  $ ", style="dim")
            text.append_text(literal(shown, style="bold"))
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
        if needs_confirmation(self.targets):
            where = describe_targets(self.targets, self._names())
            question = f"Run on {where}?\n\n$ {clean(command, single_line=True)}"
            if not await self.app.push_screen_wait(ConfirmDialog(question, "Run")):
                return
        try:
            doc = await self.api.run_command(self.targets, shell=command)
        except ApiError as exc:
            self.notify(f"run: {exc.message} ({exc.code})", severity="error", markup=False)
            return
        self.board = CommandBoard()
        self.only = None
        self.query_one("#run-table", DataTable).clear()
        self.query_one("#run-output", RichLog).clear()
        self.command_id = str(doc.get("id"))
        self._apply_command(doc)
        self.query_one("#run-input", Input).display = False
        self.query_one("#run-table", DataTable).focus()
        self.follow(self.command_id)

    # -- following -----------------------------------------------------------------------------
    @work(exclusive=True, group="run-follow")
    async def follow(self, command_id: str) -> None:
        """Streams the command's output; the store fills in what the stream cannot carry."""
        poller: asyncio.Task[None] | None = None
        try:
            async for msg in self.api.command_stream(command_id):
                self._on_stream(msg)
                if msg.get("type") == "command" and self.board.store_pending() and poller is None:
                    poller = asyncio.ensure_future(self._poll_store(command_id))
        except (StreamCut, ApiError):
            pass  # read the store instead: the server keeps every chunk
        finally:
            if poller is not None:
                poller.cancel()
        # The store has the last word: final states, and output the stream missed.
        self.board.done = False
        await self._poll_store(command_id)

    async def _poll_store(self, command_id: str) -> None:
        while True:
            try:
                self._apply_stored(await self.api.command(command_id))
            except ApiError as exc:
                self.notify(f"command {command_id}: {exc.message}", severity="warning", markup=False)
            if self.board.done:
                return
            await asyncio.sleep(POLL_S)

    def _on_stream(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "command":
            self._apply_command(msg)
        elif kind == "output":
            run, lines = self.board.output(str(msg.get("run_id")), str(msg.get("stream")), str(msg.get("data", "")))
            if run is not None:
                self._show(run, lines)
        elif kind == "state":
            run, lines = self.board.state(msg)
            self._show(run, lines)
        elif kind == "done":
            self.board.done = True

    def _apply_command(self, doc: dict[str, Any]) -> None:
        self.board.set_command({k: v for k, v in doc.items() if k != "type"})
        for run in self.board.runs.values():
            self._row(run)
        self._title()

    def _apply_stored(self, doc: dict[str, Any]) -> None:
        if not self.board.command:
            self.board.set_command({k: v for k, v in doc.items() if k != "runs"})
        for run, lines in self.board.stored(doc):
            self._show(run, lines)
        self._title()

    # -- showing -------------------------------------------------------------------------------
    def _row(self, run: RunOutput) -> None:
        table = self.query_one("#run-table", DataTable)
        state = str(run.state.get("state"))
        cells = (literal(run.node_name, style="bold"),
                 literal(run_state_text(run.state), style=RUN_STYLE.get(state, "")),
                 Text(str(len(run.lines) + run.dropped), style="dim"))
        if run.run_id in table.rows:
            for key, cell in zip(("node", "state", "lines"), cells, strict=True):
                table.update_cell(run.run_id, key, cell)
        else:
            table.add_row(*cells, key=run.run_id)

    def _line(self, run: RunOutput, stream: str, line: str) -> Text:
        text = Text(no_wrap=False, end="")
        text.append(f"{clean(run.node_name, single_line=True)}", style="bold cyan")
        text.append(" │ ", style="dim")
        text.append(line, style="red" if stream == "stderr" else "")  # already cleaned by the board
        return text

    def _show(self, run: RunOutput, lines: list[tuple[str, str]]) -> None:
        self._row(run)
        if self.only in (None, run.run_id):
            log = self.query_one("#run-output", RichLog)
            for stream, line in lines:
                log.write(self._line(run, stream, line))
        self._title()

    def _redraw(self) -> None:
        log = self.query_one("#run-output", RichLog)
        log.clear()
        for run in self.board.runs.values():
            if self.only in (None, run.run_id):
                for stream, line in run.lines:
                    log.write(self._line(run, stream, line))

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
