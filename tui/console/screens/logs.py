"""The logs screen: follow one node, a group or every node; level/source filters; server-side search.

The filter, the history query and the gap after a reconnect are tui/api/follow_logs.py's
(`LogFilter`, `LogFollower`), shared with `dvic logs --follow`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from tui.api import calls
from tui.api.errors import ApiError
from tui.console.screens.base import DvicScreen
from tui.console.widgets.log_view import LogView
from tui.textsafe import literal

HISTORY = 500  # lines read when the screen opens or a filter changes


class LogsScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "search", "Search"),
        Binding("v", "level", "Level"),
        Binding("s", "source", "Source"),
        Binding("end,G", "follow", "Follow"),
        Binding("c", "clear_search", "Clear", show=False),
    ]

    def __init__(self, node_id: str | None = None, group: str | None = None, demo: str | None = None) -> None:
        super().__init__(id="logs")
        self.node_id = node_id
        self.group = group
        self.demo = demo
        self.query_text = ""
        self._was_down = False

    def body(self) -> ComposeResult:
        yield Static(id="logs-status")
        yield Input(placeholder="search (server full-text) — Enter searches, Escape cancels", id="search")
        yield LogView(with_node=self.node_id is None, id="log")

    def on_mount(self) -> None:
        super().on_mount()
        view = self.query_one(LogView)
        view.filter.node, view.filter.group, view.filter.demo = self.node_id, self.group, self.demo
        self.query_one("#search", Input).display = False
        self._show_status()
        self.load_history()
        view.focus()

    # -- scope ---------------------------------------------------------------------------------
    def _in_scope(self, node: str) -> bool:
        known = self.dvic.fleet.nodes.get(node)
        return self.query_one(LogView).filter.in_scope(node, None if known is None else known.get("group") or "")

    def log_subscription(self) -> list[str]:
        if self.node_id:
            return [self.node_id]
        if self.group is not None:
            return sorted(i for i, n in self.dvic.fleet.nodes.items() if (n.get("group") or "") == self.group)
        return ["*"]

    def scope_label(self) -> Text:
        if self.node_id:
            node = self.dvic.fleet.nodes.get(self.node_id) or {}
            text = Text("node ")
            text.append_text(literal(node.get("name") or self.node_id, style="bold cyan"))
            if self.demo:
                text.append(" demo ")
                text.append_text(literal(self.demo, style="bold magenta"))
            return text
        if self.group is not None:
            return Text("group ").append_text(literal(self.group or "(none)", style="bold cyan"))
        return Text("all nodes", style="bold cyan")

    def _show_status(self, behind: int = 0) -> None:
        log_filter = self.query_one(LogView).filter
        text = Text("Logs: ")
        text.append_text(self.scope_label())
        text.append(f"  │ level ≥ {log_filter.min_level}", style="bold" if log_filter.min_level != "DEBUG" else "dim")
        text.append(f"  │ source {log_filter.source or 'all'}", style="bold" if log_filter.source else "dim")
        if self.query_text:
            text.append("  │ search ")
            text.append_text(literal(self.query_text, style="bold yellow"))
        if behind:
            text.append(f"  │ ⏸ {behind} new below (End: follow)", style="bold yellow")
        else:
            text.append("  │ ▶ following", style="green")
        self.query_one("#logs-status", Static).update(text)

    # -- data ----------------------------------------------------------------------------------
    @work(exclusive=True, group="logs-history")
    async def load_history(self, gap: bool = False) -> None:
        """The history the filter asks for (`gap`: since the last line taken, after an outage)."""
        view = self.query_one(LogView)
        pages = view.follower.gap() if gap else view.follower.history(HISTORY)
        try:
            while (params := pages.next_params()) is not None:
                pages.add(await self.dvic.api.send(calls.logs(**params)))
        except ApiError as exc:
            self.notify(f"log history: {exc.message}", severity="error", markup=False)
            return
        lines = [x for x in pages.lines() if self._in_scope(str(x.get("node")))]
        if gap:
            view.load_history(lines)
        else:
            view.replace(lines)

    def live_logs(self, node: str, lines: list[dict[str, Any]]) -> None:
        if self._in_scope(node):
            self.query_one(LogView).add_lines(lines)

    def live_connection(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        super().live_connection(connected, reason, retry_in, fatal)
        if not connected:
            self._was_down = True
        elif self._was_down and self.is_mounted:
            self._was_down = False
            self.load_history(gap=True)  # fill the gap the outage left

    @on(LogView.Behind)
    def _behind(self, event: LogView.Behind) -> None:
        self._show_status(event.count)

    # -- actions -------------------------------------------------------------------------------
    def action_back(self) -> None:
        box = self.query_one("#search", Input)
        if box.display:
            box.display = False
            self.query_one(LogView).focus()
            return
        self.dismiss()

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.value = self.query_text
        box.display = True
        box.focus()

    @on(Input.Submitted, "#search")
    def _search(self, event: Input.Submitted) -> None:
        self.query_text = event.value.strip()
        event.input.display = False
        view = self.query_one(LogView)
        view.filter.text = self.query_text  # live lines: substring; history: the server's full-text search
        view.focus()
        self._show_status()
        self.load_history()

    def action_clear_search(self) -> None:
        if self.query_text:
            self.query_text = ""
            self.query_one(LogView).filter.text = ""
            self._show_status()
            self.load_history()

    def action_level(self) -> None:
        self._change_filter(self.query_one(LogView).filter.next_level)

    def action_source(self) -> None:
        self._change_filter(self.query_one(LogView).filter.next_source)

    def _change_filter(self, change: Callable[[], None]) -> None:
        """Re-filters what is shown at once, and reads the history with the filter applied by the server."""
        change()
        self.query_one(LogView).refilter()
        self._show_status()
        self.load_history()

    def action_follow(self) -> None:
        self.query_one(LogView).follow()
        self._show_status()
