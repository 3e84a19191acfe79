"""The operator console: a Textual app that owns the API client, the live feed and the fleet state."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import App, SuspendNotSupported
from textual.binding import Binding
from textual.css.query import NoMatches

from tui.api.aio import AsyncClient
from tui.api.errors import ApiError
from tui.console.fleet import Fleet
from tui.console.live import LiveFeed
from tui.console.messages import AlertCounts, Connected, Disconnected, ForScreens
from tui.console.screens.base import DvicScreen
from tui.console.screens.fleet import FleetScreen

# The other screens, the command palette's entries and the shell hand-over are imported when
# first used: start-up only needs the fleet view.
if TYPE_CHECKING:
    from textual.command import Provider

    from tui.api.config import Settings
    from tui.console.host import ConsoleHost

# How often coalesced node updates reach the screens, with the screens' once-a-tick work (ages,
# re-sorts, the summary) in the same pass: one table refresh a second, of the changed cells only.
# Four passes a second were tried: more CPU (fixed costs per pass) and more keys waiting for one.
FLUSH_INTERVAL = 1.0
FLUSH_STEP = 500  # node updates applied per frame; more wait for the next frames
HOLDS_EVERY_S = 10.0  # how often the bookings holding now are read (the fleet's ⚑ marker)


class DvicApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "DVIC Demo Monitor"
    COMMANDS = App.COMMANDS | {lambda: _palette()}
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("f", "fleet", "Fleet", show=False),
        Binding("ctrl+r", "reconnect", "Reconnect", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.api = AsyncClient(settings)  # the operator API plus remote control (commands, shells...)
        self.fleet = Fleet()
        self.me: dict[str, Any] = {}
        self.feed = LiveFeed(self.api, self.post_message)
        self.connected = False
        self.down_reason = ""  # empty while the first connection is being made
        self.retry_in = 0.0
        self.down_fatal = False
        self._gc_paused = False
        self._gc_frozen = False
        self._flush_due = False  # a share of a burst of node updates waits for the next frame

    def run(self, *args: Any, **kwargs: Any) -> None:
        # Textual sizes its screen with shutil.get_terminal_size(), which prefers $COLUMNS/$LINES
        # to the terminal and keeps preferring them after a resize: an exported value (stale, or a
        # test's) laid the console out wider than the window, so what sits at the right edge
        # (notifications, the footer's palette hint) was drawn outside it. The terminal decides.
        if sys.__stdout__ is not None and sys.__stdout__.isatty():
            for name in ("COLUMNS", "LINES"):
                os.environ.pop(name, None)
        super().run(*args, **kwargs)

    async def on_mount(self) -> None:
        # Start-up builds objects that live as long as the console (the screens, 2,000 rows): the
        # garbage collector would walk them again and again for nothing (~0.1 s of start-up).
        if gc.isenabled():
            gc.disable()
            self._gc_paused = True
        await self.api.open()
        self.sub_title = self.settings.server
        await self.push_screen(FleetScreen())
        self.run_worker(self.feed.run(), name="live-feed", group="live", exclusive=True)
        self.set_interval(FLUSH_INTERVAL, self._flush_nodes)
        self.set_interval(HOLDS_EVERY_S, self.refresh_holds)

    async def on_unmount(self) -> None:
        await self.api.close()
        if self._gc_frozen:  # an app run inside a longer process (the tests) leaves nothing frozen
            gc.unfreeze()
            self._gc_frozen = False
        self._resume_gc()

    def fleet_shown(self) -> None:
        """The fleet screen has a row for every node it shows: start-up is over."""
        if self.connected and not self._gc_frozen:
            self.call_after_refresh(self._freeze_gc)

    def _freeze_gc(self) -> None:
        """Once the first fleet is on screen: what exists then is frozen, and collection resumes.

        What exists then (Textual, the screens, the rows) lives as long as the console: frozen, full
        collections no longer walk it (~180,000 objects: 70-400 ms on a busy machine, during which
        a key waits). Later garbage is collected as usual.
        """
        if not self._gc_frozen:
            gc.freeze()
            self._gc_frozen = True
        self._resume_gc()

    def _resume_gc(self) -> None:
        if self._gc_paused:
            gc.enable()
            self._gc_paused = False

    # -- live feed -----------------------------------------------------------------------------
    def _screens(self) -> list[DvicScreen]:
        # Only screens whose widgets exist: a screen being composed or torn down is skipped, and
        # picks up the current state from the app when it mounts.
        return [s for s in self.screen_stack if isinstance(s, DvicScreen) and s.is_mounted]

    def _each(self, call: Callable[[DvicScreen], object]) -> None:
        for screen in self._screens():
            try:
                call(screen)
            except NoMatches:
                pass  # the screen is being torn down; nothing left to update

    def _flush_nodes(self, tick: bool = True) -> None:
        # A burst (every node reporting at once, e.g. after a server restart) is applied a share
        # per frame, so no single pass holds the event loop (and a key) for long.
        burst = len(self.feed.pending) > FLUSH_STEP
        nodes = self.feed.take_nodes(FLUSH_STEP)
        with self.batch_update():
            if nodes:
                changed = self.fleet.update(nodes)
                self._each(lambda s: s.live_nodes(changed, []))
            if tick:
                self._each(lambda s: s.live_tick())
        if burst and not self._flush_due:
            self._flush_due = True
            self.call_after_refresh(self._flush_more)

    def _flush_more(self) -> None:
        self._flush_due = False
        self._flush_nodes(tick=False)

    @on(Connected)
    def _connected(self, msg: Connected) -> None:
        self.connected, self.down_reason, self.down_fatal = True, "", False
        self.me = msg.me
        self.fleet.set_server_alerts(msg.alerts)
        nodes, gone = self.fleet.replace(msg.nodes)
        self._each(lambda s: s.live_nodes(nodes, gone))
        self._each(lambda s: s.live_connection(True))
        self.call_later(self.update_subscription)
        self.refresh_holds()

    @on(Disconnected)
    def _disconnected(self, msg: Disconnected) -> None:
        self.connected = False
        self.down_reason, self.retry_in, self.down_fatal = msg.reason, msg.retry_in, msg.fatal
        self._resume_gc()  # no fleet to show yet: collect as usual while waiting
        self._each(lambda s: s.live_connection(False, msg.reason, msg.retry_in, msg.fatal))

    @on(AlertCounts)
    def _alert_counts(self, msg: AlertCounts) -> None:
        self.fleet.set_server_alerts(msg.counts)
        self._each(lambda s: s.live_alerts())

    @on(ForScreens)
    def _for_screens(self, msg: ForScreens) -> None:
        self._each(msg.deliver)

    async def update_subscription(self) -> None:
        """Subscribes to the union of the log tails the open screens want."""
        wanted: set[str] = set()
        for screen in self._screens():
            wanted.update(screen.log_subscription())
        await self.feed.subscribe(["*"] if "*" in wanted else sorted(wanted))

    # -- navigation ----------------------------------------------------------------------------
    def _push(self, screen: DvicScreen) -> None:
        def popped(_: object = None) -> None:
            self.call_later(self.update_subscription)

        self.push_screen(screen, popped)
        self.call_later(self.update_subscription)

    def open_node(self, node_id: str, tab: str = "overview") -> None:
        from tui.console.screens.node import NodeScreen

        if node_id in self.fleet.nodes:
            self._push(NodeScreen(node_id, tab))

    def open_logs(self, node_id: str | None, group: str | None = None, demo: str | None = None) -> None:
        from tui.console.screens.logs import LogsScreen

        self._push(LogsScreen(node_id, group=group, demo=demo))

    def open_admin(self) -> None:
        from tui.console.screens.admin import AdminScreen

        self._push(AdminScreen())

    def open_add_node(self) -> None:
        from tui.console.screens.add_node import AddNodeScreen

        self._push(AddNodeScreen())

    def open_alerts(self, tab: str = "alerts") -> None:
        from tui.console.screens.alerts import AlertsScreen

        self._push(AlertsScreen(tab))

    def open_demos(self) -> None:
        from tui.console.screens.demos import DemosScreen

        self._push(DemosScreen())

    def open_deployment(self, deployment_id: str, deployment: dict[str, Any] | None = None) -> None:
        from tui.console.screens.demos import DeploymentScreen

        self._push(DeploymentScreen(deployment_id, deployment))

    def open_today(self) -> None:
        from tui.console.screens.today import TodayScreen

        self._push(TodayScreen())

    def refresh_holds(self) -> None:
        """Reads the bookings holding now; the screens redraw the nodes whose holder changed."""
        if not self.connected:
            return

        async def read() -> None:
            from tui.api import calls

            try:
                bookings = await self.api.send(calls.bookings(at="now"))
            except ApiError:
                return  # a server without the calendar, or a hiccup: the next read tries again
            changed = self.fleet.set_holds(bookings)
            if changed:
                self._each(lambda s: s.live_holds(changed))

        self.run_worker(read(), group="holds", exclusive=True)

    def book_machines(self, node_ids: list[str]) -> None:
        """The booking form for these nodes (the fleet's `B`)."""
        from tui.console.screens.today import book_machines

        screen = self.screen
        if not isinstance(screen, DvicScreen):
            return
        names = [str(self.fleet.nodes.get(n, {}).get("name", n)) for n in node_ids]

        async def run() -> None:
            if await book_machines(screen, names) is not None:
                self.refresh_holds()

        self.run_worker(run(), group="actions")

    def show_fleet(self) -> None:
        while len(self.screen_stack) > 2 or not isinstance(self.screen, FleetScreen):
            if len(self.screen_stack) <= 1:
                break
            self.pop_screen()
        self.call_later(self.update_subscription)

    def fleet_screen(self) -> FleetScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, FleetScreen)), None)

    def filter_fleet(self, state: str | None = None, group: str | None = None) -> None:
        self.show_fleet()
        fleet = self.fleet_screen()
        if fleet is not None:
            if state is not None:
                fleet.filter.state = state
            if group is not None:
                fleet.filter.group = group
            fleet.sync_all()

    def toggle_maintenance(self, node_id: str) -> None:
        node = self.fleet.nodes.get(node_id)
        if node is None:
            return
        on_now = node.get("state") != "maintenance"

        async def call() -> None:
            try:
                await self.api.set_maintenance(node_id, on_now)
            except ApiError as exc:
                self.notify(f"maintenance: {exc.message} ({exc.code})", severity="error", markup=False)
                return
            name = node.get("name", node_id)
            self.notify(f"{name}: maintenance {'on' if on_now else 'off'}", markup=False)

        self.run_worker(call(), group="actions")

    # -- act -----------------------------------------------------------------------------------
    def _names(self) -> dict[str, str]:
        return {nid: str(n.get("name", nid)) for nid, n in self.fleet.nodes.items()}

    def open_run(self, targets: dict[str, Any] | None = None, command_id: str | None = None) -> None:
        """The run screen on `targets` (`{"nodes": [...]}`, `{"group": G}`, `{"all": True}`) or a past command."""
        from tui.console.screens.run import RunScreen

        self._push(RunScreen(targets, command_id))

    def open_actions(self, node_id: str | None = None, highlight: list[str] | None = None) -> None:
        from tui.console.screens.actions import ActionsScreen

        self._push(ActionsScreen(node_id, highlight))

    def open_shell(self, node_id: str) -> None:
        from tui.console import handover

        self._hand_over("shell", lambda: handover.shell(self, node_id),
                        "this terminal cannot hand over to a shell (use `dvic shell` in a terminal)")

    def replay_session(self, session_id: str) -> None:
        from tui.console import handover

        self._hand_over("replay", lambda: handover.replay(self, session_id),
                        "this terminal cannot replay (use `dvic replay` in a terminal)")

    def _hand_over(self, what: str, session: Callable[[], Awaitable[str]], unsupported: str) -> None:
        """Gives the terminal to `session` (tui/console/handover.py); says how it ended, or why it could not."""

        async def run() -> None:
            try:
                said = await session()
            except SuspendNotSupported:
                self.notify(unsupported, severity="error")
                return
            except ApiError as exc:
                self.notify(f"{what}: {exc.message}", severity="error", markup=False)
                return
            self.notify(said, markup=False)

        self.run_worker(run(), group="shell", exclusive=True)

    def request_action(self, node_ids: list[str], action: str, demo: str | None = None) -> None:
        """Asks for a tracked action on each node (confirmed unless it only starts a demo on one node)."""
        from tui.api.follow_command import describe_targets
        from tui.console.act import ACTIONS
        from tui.console.screens.dialogs import ConfirmDialog

        if not node_ids or action not in ACTIONS:
            return

        async def run() -> None:
            where = describe_targets({"nodes": node_ids}, self._names())
            what = ACTIONS[action] + (f" {demo}" if demo else "")
            if action != "start_demo" or len(node_ids) > 1:
                question = f"{what} on {where}?"
                if action == "reboot":
                    question += "\n\nRunning demos stop until the machine is back."
                if not await self.push_screen_wait(ConfirmDialog(question, ACTIONS[action])):
                    return
            ids: list[str] = []
            for nid in node_ids:
                try:
                    doc = await self.api.request_action(nid, action, demo=demo)
                except ApiError as exc:
                    name = self._names().get(nid, nid)
                    self.notify(f"{what} on {name}: {exc.message} ({exc.code})", severity="error", markup=False)
                    continue
                ids.append(str(doc.get("id")))
            if ids:
                self.open_actions(node_ids[0] if len(node_ids) == 1 else None, ids)

        self.run_worker(run(), group="actions")

    def update_daemon(self, targets: dict[str, Any]) -> None:
        """Asks the server to update the targets' daemon to its release, after a confirmation."""
        from tui.api.follow_command import describe_targets
        from tui.console.screens.dialogs import ConfirmDialog


        async def run() -> None:
            try:
                release = await self.api.release()
            except ApiError as exc:
                self.notify(f"update: {exc.message} ({exc.code})", severity="error", markup=False)
                return
            version = str(release.get("version") or "?")
            where = describe_targets(targets, self._names())
            ids = targets.get("nodes") or [nid for nid, n in self.fleet.nodes.items()
                                            if targets.get("all") or n.get("group") == targets.get("group")]
            current = sorted({str(self.fleet.nodes.get(n, {}).get("daemon_version") or "?") for n in ids})
            question = (f"Update the daemon on {where} to release {version}?\n\n"
                        f"Running now: {', '.join(current[:6]) or '-'}. Each daemon restarts itself.")
            if not await self.push_screen_wait(ConfirmDialog(question, "Update")):
                return
            try:
                doc = await self.api.update(targets)
            except ApiError as exc:
                self.notify(f"update: {exc.message} ({exc.code})", severity="error", markup=False)
                return
            actions = [a for a in doc.get("actions") or [] if isinstance(a, dict)]
            self.notify(f"update to {version} requested on {len(actions)} node(s)", markup=False)
            single = targets.get("nodes") if len(targets.get("nodes") or []) == 1 else None
            self.open_actions(single[0] if single else None, [str(a.get("id")) for a in actions])

        self.run_worker(run(), group="actions")

    # -- actions -------------------------------------------------------------------------------
    def action_help(self) -> None:
        from tui.console.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def action_fleet(self) -> None:
        self.show_fleet()

    def action_reconnect(self) -> None:
        self.feed.retry_now()


def _palette() -> type[Provider]:
    from tui.console.palette import DvicCommands

    return DvicCommands


if TYPE_CHECKING:
    def _host(app: DvicApp) -> ConsoleHost:
        return app  # the type checker's proof that the app offers what its screens use (tui/console/host.py)
