"""The Demos view: every supervised demo on every node (version, health, restarts, uptime, last
heartbeat, install), live; `d` deploys a release, `b` rolls the selected demo back, both through
DeployDialog; a deployment's progress is the DeploymentScreen, each node's install state live.

The rows are read once (`GET /api/v1/demos/status`) and then kept by the stream's `demo_status`
frames (one row each) and `deployment` frames (the Install column); read again after a reconnect
and when a deployment ends (the desired versions are the server's to say).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui import fmt
from tui.api.errors import ApiError
from tui.console.screens.alerts import refusal
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ConfirmDialog, Dialog
from tui.console.widgets.demo_table import STATE_STYLE, DemoRow, DemoTable, install_text, row_key
from tui.console.widgets.tables import data_table
from tui.textsafe import clean, literal

# Frame fields that describe the demo's run; the rest of a status row (desired version, install,
# the node's state) comes from the status read and the deployment frames.
STATUS_FIELDS = ("node_name", "version", "state", "pid", "restarts", "since", "last_exit", "last_heartbeat",
                 "message")
FINAL_NODE_STATES = {"healthy", "removed", "failed", "rolled_back", "lost", "skipped", "superseded"}
NODE_STATE_STYLE = {"healthy": "green", "removed": "dim", "skipped": "dim", "superseded": "dim", "waiting": "dim",
                    "offline": "dim", "failed": "bold red", "rolled_back": "bold red", "lost": "bold red"}
DEPLOYMENT_STYLE = {"rolling": "yellow", "done": "green", "failed": "bold red", "superseded": "dim"}


@dataclass(frozen=True)
class Target:
    """Where a deployment goes: what the dialog lists, the API's body part, and whether to ask first."""

    label: str
    body: dict[str, Any]

    @property
    def confirm(self) -> bool:
        return "node" not in self.body  # the one rule (docs/remote-control.md): a group or all asks


def _stamp(deployment: dict[str, Any]) -> float:
    updated = deployment.get("updated_at")
    return float(updated) if isinstance(updated, int | float) else 0.0


def node_name(row: DemoRow) -> str:
    return clean(row.get("node_name") or row.get("node") or "?", single_line=True)


# Sends one deployment: (version or None for a rollback, target, batch) -> the deployment.
Send = Callable[[str | None, Target, int | None], Awaitable[dict[str, Any]]]


