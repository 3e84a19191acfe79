"""`?` help: every key of the screen underneath and of the whole console."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

ABOUT = ("DVIC Demo Monitor — keys below; ctrl+p opens the command palette (every screen and node). "
         "Node-supplied text is always shown literally.")


def key_table(title: str, bindings: list[Binding]) -> Table:
    """The keys and what they do; long lists in two column pairs so the help fits 80x24."""
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for b in bindings:
        if b.key in seen or not b.description:
            continue
        seen.add(b.key)
        keys = b.key_display or ", ".join(
            k.replace("slash", "/").replace("question_mark", "?") for k in b.key.split(","))
        rows.append((keys, b.description))
    pairs = 2 if len(rows) > 8 else 1
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    for _ in range(pairs):
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
    per_column = -(-len(rows) // pairs)
    for i in range(per_column):
        cells: list[str] = []
        for p in range(pairs):
            j = i + p * per_column
            cells += list(rows[j]) if j < len(rows) else ["", ""]
        table.add_row(*cells)
    return table


def _bindings(obj: object) -> list[Binding]:
    out = []
    for b in getattr(obj, "BINDINGS", []):
        if isinstance(b, Binding):
            out.append(b)
        elif isinstance(b, tuple):
            out.append(Binding(*b))
    return out


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, under: Screen[object]) -> None:
        super().__init__(classes="dialog")
        self.under = under

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog-box help-box"):
            yield Static(Text(ABOUT, style="italic"))
            yield Static(key_table(f"This screen ({type(self.under).__name__.removesuffix('Screen')})",
                                   _bindings(self.under)))
            yield Static(key_table("Everywhere", _bindings(self.app)))

    def action_close(self) -> None:
        self.dismiss(None)
