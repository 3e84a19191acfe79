"""The node view: facts, metric history charts, demos with liveness, the node's logs, events,
commands, actions and alerts."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Label, Static, TabbedContent, TabPane

from tui import fmt
from tui.api.errors import ApiError
from tui.api.follow_command import command_text
from tui.console.act import ACT_BINDINGS, ACTIONS, DEMO_ACTIONS
from tui.console.alerts import LiveAlerts
from tui.console.screens.actions import COLUMNS as ACTION_COLUMNS
from tui.console.screens.actions import fill_actions_table
from tui.console.screens.alerts import load_alerts, refusal
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ChoiceDialog
from tui.console.widgets.alert_table import AlertTable
from tui.console.widgets.chart import MetricChart
from tui.console.widgets.demo_table import STATE_STYLE as SUPERVISED_STYLE
from tui.console.widgets.demo_table import state_text, uptime, version_text
from tui.console.widgets.log_view import LogView
from tui.console.widgets.summary import STATE_ICON, STATE_STYLE
from tui.console.widgets.tables import data_table
from tui.textsafe import clean, literal

# (label, seconds, step): steps under 60 s read raw samples, longer ones the 1-minute aggregates.
RANGES = [("15m", 900, 15), ("1h", 3600, 60), ("24h", 86400, 900), ("7d", 604800, 7200)]
CHARTS = [("cpu", "CPU"), ("mem", "Memory"), ("disk", "Disk"), ("temp", "Temperature")]
DEMO_STYLE = {"alive": "green", "started": "cyan", "exited": "red"}
DETAIL_REFRESH = 5.0
DEMO_COLUMNS = (("name", "Demo"), ("state", "State"), ("pid", "PID"), ("since", "Since"), ("version", "Version"),
                ("restarts", "↻"), ("heartbeat", "Beat"), ("token", "Token"))
SUPERVISED = "supervised:"  # row keys of supervised demos (the others are keyed by their dvic_log token)
EVENT_COLUMNS = (("time", "Time"), ("kind", "Kind"), ("message", "Message"))
COMMAND_COLUMNS = (("time", "Time"), ("who", "Operator"), ("command", "Command"), ("ok", "OK"), ("state", "State"))


def _part(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested object of the node detail ({} when the node sent something else)."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _entries(doc: dict[str, Any], key: str) -> list[Any]:
    """A nested list of the node detail ([] when the node sent something else)."""
    value = doc.get(key)
    return value if isinstance(value, list) else []


class NodeScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("1", "range(0)", "15m"),
        Binding("2", "range(1)", "1h"),
        Binding("3", "range(2)", "24h"),
        Binding("4", "range(3)", "7d"),
        Binding("o", "tab('overview')", "Overview", show=False),
        Binding("d", "tab('demos')", "Demos", show=False),
        Binding("g", "tab('tail')", "Log tail", show=False),
        Binding("e", "tab('events')", "Events", show=False),
        Binding("l", "logs", "Logs"),
        Binding("m", "maintenance", "Maint."),
        Binding("r", "refresh", "Refresh", show=False),
        *ACT_BINDINGS,
        Binding("c", "tab('commands')", "Commands", show=False),
        Binding("a", "tab('actions')", "Actions", show=False),
        Binding("exclamation_mark", "tab('alerts')", "Alerts", key_display="!"),
    ]

    def __init__(self, node_id: str, tab: str = "overview") -> None:
        super().__init__(id=f"node-{node_id}")
        self.node_id = node_id
        self.initial_tab = tab
        self.actions: list[dict[str, Any]] = []
        self.alerts = LiveAlerts()  # this node's alerts (by name: set on mount)
        self.supervised: dict[str, dict[str, Any]] = {}  # demo name -> its status row (docs/demos.md)
        self.detail: dict[str, Any] = {}
        self.range_index = 1
        self._last_detail = 0.0

    def body(self) -> ComposeResult:
        yield Static(id="node-title")
        with TabbedContent(initial=self.initial_tab):
            with TabPane("Overview", id="overview"), Horizontal():
                with VerticalScroll(id="facts-box"):
                    yield Static(id="facts")
                with Vertical(id="charts"):
                    yield Label(id="range")
                    for name, title in CHARTS:
                        yield MetricChart(name, title)
            with TabPane("Demos", id="demos"):
                yield data_table("demo-table", DEMO_COLUMNS)
            with TabPane("Logs", id="tail"):
                yield LogView(with_node=False, id="node-log")
            with TabPane("Events", id="events"):
                yield data_table("event-table", EVENT_COLUMNS, zebra=False)
            with TabPane("Commands", id="commands"):
                yield data_table("cmd-table", COMMAND_COLUMNS)
            with TabPane("Actions", id="actions"):
                yield data_table("node-actions", ACTION_COLUMNS)
            with TabPane("Alerts", id="alerts"):
                yield AlertTable(id="node-alerts")

    def on_mount(self) -> None:
        super().on_mount()
        node = self.dvic.fleet.nodes.get(self.node_id)
        if node:
            self.detail = dict(node)
            self._show_title()
        self._show_range()
        self.load_detail()
        self.load_metrics()
        self.load_history()
        self.load_acts()
        self.alerts.book.node = str((node or {}).get("name") or self.node_id)
        self.load_alerts()
        self.load_supervised()

    def log_subscription(self) -> list[str]:
        return [self.node_id]

    # -- loading -------------------------------------------------------------------------------
    @work(exclusive=True, group="detail")
    async def load_detail(self) -> None:
        self._last_detail = time.monotonic()
        try:
            self.detail = await self.dvic.api.node(self.node_id)
        except ApiError as exc:
            self.notify(f"node detail: {exc.message}", severity="error", markup=False)
            return
        self._show_title()
        self._show_facts()
        self._show_demos()

    @work(exclusive=True, group="metrics")
    async def load_metrics(self) -> None:
        _, span, step = RANGES[self.range_index]
        now = time.time()
        try:
            doc = await self.dvic.api.metrics(self.node_id, now - span, now, step)
        except ApiError as exc:
            self.notify(f"metrics: {exc.message}", severity="error", markup=False)
            return
        series = _part(doc, "series")
        for chart in self.query(MetricChart):
            points = series.get(chart.metric)
            chart.set_points(points if isinstance(points, list) else [])

    @work(exclusive=True, group="history")
    async def load_history(self) -> None:
        try:
            logs = await self.dvic.api.logs(node=self.node_id, limit=200)
            events = await self.dvic.api.events(node=self.node_id, limit=50)
        except ApiError as exc:
            self.notify(f"history: {exc.message}", severity="error", markup=False)
            return
        self.query_one(LogView).load_history(logs["lines"])
        table = self.query_one("#event-table", DataTable)
        table.clear()
        for ev in reversed(events["events"]):
            self._add_event(ev)

    @work(exclusive=True, group="acts")
    async def load_acts(self) -> None:
        """Commands and actions history of this node."""
        try:
            commands = await self.dvic.api.commands(node=self.node_id, limit=100)
            self.actions = await self.dvic.api.actions(node=self.node_id)
        except ApiError as exc:
            if exc.status != 403:  # viewers may not list commands: the tab stays empty
                self.notify(f"commands/actions: {exc.message}", severity="error", markup=False)
            return
        table = self.query_one("#cmd-table", DataTable)
        table.clear()
        for cmd in commands:
            done = bool(cmd.get("done"))
            ok, total = int(cmd.get("ok") or 0), int(cmd.get("nodes") or 0)
            table.add_row(Text(fmt.stamp(cmd.get("created_at")), style="dim"), literal(cmd.get("operator", "")),
                          literal(command_text(cmd)), Text(f"{ok}/{total}", style="green" if ok == total else "red"),
                          Text("done" if done else "running", style="dim" if done else "yellow"),
                          key=str(cmd.get("id")))
        self._show_actions()

    @work(exclusive=True, group="node-alerts")
    async def load_alerts(self) -> None:
        try:
            await load_alerts(self.dvic.api, self.alerts)
        except ApiError as exc:
            self.notify(f"alerts: {refusal(exc)}", severity="error", markup=False)
            return
        self.query_one("#node-alerts", AlertTable).fill(self.alerts.book.ordered())
        self._show_title()

    @work(exclusive=True, group="node-supervised")
    async def load_supervised(self) -> None:
        try:
            rows = await self.dvic.api.demo_status()
        except ApiError as exc:
            self.notify(f"demos: {refusal(exc)}", severity="error", markup=False)
            return
        self.supervised = {str(r.get("demo")): r for r in rows if str(r.get("node")) == self.node_id}
        self._show_demos()

    def _show_actions(self) -> None:
        version = str(self.detail.get("daemon_version") or "-")
        fill_actions_table(self.query_one("#node-actions", DataTable), self.actions, {self.node_id: version})

    # -- rendering -----------------------------------------------------------------------------
    def _show_title(self) -> None:
        d = self.detail
        state = str(d.get("state", "?"))
        text = Text()
        text.append_text(literal(d.get("name", "?"), style="bold"))
        text.append(f"  {STATE_ICON.get(state, '?')} ", style=STATE_STYLE.get(state, ""))
        text.append_text(literal(state, style=STATE_STYLE.get(state, "")))
        text.append(f" for {fmt.age(d.get('state_since'))}", style="dim")
        text.append("  │ ", style="dim")
        text.append_text(literal(f"{d.get('kind', '')} {d.get('group') or ''}".strip()))
        text.append(f"  │ seen {fmt.age(d.get('last_seen'))} ago", style="dim")
        if d.get("revoked"):
            text.append("  REVOKED", style="bold red")
        open_alerts = sum(1 for a in self.alerts.book.alerts.values() if a.get("state") != "resolved")
        if open_alerts:
            text.append(f"  │ ⚠ {open_alerts} alert{'s' if open_alerts > 1 else ''} (!)", style="bold yellow")
        self.query_one("#node-title", Static).update(text)

    def _show_facts(self) -> None:
        d = self.detail
        facts, sample, m = _part(d, "facts"), _part(d, "sample"), _part(d, "metrics")
        boot = facts.get("boot_time")
        uptime = sample.get("uptime") if isinstance(sample.get("uptime"), int | float) else (
            time.time() - boot if isinstance(boot, int | float) else None)
        rows: list[tuple[str, Any]] = [
            ("Host", facts.get("hostname")), ("OS", facts.get("os")), ("Kernel", facts.get("kernel")),
            ("Arch", facts.get("arch")), ("Model", facts.get("model")), ("IP", facts.get("ips")),
            ("MAC", facts.get("macs")), ("Python", facts.get("python")), ("Uptime", fmt.duration(uptime)),
            ("Load", m.get("load1")), ("Procs", sample.get("procs")), ("Daemon", d.get("daemon_version")),
            ("Enrolled", fmt.stamp(d.get("created_at")) if d.get("created_at") else None), ("ID", d.get("id")),
        ]
        known = {"hostname", "os", "kernel", "arch", "model", "ips", "macs", "python", "boot_time"}
        # Keys come from the node like values: cleaned before they are cut to the column.
        rows += [(clean(k, single_line=True), v) for k, v in sorted(facts.items()) if k not in known]
        text = Text()
        for key, value in rows:
            if value is None or value == []:
                continue
            shown = ", ".join(str(v) for v in value) if isinstance(value, list) else value
            text.append(f"{key[:10]:<10} ", style="bold")
            text.append_text(literal(shown))
            text.append("\n")
        self.query_one("#facts", Static).update(text)

    def _show_demos(self) -> None:
        """The supervised demos first (demo_status), then the ones that log through dvic_log."""
        table = self.query_one("#demo-table", DataTable)
        current = self.selected_demo_key()
        table.clear()
        now = time.time()
        for name in sorted(self.supervised):
            table.add_row(*self._supervised_cells(self.supervised[name], now), key=SUPERVISED + name)
        demos = _entries(self.detail, "demos_list")
        order = {"alive": 0, "started": 1, "exited": 2}
        for demo in sorted((x for x in demos if isinstance(x, dict)),
                           key=lambda x: (order.get(str(x.get("state")), 3), str(x.get("name")))):
            state = str(demo.get("state", "?"))
            since = demo.get("exited_at") if state == "exited" else demo.get("started_at")
            table.add_row(
                literal(demo.get("name", "?")),
                literal(("● " if state != "exited" else "○ ") + state, style=DEMO_STYLE.get(state, "")),
                literal(demo.get("pid", "-")),
                Text(fmt.age(since if isinstance(since, int | float) else None), style="dim"),
                Text("-", style="dim"), Text("-", style="dim"), Text("-", style="dim"),
                literal(demo.get("token", ""), style="dim"),
                key=str(demo.get("token") or id(demo)),
            )
        if current is not None and current in {str(k.value) for k in table.rows}:
            table.move_cursor(row=table.get_row_index(current), scroll=False)

    @staticmethod
    def _supervised_cells(row: dict[str, Any], now: float) -> list[Text]:
        state, style = state_text(row)
        heartbeat = row.get("last_heartbeat")
        return [literal(row.get("demo", "?")), literal(state, style=style), literal(row.get("pid") or "-"),
                Text(uptime(row, now), style="dim"), literal(version_text(row)),
                Text(str(row.get("restarts") or 0), style="yellow" if row.get("restarts") else "dim"),
                Text(fmt.age(heartbeat if isinstance(heartbeat, int | float) else None, now), style="dim"),
                Text("supervised", style=SUPERVISED_STYLE.get("running", "dim"))]

    def _update_supervised(self, name: str) -> None:
        """One supervised demo's row, cell by cell (a frame changes it; the table is not rebuilt)."""
        table = self.query_one("#demo-table", DataTable)
        key = SUPERVISED + name
        if key not in {str(k.value) for k in table.rows}:
            self._show_demos()
            return
        cells = self._supervised_cells(self.supervised[name], time.time())
        for (column, _), value in zip(DEMO_COLUMNS, cells, strict=True):
            if table.get_cell(key, column).plain != value.plain:
                table.update_cell(key, column, value)

    def _show_range(self) -> None:
        text = Text("Range: ", style="bold")
        for i, (label, _, _) in enumerate(RANGES):
            text.append(f" {i + 1}:{label} ", style="reverse" if i == self.range_index else "dim")
        self.query_one("#range", Label).update(text)

    def _add_event(self, ev: dict[str, Any]) -> None:
        table = self.query_one("#event-table", DataTable)
        table.add_row(Text(fmt.stamp(ev.get("ts")), style="dim"), literal(ev.get("kind", "?")),
                      literal(ev.get("message", "")))
        table.move_cursor(row=table.row_count - 1, scroll=True)

    # -- live ----------------------------------------------------------------------------------
    def live_nodes(self, nodes: list[dict[str, Any]], gone: list[str]) -> None:
        for node in nodes:
            if node.get("id") == self.node_id:
                demos_changed = node.get("demos") != self.detail.get("demos")
                self.detail.update(node)
                self._show_title()
                if demos_changed or time.monotonic() - self._last_detail > DETAIL_REFRESH * 6:
                    self.load_detail()

    def live_alert(self, change: str, alert: dict[str, Any]) -> None:
        shown = self.alerts.alert(alert)
        if shown is not None:
            self.query_one("#node-alerts", AlertTable).show(shown)
            self._show_title()

    def live_silence(self, change: str, silence: dict[str, Any]) -> None:
        self.load_alerts()  # the server says which alerts a silence covers

    def live_connection(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        super().live_connection(connected, reason, retry_in, fatal)
        if connected and self.is_mounted and self.alerts.loaded:
            self.load_alerts()
            self.load_supervised()

    def live_tick(self) -> None:
        for name in self.supervised:  # their Since (uptime) and Beat
            self._update_supervised(name)
        if self.alerts.loaded:
            table = self.query_one("#node-alerts", AlertTable)
            for alert_id in self.alerts.book.prune():
                table.forget(alert_id)
            table.tick(self.alerts.book.alerts)

    def live_demo_status(self, status: dict[str, Any]) -> None:
        if str(status.get("node")) != self.node_id:
            return
        name = str(status.get("demo"))
        row = self.supervised.setdefault(name, {"node": self.node_id, "demo": name})
        row.update({k: v for k, v in status.items() if k != "type"})
        self._update_supervised(name)

    def live_logs(self, node: str, lines: list[dict[str, Any]]) -> None:
        if node == self.node_id:
            self.query_one(LogView).add_lines(lines)

    def live_event(self, event: dict[str, Any]) -> None:
        if event.get("node") == self.node_id:
            self._add_event(event)
            if str(event.get("kind", "")).startswith("action_"):
                self.load_acts()

    # -- actions -------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_range(self, index: int) -> None:
        self.range_index = index
        self._show_range()
        self.load_metrics()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        tables = self.query_one(f"#{tab}", TabPane).query(DataTable)
        if tables:  # keys like enter and D act on the tab's table
            tables.first().focus()

    def action_logs(self) -> None:
        self.dvic.open_logs(self.node_id)

    def action_maintenance(self) -> None:
        self.dvic.toggle_maintenance(self.node_id)

    def action_refresh(self) -> None:
        self.load_detail()
        self.load_metrics()
        self.load_history()
        self.load_acts()

    def action_run(self) -> None:
        self.dvic.open_run({"nodes": [self.node_id]})

    def action_shell(self) -> None:
        self.dvic.open_shell(self.node_id)

    def action_reboot(self) -> None:
        self.dvic.request_action([self.node_id], "reboot")

    def action_update(self) -> None:
        self.dvic.update_daemon({"nodes": [self.node_id]})

    def selected_demo_key(self) -> str | None:
        table = self.query_one("#demo-table", DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def selected_demo(self) -> str | None:
        """The name of the demo under the cursor of the Demos tab."""
        key = self.selected_demo_key()
        if key is None:
            return None
        if key.startswith(SUPERVISED):
            return key[len(SUPERVISED):]
        demos = _entries(self.detail, "demos_list")
        return next((str(d.get("name")) for d in demos if isinstance(d, dict) and str(d.get("token")) == key), None)

    @work(group="node-act")
    async def action_demo_action(self) -> None:
        tabs = self.query_one(TabbedContent)
        if tabs.active != "demos":
            tabs.active = "demos"
            self.notify("pick a demo, then D again", markup=False)
            return
        demo = self.selected_demo()
        if demo is None:
            self.notify("this node reports no demo", severity="warning")
            return
        labels = [ACTIONS[a] for a in DEMO_ACTIONS]
        picked = await self.app.push_screen_wait(ChoiceDialog(f"Demo {clean(demo, single_line=True)}:", labels))
        if picked:
            self.dvic.request_action([self.node_id], DEMO_ACTIONS[labels.index(picked)], demo=demo)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id in ("commands", "actions"):
            self.load_acts()

    @on(DataTable.RowSelected, "#cmd-table")
    def _command_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dvic.open_run(command_id=str(event.row_key.value))

    @on(DataTable.RowSelected, "#demo-table")
    def _demo_selected(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        self.dvic.open_logs(self.node_id, demo=key.removeprefix(SUPERVISED))