class DeployDialog(Dialog[dict[str, Any] | None]):
    """Pick a release (for a deploy), a target and an optional batch; Enter on the target sends.

    A group or all nodes is confirmed first. The server's refusal (403, 404, 409...) stays in the
    dialog; it closes with the deployment once the server accepted it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    BOX_CLASSES = "dialog-box form-box"

    def __init__(self, title: str, releases: list[str] | None, current: str | None, targets: list[Target],
                 send: Send) -> None:
        super().__init__(title)
        self.releases = releases
        self.current = current
        self.targets = targets
        self.send = send
        self.sending = False

    def body(self) -> ComposeResult:
        if self.releases is not None:
            yield Label("Release", classes="dim")
            yield OptionList(*[Option(literal(r), id=r) for r in self.releases], id="deploy-releases")
        yield Label("Target", classes="dim")
        yield OptionList(*[Option(literal(t.label), id=str(i)) for i, t in enumerate(self.targets)],
                         id="deploy-targets")
        if self.releases is not None:
            with Horizontal(classes="form-row"):
                yield Label("Batch", classes="form-label")
                yield Input(placeholder="canary size (empty: every node at once)", id="deploy-batch",
                            compact=True)
        yield Static(id="deploy-error")
        yield Label("Tab moves, Enter on a target sends, Escape cancels", classes="dim")

    def on_mount(self) -> None:
        if self.releases is not None:
            releases = self.query_one("#deploy-releases", OptionList)
            if self.current in self.releases:
                releases.highlighted = self.releases.index(self.current)
            releases.focus()
        else:
            self.query_one("#deploy-targets", OptionList).focus()

    def chosen(self) -> tuple[str | None, Target | None]:
        version = None
        if self.releases is not None:
            index = self.query_one("#deploy-releases", OptionList).highlighted
            version = self.releases[index] if index is not None and self.releases else None
        index = self.query_one("#deploy-targets", OptionList).highlighted
        return version, self.targets[index] if index is not None and self.targets else None

    def error(self, text: Text) -> None:
        self.query_one("#deploy-error", Static).update(text)

    @on(OptionList.OptionSelected, "#deploy-releases")
    def _release_picked(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.query_one("#deploy-targets", OptionList).focus()

    @on(OptionList.OptionSelected, "#deploy-targets")
    def _target_picked(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.action_send()

    @on(Input.Submitted, "#deploy-batch")
    def _batch_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_send()

    def action_send(self) -> None:
        if self.sending:
            return
        release, target = self.chosen()
        if target is None or (self.releases is not None and release is None):
            self.error(Text("pick a release and a target", style="bold red"))
            return
        batch: int | None = None
        if self.releases is not None:
            typed = self.query_one("#deploy-batch", Input).value.strip()
            if typed:
                if not typed.isdigit() or int(typed) < 1:
                    self.error(Text(f"batch: a whole number of nodes, at least 1 (not {typed!r})", style="bold red"))
                    return
                batch = int(typed)
        if not target.confirm:
            self.run_worker(self._send(release, target, batch), group="deploy-send")
            return
        question = f"Deploy {release} to {target.label}?" if release else f"{self.title_text} on {target.label}?"

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._send(release, target, batch), group="deploy-send")

        self.app.push_screen(ConfirmDialog(question, "Deploy" if release else "Roll back"), answered)

    async def _send(self, release: str | None, target: Target, batch: int | None) -> None:
        self.sending = True
        self.error(Text("sending…", style="dim"))
        try:
            deployment = await self.send(release, target, batch)
        except ApiError as exc:
            self.error(literal(refusal(exc), style="bold red", single_line=False))
            return
        finally:
            self.sending = False
        self.dismiss(deployment)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DemosScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("d", "deploy", "Deploy…"),
        Binding("b", "rollback", "Roll back…"),
        Binding("p", "progress", "Progress"),
        Binding("enter", "open_node", "Node", show=False),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="demos")
        self.rows: dict[str, DemoRow] = {}
        self.loaded = False
        self.last_deployment: str | None = None
        self._detail_shown: str | None = None

    def body(self) -> ComposeResult:
        yield Static(id="demos-title")
        yield DemoTable(id="demo-status-table")
        yield Static(id="demo-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self._title()
        self.query_one(DemoTable).focus()
        self.reload()

    # -- loading and live frames -----------------------------------------------------------------
    @work(exclusive=True, group="demos-load")
    async def reload(self) -> None:
        try:
            rows = await self.dvic.api.demo_status()
        except ApiError as exc:
            self.notify(f"demos: {refusal(exc)}", severity="error", markup=False)
            return
        self.rows = {row_key(r): r for r in rows}
        self.loaded = True
        self.query_one(DemoTable).fill(list(self.rows.values()))
        self._title()
        self._detail()

    def live_connection(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        super().live_connection(connected, reason, retry_in, fatal)
        if connected and self.is_mounted and self.loaded:
            self.reload()  # what changed while the stream was down

    def live_demo_status(self, status: dict[str, Any]) -> None:
        if not self.loaded:
            return  # the read under way has it
        key = row_key(status)
        row = self.rows.setdefault(key, {"node": status.get("node"), "demo": status.get("demo")})
        row.update({k: status[k] for k in STATUS_FIELDS if k in status})
        self._show(key)

    def live_deployment(self, deployment: dict[str, Any]) -> None:
        if not self.loaded:
            return
        demo = deployment.get("demo")
        for node in deployment.get("nodes") or []:
            key = f"{node.get('node')}/{demo}"
            if key in self.rows and node.get("state") != "superseded":
                self.rows[key]["install"] = {k: node.get(k) for k in ("state", "bytes", "total", "message")}
                self._show(key)
        if deployment.get("state") != "rolling":
            self.reload()  # the desired versions, and demos that appeared or left

    def live_nodes(self, nodes: list[dict[str, Any]], gone: list[str]) -> None:
        states = {str(n.get("id")): n.get("state") for n in nodes}
        for key, row in self.rows.items():
            if str(row.get("node")) in states and row.get("node_state") != states[str(row.get("node"))]:
                row["node_state"] = states[str(row.get("node"))]
                self._show(key)

    def live_tick(self) -> None:
        if self.loaded:
            self.query_one(DemoTable).tick(self.rows)
            self._detail()

    def _show(self, key: str) -> None:
        self.query_one(DemoTable).show(self.rows[key])
        self._title()
        if self.query_one(DemoTable).selected_key() == key:
            self._detail()

    # -- rendering ----------------------------------------------------------------------------
    def _title(self) -> None:
        text = Text("Demos  ", style="bold")
        if not self.loaded:
            text.append("reading…", style="dim")
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[str(row.get("state"))] = counts.get(str(row.get("state")), 0) + 1
        demos = len({r.get("demo") for r in self.rows.values()})
        nodes = len({r.get("node") for r in self.rows.values()})
        text.append(f" {demos} demo{'' if demos == 1 else 's'} on {nodes} node{'' if nodes == 1 else 's'} ",
                    style="dim")
        for state in ("healthy", "running", "unhealthy", "crashloop", "failed", "stopped"):
            if counts.get(state):
                text.append("│", style="dim")
                text.append(f" {counts[state]} {state} ", style=STATE_STYLE[state])
        self.query_one("#demos-title", Static).update(text)

    def _detail(self) -> None:
        """The line under the table: the selected row's message, install and last exit."""
        row = self.selected_row()
        if row is None:
            text = Text("No supervised demo yet: d deploys a published release." if self.loaded else "", style="dim")
        else:
            text = literal(f"{row.get('demo')} on {node_name(row)}", style="bold")
            install = install_text(row.get("install"))
            if install != "-":
                text.append(f"  │ install {install}", style="dim")
            exit_ = row.get("last_exit")
            if isinstance(exit_, dict) and exit_.get("at"):
                how = f"signal {exit_.get('signal')}" if exit_.get("signal") else f"status {exit_.get('code')}"
                text.append(f"  │ last exit {how}, {fmt.age(exit_['at'])} ago", style="dim")
            if row.get("message"):
                text.append("  │ ", style="dim")
                text.append_text(literal(row["message"]))
        if text.plain != self._detail_shown:
            self._detail_shown = text.plain
            self.query_one("#demo-detail", Static).update(text)

    # -- selection ----------------------------------------------------------------------------
    def selected_row(self) -> DemoRow | None:
        key = self.query_one(DemoTable).selected_key()
        return self.rows.get(key) if key is not None else None

    @on(DataTable.RowHighlighted, "#demo-status-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    @on(DataTable.RowSelected, "#demo-status-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_node()

    def targets(self, row: DemoRow | None) -> list[Target]:
        """The selected row's node, its group and all nodes; without a row, every node and group."""
        fleet = self.dvic.fleet
        if row is not None:
            node = fleet.nodes.get(str(row.get("node"))) or {}
            found = [Target(f"node {node_name(row)}", {"node": str(row.get("node_name") or row.get("node"))})]
            group = node.get("group")
            if group:
                found.append(Target(f"group {clean(group, single_line=True)}", {"group": group}))
            return [*found, Target("all nodes", {"all": True})]
        nodes = sorted(fleet.nodes.values(), key=lambda n: str(n.get("name")))
        found = [Target(f"node {clean(n.get('name'), single_line=True)}", {"node": str(n.get("name"))}) for n in nodes]
        found += [Target(f"group {clean(g, single_line=True)}", {"group": g}) for g in fleet.groups() if g]
        return [*found, Target("all nodes", {"all": True})]

    # -- actions ------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload()

    def action_open_node(self) -> None:
        row = self.selected_row()
        if row is not None:
            self.dvic.open_node(str(row.get("node")), tab="demos")

    def action_progress(self) -> None:
        if self.last_deployment is None:
            self.notify("no deployment from this console yet: `dvic demo deployments` lists them", markup=False)
            return
        self.dvic.open_deployment(self.last_deployment)

    @work(group="demos-act")
    async def action_deploy(self) -> None:
        api = self.dvic.api
        try:
            catalog = await api.demos()
            releases = [f"{d['name']}@{r['version']}" for d in catalog
                        for r in reversed(await api.demo_releases(str(d["name"])))]
        except ApiError as exc:
            self.notify(f"demos: {refusal(exc)}", severity="error", markup=False)
            return
        if not releases:
            self.notify("no release published: `dvic demo publish PATH` first", severity="warning", markup=False)
            return
        row = self.selected_row()
        current = next((r for r in releases if row and r.startswith(f"{row.get('demo')}@")), None)

        async def send(release: str | None, target: Target, batch: int | None) -> dict[str, Any]:
            demo, _, version = str(release).rpartition("@")
            return await api.deploy(demo, version, target.body, batch)

        await self._open(DeployDialog("Deploy", releases, current, self.targets(row), send))

    @work(group="demos-act")
    async def action_rollback(self) -> None:
        row = self.selected_row()
        if row is None:
            self.notify("pick a demo to roll back", severity="warning", markup=False)
            return
        demo = str(row.get("demo"))
        api = self.dvic.api

        async def send(release: str | None, target: Target, batch: int | None) -> dict[str, Any]:
            return await api.rollback(demo, target.body)

        title = f"Roll back {clean(demo, single_line=True)} to its previous version"
        await self._open(DeployDialog(title, None, None, self.targets(row), send))

    async def _open(self, dialog: DeployDialog) -> None:
        deployment = await self.app.push_screen_wait(dialog)
        if deployment:
            self.last_deployment = str(deployment.get("id"))
            self.notify(f"deployment {deployment.get('id')}: {deployment.get('kind')} {deployment.get('demo')} "
                        f"{deployment.get('version') or ''} to {deployment.get('target_name')}", markup=False)
            self.dvic.open_deployment(self.last_deployment, deployment)


NODE_COLUMNS = (("node", "Node", 14), ("batch", "Batch", 5), ("state", "State", 16), ("progress", "Progress", 12),
                ("previous", "Was", 8), ("message", "Message"))


class DeploymentScreen(DvicScreen):
    """One deployment with each node's install state, live from the stream's `deployment` frames."""

    BINDINGS = [Binding("escape", "back", "Back"), Binding("r", "reload", "Reload", show=False)]

    def __init__(self, deployment_id: str, deployment: dict[str, Any] | None = None) -> None:
        super().__init__(id=f"deployment-{deployment_id}")
        self.deployment_id = deployment_id
        self.deployment = deployment or {}
        self.trail: dict[str, list[str]] = {}  # each node's states as this screen saw them
        self._shown: dict[str, tuple[str, ...]] = {}

    def body(self) -> ComposeResult:
        yield Static(id="deployment-title")
        yield data_table("deployment-nodes", NODE_COLUMNS)

    def on_mount(self) -> None:
        super().on_mount()
        if self.deployment:
            self._apply(self.deployment)
        self.reload()

    @work(exclusive=True, group="deployment-load")
    async def reload(self) -> None:
        try:
            doc = await self.dvic.api.deployment(self.deployment_id)
        except ApiError as exc:
            self.notify(f"deployment {self.deployment_id}: {refusal(exc)}", severity="error", markup=False)
            return
        self._apply(doc)

    def live_deployment(self, deployment: dict[str, Any]) -> None:
        if str(deployment.get("id")) == self.deployment_id:
            self._apply(deployment)

    def live_connection(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        super().live_connection(connected, reason, retry_in, fatal)
        if connected and self.is_mounted and self.deployment:
            self.reload()

    def _apply(self, doc: dict[str, Any]) -> None:
        """Takes the deployment as it is now: the title, and the cells of the nodes that changed."""
        if _stamp(doc) < _stamp(self.deployment):
            return  # an older answer than a frame already shown
        self.deployment = doc
        self._title()
        table = self.query_one("#deployment-nodes", DataTable)
        for node in doc.get("nodes") or []:
            key = str(node.get("node"))
            state = str(node.get("state") or "?")
            seen = self.trail.setdefault(key, [])
            if not seen or seen[-1] != state:
                seen.append(state)
            cells = self._cells(node)
            plain = tuple(c.plain for c in cells.values())
            if key not in self._shown:
                table.add_row(*cells.values(), key=key)
            elif self._shown[key] != plain:  # a few nodes: the changed cells, each column as wide as it needs
                for column, value in cells.items():
                    if table.get_cell(key, column) != value:
                        table.update_cell(key, column, value, update_width=True)
            self._shown[key] = plain

    @staticmethod
    def _cells(node: dict[str, Any]) -> dict[str, Text]:
        state = str(node.get("state") or "?")
        total, done = node.get("total"), node.get("bytes")
        progress = "-"
        if isinstance(total, int) and total > 0 and isinstance(done, int):
            progress = f"{fmt.size(done)}/{fmt.size(total)}" if state == "downloading" else fmt.size(total)
        style = NODE_STATE_STYLE.get(state, "yellow")
        return {
            "node": literal(node.get("node_name") or node.get("node") or "?", style="bold"),
            "batch": Text(str(node.get("batch") if node.get("batch") is not None else "-"), style="dim"),
            "state": literal(("✔ " if state == "healthy" else "✖ " if style == "bold red" else "… ") + state,
                             style=style),
            "progress": Text(progress, style="dim"),
            "previous": literal(node.get("previous_version") or "-", style="dim"),
            "message": literal(node.get("message") or "", style="dim"),
        }

    def _title(self) -> None:
        d = self.deployment
        state = str(d.get("state") or "?")
        text = Text(f"Deployment {d.get('id', self.deployment_id)}  ", style="bold")
        text.append_text(literal(f"{d.get('kind', '?')} {d.get('demo', '?')} {d.get('version') or ''} "
                                 f"to {d.get('target_name') or '?'}"))
        if d.get("batch"):
            text.append(f" (batches of {d['batch']})", style="dim")
        text.append("  │ ", style="dim")
        text.append_text(literal(state, style=DEPLOYMENT_STYLE.get(state, "")))
        nodes = d.get("nodes") or []
        done = sum(1 for n in nodes if n.get("state") in FINAL_NODE_STATES)
        text.append(f"  {done}/{len(nodes)} nodes settled", style="dim")
        if d.get("message"):
            text.append("  │ ", style="dim")
            text.append_text(literal(d["message"], style="dim"))
        if d.get("operator"):
            text.append(f"  │ by {clean(d['operator'], single_line=True)} {fmt.age(d.get('created_at'))} ago", style="dim")
        self.query_one("#deployment-title", Static).update(text)

    def action_back(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload()
