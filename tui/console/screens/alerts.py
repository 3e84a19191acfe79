"""The Alerts view: the server's alerts (firing first, then acknowledged, then recently resolved)
and its silences, live; `a` acknowledges with a note, `n` adds a silence, `d` removes one.

The lists are read once (`GET /api/v1/alerts`, `/silences`) and then kept by the stream's
`alert` and `silence` frames; each frame changes one row. They are read again after a reconnect.
A viewer sees everything; what the server refuses (403 for a viewer) is shown as it says it.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from tui import fmt
from tui.api.aio import AsyncClient
from tui.api.errors import ApiError
from tui.console.alerts import MATCHERS, RECENT_S, Alert, LiveAlerts, Silence, matcher_text, subject_label
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ConfirmDialog, Field, FormDialog
from tui.console.widgets.alert_table import STATE_STYLE, AlertTable
from tui.console.widgets.tables import data_table
from tui.textsafe import literal

SILENCE_COLUMNS = (("id", "#", 4), ("matcher", "Matches", 26), ("left", "Left", 8), ("by", "By", 10),
                   ("note", "Note", None))
HISTORY_LIMIT = 200  # resolved alerts read at start (newest first); those older than RECENT_S are dropped


def refusal(exc: ApiError) -> str:
    """The server's word on a refused change, with its code."""
    return f"{exc.message} ({exc.code})" if exc.code else exc.message


async def load_alerts(api: AsyncClient, live: LiveAlerts, silences: bool = False) -> None:
    """Open alerts and the ones resolved within RECENT_S (of `live.book.node` only, when set), and
    with `silences` the current silences."""
    live.start_load()
    node = live.book.node
    current = await api.alerts(node=node)
    history = await api.alerts(everything=True, node=node, limit=HISTORY_LIMIT)
    cutoff = time.time() - RECENT_S
    resolved = [a for a in history["alerts"]
                if a.get("state") == "resolved" and isinstance(a.get("resolved"), int | float) and a["resolved"] >= cutoff]
    live.loaded_now([*current["alerts"], *resolved], await api.silences() if silences else None)


def describe(alert: Alert) -> Text:
    """One line about an alert: id, summary, and who acknowledged it with their note."""
    text = Text(f"#{alert.get('id')} ", style="bold")
    text.append_text(literal(alert.get("summary") or subject_label(alert)))
    if alert.get("acked_by"):
        text.append("  │ acknowledged by ", style="dim")
        text.append_text(literal(alert["acked_by"], style="yellow"))
        text.append(f" {fmt.age(alert.get('acked_at'))} ago", style="dim")
        if alert.get("ack_note"):
            text.append(": ", style="dim")
            text.append_text(literal(alert["ack_note"]))
    if alert.get("silenced_by"):
        text.append("  │ ", style="dim")
        text.append_text(literal(alert["silenced_by"], style="magenta"))
    return text


async def acknowledge(screen: DvicScreen, alert: Alert | None) -> Alert | None:
    """Asks for a note and acknowledges `alert`; returns the alert as the server now has it, or None
    (cancelled, or refused: the server's refusal stays in the dialog until Escape)."""
    if alert is None:
        screen.notify("no alert selected", severity="warning")
        return None
    if alert.get("state") != "firing":
        screen.notify(f"alert #{alert.get('id')} is {alert.get('state')}: only a firing alert is acknowledged",
                      severity="warning", markup=False)
        return None
    api = screen.dvic.api
    answer: list[Alert] = []

    async def send(values: dict[str, str]) -> str | None:
        try:
            answer.append(await api.ack_alert(int(alert["id"]), values["note"]))
        except ApiError as exc:
            return refusal(exc)
        return None

    title = f"Acknowledge #{alert.get('id')} {alert.get('rule')} on {subject_label(alert)}"
    await screen.app.push_screen_wait(FormDialog(title, [Field("note", "Note", "what is being done about it")], send))
    if not answer:
        return None
    screen.notify(f"acknowledged alert #{alert.get('id')}", markup=False)
    return answer[0]


class AlertsScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "ack", "Acknowledge"),
        Binding("n", "add_silence", "Silence…"),
        Binding("d,delete", "remove_silence", "Remove silence"),
        Binding("exclamation_mark", "tab('alerts')", "Alerts", key_display="!", show=False),
        Binding("s", "tab('silences')", "Silences"),
        Binding("enter", "open_node", "Node", show=False),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self, tab: str = "alerts") -> None:
        super().__init__(id="alerts")
        self.live = LiveAlerts()
        self.book = self.live.book
        self.initial_tab = tab
        self._detail_shown: str | None = None

    def body(self) -> ComposeResult:
        yield Static(id="alerts-title")
        with TabbedContent(initial=self.initial_tab):
            with TabPane("Alerts", id="alerts"):
                yield AlertTable(id="alert-table")
                yield Static(id="alert-detail")
            with TabPane("Silences", id="silences"):
                yield data_table("silence-table", SILENCE_COLUMNS)

    def on_mount(self) -> None:
        super().on_mount()
        self._title()
        self.action_tab(self.initial_tab)
        self.reload()

    # -- loading and live frames -----------------------------------------------------------------
    @work(exclusive=True, group="alerts-load")
    async def reload(self) -> None:
        try:
            await load_alerts(self.dvic.api, self.live, silences=True)
        except ApiError as exc:
            self.notify(f"alerts: {refusal(exc)}", severity="error", markup=False)
            return
        self.query_one(AlertTable).fill(self.book.ordered())
        self._fill_silences()
        self._title()
        self._detail()

    def live_connection(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        super().live_connection(connected, reason, retry_in, fatal)
        if connected and self.is_mounted and self.live.loaded:
            self.reload()  # what changed while the stream was down

    def live_alert(self, change: str, alert: dict[str, Any]) -> None:
        shown = self.live.alert(alert)
        if shown is not None:
            self.query_one(AlertTable).show(shown)
            self._title()
            if self.query_one(AlertTable).selected_key() == str(alert["id"]):
                self._detail()

    def live_silence(self, change: str, silence: dict[str, Any]) -> None:
        if not self.live.loaded:
            self.live.silence(change, silence)
            return
        if self.live.silence(change, silence):
            self._fill_silences()
        # Which alerts a silence covers is the server's to say (`silenced`): read them again.
        self.reload()

    def live_tick(self) -> None:
        if not self.live.loaded:
            return
        table = self.query_one(AlertTable)
        for alert_id in self.book.prune():
            table.forget(alert_id)
        table.tick(self.book.alerts)
        self._detail()  # its "acknowledged … ago"
        self._fill_silences(only_times=True)

    # -- rendering ----------------------------------------------------------------------------
    def _title(self) -> None:
        counts = self.book.counts()
        text = Text("Alerts  ", style="bold")
        if not self.live.loaded:
            text.append("reading…", style="dim")
        for state, label in (("firing", "firing"), ("silenced", "silenced"), ("acknowledged", "acknowledged"),
                             ("resolved", "resolved (1h)")):
            text.append(f" {counts[state]} {label} ", style=STATE_STYLE[state] if counts[state] else "dim")
            text.append("│", style="dim")
        silences = len(self.book.silences)
        text.append(f" {silences} silence{'' if silences == 1 else 's'}", style="magenta" if silences else "dim")
        self.query_one("#alerts-title", Static).update(text)

    def _detail(self) -> None:
        """The line under the table: the selected alert whole (redrawn only when it reads differently)."""
        alert = self.selected_alert()
        if alert is None:
            text = Text("No alert: the server's rules find nothing wrong." if self.live.loaded else "", style="dim")
        else:
            text = describe(alert)
        if text.plain != self._detail_shown:
            self._detail_shown = text.plain
            self.query_one("#alert-detail", Static).update(text)

    def _fill_silences(self, only_times: bool = False) -> None:
        table = self.query_one("#silence-table", DataTable)
        now = time.time()
        silences = self.book.ordered_silences()
        if only_times:  # the Left column, once a second
            shown = {str(k.value) for k in table.rows}
            for s in silences:
                if str(s["id"]) in shown:
                    table.update_cell(str(s["id"]), "left", Text(self._left(s, now), style="dim"))
            return
        current = self._selected_silence_key()
        table.clear()
        for s in silences:
            table.add_row(Text(str(s["id"]), style="dim"), literal(matcher_text(s), style="bold"),
                          Text(self._left(s, now), style="dim"), literal(s.get("created_by") or "-"),
                          literal(s.get("note") or ""), key=str(s["id"]))
        if current is not None and current in {str(s["id"]) for s in silences}:
            table.move_cursor(row=table.get_row_index(current), scroll=False)

    @staticmethod
    def _left(silence: Silence, now: float) -> str:
        ends = silence.get("ends")
        return fmt.duration(ends - now) if isinstance(ends, int | float) else "-"

    # -- selection ----------------------------------------------------------------------------
    def selected_alert(self) -> Alert | None:
        key = self.query_one(AlertTable).selected_key()
        return self.book.alerts.get(int(key)) if key is not None else None

    def _selected_silence_key(self) -> str | None:
        table = self.query_one("#silence-table", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    @on(DataTable.RowHighlighted, "#alert-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    @on(DataTable.RowSelected, "#alert-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_node()

    # -- actions ------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one(f"#{tab}", TabPane).query(DataTable).first().focus()

    def action_open_node(self) -> None:
        alert = self.selected_alert()
        if alert is None:
            return
        by_name = {str(n.get("name")): nid for nid, n in self.dvic.fleet.nodes.items()}
        nid = by_name.get(str(alert.get("node")))
        if nid is not None:
            self.dvic.open_node(nid, tab="alerts")

    @work(group="alerts-act")
    async def action_ack(self) -> None:
        self.action_tab("alerts")
        acked = await acknowledge(self, self.selected_alert())
        if acked is not None:
            self.live_alert("acknowledged", acked)

    @work(group="alerts-act")
    async def action_add_silence(self) -> None:
        # From the Alerts tab the form starts as "this rule on this node"; from Silences, empty.
        alert = self.selected_alert() if self.query_one(TabbedContent).active == "alerts" else None
        start = {"node": str(alert.get("node") or ""), "rule": str(alert.get("rule") or "")} if alert else {}
        api = self.dvic.api

        async def send(values: dict[str, str]) -> str | None:
            matcher = {k: values[k] for k in MATCHERS if values.get(k)}
            try:
                silence = await api.add_silence(matcher, values["for"], values["note"])
            except ApiError as exc:
                return refusal(exc)
            self.book.apply_silence("added", silence)
            return None

        fields = [Field("group", "Group", "a group's name", start.get("group", "")),
                  Field("node", "Node", "a node's name", start.get("node", "")),
                  Field("rule", "Rule", "a rule's name, e.g. disk_full", start.get("rule", "")),
                  Field("severity", "Severity", "critical, warning or info"),
                  Field("for", "For", "how long: 30m, 2h, 1d (at most 30d)", "2h"),
                  Field("note", "Note", "why")]
        done = await self.app.push_screen_wait(
            FormDialog("Silence alerts matching every field given", fields, send))
        if done is not None:
            self.notify(f"silenced {matcher_text(done)} for {done['for']}", markup=False)
            self._fill_silences()
            self._title()

    @work(group="alerts-act")
    async def action_remove_silence(self) -> None:
        if self.query_one(TabbedContent).active != "silences":
            self.action_tab("silences")
            self.notify("pick a silence, then d again", markup=False)
            return
        key = self._selected_silence_key()
        silence = self.book.silences.get(int(key)) if key is not None else None
        if silence is None:
            self.notify("no silence to remove", severity="warning")
            return
        question = f"End silence #{silence['id']} ({matcher_text(silence)}) now?"
        if not await self.app.push_screen_wait(ConfirmDialog(question, "End it")):
            return
        try:
            await self.dvic.api.remove_silence(int(silence["id"]))
        except ApiError as exc:
            self.notify(f"silence #{silence['id']}: {refusal(exc)}", severity="error", markup=False)
            return
        self.book.apply_silence("removed", silence)
        self._fill_silences()
        self._title()
        self.notify(f"silence #{silence['id']} ended", markup=False)
