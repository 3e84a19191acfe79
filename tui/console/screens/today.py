"""The Today view: per group, the day's timeline (opening hours in the group's zone, runbook moments
and their outcome, bookings and who holds what); `enter` opens a firing's per-node states, `b` books
machines, `c` cancels the selected booking.

The calendar publishes no stream frames, so the view reads the API every few seconds (more often
while a firing runs) and the timeline table changes only the rows that read differently.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui import fmt
from tui.api import calls
from tui.api.errors import ApiError
from tui.console.screens.alerts import refusal
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ConfirmDialog, Field, FormDialog
from tui.console.today import Entry, Json, timeline
from tui.console.widgets.tables import data_table
from tui.console.widgets.timeline_table import STATE_STYLE, TimelineTable
from tui.textsafe import clean, literal

REFRESH_S = 5.0  # how often the view reads the calendar
BUSY_REFRESH_S = 2.0  # while a firing of the day is pending or running
FIRINGS_READ = 300  # newest firings read each time (today's are the newest)
FIRING_COLUMNS = (("node", "Node", 18), ("state", "State", 9), ("step", "Step", 4), ("updated", "When", 5),
                  ("message", "Message", None))
FIRING_STYLE = {"ok": "green", "failed": "bold red", "offline": "dim", "held": "magenta", "waiting": "cyan",
                "running": "yellow", "pending": "cyan"}


def _names(text: str) -> list[str]:
    return [n for n in text.replace(",", " ").split() if n]


async def book_machines(screen: DvicScreen, nodes: list[str] | None = None, group: str = "") -> Json | None:
    """The booking form (node names, or a group, kind and count; from, to, note); returns the booking
    the server made, or None (cancelled). A refusal (409 naming the booking in the way, 400 saying
    what to change, 403) stays in the dialog with what was typed until Escape."""
    api = screen.dvic.api
    made: list[Json] = []

    async def send(values: dict[str, str]) -> str | None:
        fields: Json = {"from": values["from"] or None, "to": values["to"], "note": values["note"]}
        if values["nodes"]:
            fields["nodes"] = _names(values["nodes"])
        else:
            fields["group"] = values["group"] or None
            fields["kind"] = values["kind"] or None
            count = values["count"] or "1"
            if not count.isdigit():
                return f"count: how many machines, 1 or more (not {count!r})"
            fields["count"] = int(count)
        try:
            made.append(await api.send(calls.book(fields)))
        except ApiError as exc:
            return refusal(exc)
        return None

    form = [Field("nodes", "Nodes", "names, e.g. pi-1 pi-2 (or leave empty: group + count)", " ".join(nodes or [])),
            Field("group", "Group", "with Count: the server picks free machines", group),
            Field("kind", "Kind", "desktop, raspberry, other (optional)"),
            Field("count", "Count", "how many (with Group)"),
            Field("from", "From", "now, +30m, 2027-01-10T09:00 (group's zone)", "now"),
            Field("to", "To", "+1h, +2h, +1d, 2027-01-10T18:00", "+1h"),
            Field("note", "Note", "what for")]
    await screen.app.push_screen_wait(FormDialog("Book machines: nodes by name, or a group and a count", form, send))
    if not made:
        return None
    booking = made[0]
    names = ", ".join(clean(n, single_line=True) for n in booking.get("node_names") or [])
    until = time.strftime("%H:%M", time.localtime(float(booking["ends_at"])))
    screen.notify(f"booked #{booking.get('id')}: {names} until {until}", markup=False)
    return booking


async def cancel_booking(screen: DvicScreen, booking: Json) -> bool:
    """Asks, then cancels `booking`; says what the server refused."""
    names = ", ".join(clean(n, single_line=True) for n in booking.get("node_names") or [])
    question = f"Cancel booking #{booking['id']} of {clean(booking.get('holder'), single_line=True)} ({names})?"
    if not await screen.app.push_screen_wait(ConfirmDialog(question, "Cancel it")):
        return False
    try:
        await screen.dvic.api.send(calls.cancel_booking(int(booking["id"])))
    except ApiError as exc:
        screen.notify(f"booking #{booking['id']}: {refusal(exc)}", severity="error", markup=False)
        return False
    screen.notify(f"booking #{booking['id']} cancelled", markup=False)
    return True


class FiringScreen(ModalScreen[None]):
    """One firing and the state of each node, read again every couple of seconds until it ends."""

    BINDINGS = [Binding("escape,enter", "close", "Close"), Binding("r", "reload", "Reload")]

    def __init__(self, firing_id: int) -> None:
        super().__init__(classes="dialog")
        self.firing_id = firing_id
        self.firing: Json | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box firing-box"):
            yield Static(id="firing-title", classes="dialog-title")
            yield data_table("firing-nodes", FIRING_COLUMNS)
            yield Static("Escape closes", classes="dim")

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(BUSY_REFRESH_S, self._again)

    def _again(self) -> None:
        if self.firing is None or self.firing.get("state") in ("pending", "running"):
            self.reload()

    @work(exclusive=True, group="firing-load")
    async def reload(self) -> None:
        api = self.app.api  # type: ignore[attr-defined]  # DvicApp
        try:
            firing = await api.send(calls.firing(self.firing_id))
        except ApiError as exc:
            self.query_one("#firing-title", Static).update(literal(refusal(exc), style="bold red"))
            return
        self.firing = firing
        self._show(firing)

    def _show(self, firing: Json) -> None:
        state = str(firing.get("state"))
        title = Text(f"#{firing.get('id')} ", style="bold")
        title.append_text(literal(f"{firing.get('grp')}/{firing.get('runbook')}", style="bold"))
        title.append(f"  {firing.get('trigger')}", style="dim")
        if firing.get("operator"):
            title.append_text(literal(f" by {firing['operator']}", style="dim"))
        title.append(f"  due {fmt.age(firing.get('due_at'))} ago  ", style="dim")
        title.append(state, style=STATE_STYLE.get(state, ""))
        if firing.get("message"):
            title.append_text(literal(f"  {firing['message']}", style="dim"))
        self.query_one("#firing-title", Static).update(title)
        table = self.query_one(DataTable)
        table.clear()
        for n in firing.get("nodes") or []:
            node_state = str(n.get("state"))
            table.add_row(literal(n.get("node_name"), style="bold"), Text(node_state, style=FIRING_STYLE.get(node_state, "")),
                          Text(str(n.get("step", "")), style="dim"), Text(fmt.age(n.get("updated_at")), style="dim"),
                          literal(n.get("message") or ""), key=str(n.get("node_id")))
        if not table.row_count:
            table.add_row(Text("-", style="dim"), Text(""), Text(""), Text(""),
                          Text("no node state yet" if state in ("pending", "running") else "no node was acted on",
                               style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)

    def action_reload(self) -> None:
        self.reload()


class TodayScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("enter", "open", "Firing"),
        Binding("b", "book", "Book…"),
        Binding("c", "cancel_booking", "Cancel booking"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="today")
        self.entries: list[Entry] = []
        self.loaded_at: float | None = None
        self._reading = False
        self._detail_shown: str | None = None

    def body(self) -> ComposeResult:
        yield Static(id="today-title")
        yield TimelineTable(id="timeline")
        yield Static(id="today-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self._title()
        self.query_one(TimelineTable).focus()
        self.reload()

    # -- reading -------------------------------------------------------------------------------------
    async def _read(self) -> list[Entry]:
        api = self.dvic.api
        calendar = await api.send(calls.calendar())
        runbooks = await api.send(calls.runbooks())
        # A group with runbooks but no hours: its zone (the server's default) for its fixed moments.
        for group in sorted({str(r.get("group")) for r in runbooks} - {str(g.get("group")) for g in calendar}):
            calendar += await api.send(calls.calendar(group=group))
        firings = await api.send(calls.firings(limit=FIRINGS_READ))
        bookings = await api.send(calls.bookings())
        return timeline(calendar, runbooks, firings, bookings, self.dvic.fleet.nodes, time.time(),
                        str(self.dvic.me.get("name") or ""))

    @work(exclusive=True, group="today-load")
    async def reload(self) -> None:
        self._reading = True
        try:
            entries = await self._read()
        except ApiError as exc:
            self.notify(f"today: {refusal(exc)}", severity="error", markup=False)
            return
        finally:
            self._reading = False
            self.loaded_at = time.time()
        self.entries = entries
        self.query_one(TimelineTable).fill(entries)
        self._title()
        self._detail()

    def live_tick(self) -> None:
        if self.loaded_at is None or self._reading:
            return
        busy = any(e.state in ("pending", "running") and e.firing_id is not None for e in self.entries)
        if time.time() - self.loaded_at >= (BUSY_REFRESH_S if busy else REFRESH_S):
            self.reload()

    def live_connection(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        super().live_connection(connected, reason, retry_in, fatal)
        if connected and self.is_mounted and self.loaded_at is not None:
            self.reload()

    # -- rendering -------------------------------------------------------------------------------
    def _title(self) -> None:
        text = Text("Today  ", style="bold")
        if self.loaded_at is None:
            text.append("reading…", style="dim")
            self.query_one("#today-title", Static).update(text)
            return
        groups = [e for e in self.entries if e.kind == "group"]
        opened = sum(1 for e in groups if e.state == "open")
        holding = {e.booking["id"] for e in self.entries if e.booking is not None and e.state == "holding"}
        firings = [e for e in self.entries if e.kind in ("moment", "firing")]
        done = sum(1 for e in firings if e.state == "done")
        failed = sum(1 for e in firings if e.state in ("failed", "partial", "missed", "interrupted"))
        text.append(f"{len(groups)} group{'s' if len(groups) != 1 else ''}, {opened} open", style="")
        text.append(" │ ", style="dim")
        text.append(f"{len(firings)} runbook moments: {done} done", style="green" if done else "dim")
        if failed:
            text.append(f", {failed} not ok", style="bold red")
        text.append(" │ ", style="dim")
        text.append(f"{len(holding)} booking{'s' if len(holding) != 1 else ''} holding",
                    style="magenta" if holding else "dim")
        self.query_one("#today-title", Static).update(text)

    def _detail(self) -> None:
        entry = self.query_one(TimelineTable).selected()
        if entry is None:
            text = Text("Nothing today: no opening hours, runbooks or bookings yet (docs/calendar.md)."
                        if self.loaded_at is not None else "", style="dim")
        else:
            text = Text(f"{entry.time}  ", style="bold")
            text.append_text(literal(f"{entry.what}  {entry.state}  {entry.detail}"))
            if entry.firing_id is not None:
                text.append("  (enter: per node)", style="dim")
            elif entry.booking is not None:
                text.append("  (c: cancel)", style="dim")
        if text.plain != self._detail_shown:
            self._detail_shown = text.plain
            self.query_one("#today-detail", Static).update(text)

    @on(DataTable.RowHighlighted, "#timeline")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    @on(DataTable.RowSelected, "#timeline")
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    # -- actions ---------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload()

    def action_open(self) -> None:
        entry = self.query_one(TimelineTable).selected()
        if entry is None or entry.firing_id is None:
            if entry is not None and entry.kind == "moment":
                self.notify("this moment has not fired yet", markup=False)
            return
        self.app.push_screen(FiringScreen(entry.firing_id))

    @work(group="today-act")
    async def action_book(self) -> None:
        entry = self.query_one(TimelineTable).selected()
        if await book_machines(self, group=entry.group if entry is not None else "") is not None:
            self.reload()
            self.dvic.refresh_holds()

    @work(group="today-act")
    async def action_cancel_booking(self) -> None:
        entry = self.query_one(TimelineTable).selected()
        if entry is None or entry.booking is None:
            self.notify("pick a booking (⚑) first", severity="warning", markup=False)
            return
        if await cancel_booking(self, entry.booking):
            self.reload()
            self.dvic.refresh_holds()

