"""A log view that follows new lines, stays put when scrolled up, and re-filters without refetching.

What a line must hold (`LogFilter`) and which lines are repeats (`LogFollower`) are the rules of
tui/api/follow_logs.py, shared with `dvic logs --follow`; this widget keeps and draws the lines.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.message import Message
from textual.widgets import RichLog

from tui import fmt
from tui.api.follow_logs import LogFilter, LogFollower
from tui.textsafe import clean

LEVEL_STYLE = {"DEBUG": "dim", "INFO": "green", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold white on red"}
BUFFER = 5000
DRAW_INTERVAL = 0.1  # seconds between two drawing rounds of live lines
DRAW_MAX = 300  # most lines drawn per round


def render_line(line: dict[str, Any], with_node: bool) -> Text:
    """One log record as Rich text: every node-supplied field is literal (never markup, no escapes)."""
    level = str(line.get("level") or "INFO")
    text = Text(no_wrap=False, end="")
    text.append(fmt.clock(line.get("ts") if isinstance(line.get("ts"), int | float) else None), style="dim")
    if with_node:
        text.append(" ")
        text.append(clean(line.get("node_name") or line.get("node") or "?", single_line=True)[:24], style="cyan")
    unit = clean(line.get("unit") or line.get("source") or "", single_line=True)
    if unit:
        text.append(" ")
        text.append(unit[:24], style="magenta")
    text.append(f" {clean(level, single_line=True)[:8]:<8} ", style=LEVEL_STYLE.get(level, ""))
    text.append(clean(line.get("msg", "")))
    return text


class LogView(RichLog):
    """Keeps the last lines in memory; shows those passing the level/source/text filters."""

    class Behind(Message):
        """Lines arrived while the view was scrolled up (count 0: back to following)."""

        def __init__(self, count: int) -> None:
            super().__init__()
            self.count = count

    def __init__(self, with_node: bool = True, **kwargs: Any) -> None:
        super().__init__(max_lines=BUFFER, wrap=True, markup=False, highlight=False, auto_scroll=False,
                         min_width=20, **kwargs)
        self.with_node = with_node
        self.lines_buffer: deque[dict[str, Any]] = deque(maxlen=BUFFER)
        self.filter = LogFilter()  # set by the screen: scope, level, source, demo, search
        self.follower = LogFollower(self.filter)
        self.behind = 0
        self._pending: list[dict[str, Any]] = []

    @property
    def min_level(self) -> str:
        return self.filter.min_level

    @property
    def at_bottom(self) -> bool:
        return self.scroll_y >= self.max_scroll_y - 1

    def on_mount(self) -> None:
        self.set_interval(DRAW_INTERVAL, self._draw)

    def add_lines(self, lines: Iterable[dict[str, Any]]) -> None:
        """Live lines: kept at once, drawn by the next `_draw` (a few times a second)."""
        fresh = self.follower.take(lines, filtered=False)
        self.lines_buffer.extend(fresh)
        self._pending.extend(x for x in fresh if self.filter.matches(x))

    def _draw(self) -> None:
        """Draws the lines that arrived; the view scrolls only if it was at the bottom.

        Drawing is what costs: when lines come faster than a person can read (every node of a big
        fleet at once), only the newest `DRAW_MAX` of a round are drawn and a marker says how
        many were not; all of them stay in the buffer and the history.
        """
        if not self._pending:
            return
        shown, self._pending = self._pending, []
        follow = self.at_bottom
        if len(shown) > DRAW_MAX:
            skipped = len(shown) - DRAW_MAX
            shown = shown[-DRAW_MAX:]
            self.write(Text(f"⋯ {skipped} lines not drawn (arriving faster than they can be read); "
                            "filter, search or scroll back for them", style="italic yellow"), scroll_end=follow)
        for line in shown:
            self.write(render_line(line, self.with_node), scroll_end=follow)
        if not follow:
            self.behind += len(shown)
            self.post_message(self.Behind(self.behind))

    def load_history(self, lines: Iterable[dict[str, Any]]) -> None:
        """Older lines (any order): merged by time with what is shown, then redrawn."""
        fresh = self.follower.take(lines, filtered=False)
        merged = sorted([*self.lines_buffer, *fresh], key=lambda x: (x.get("ts") or 0, x.get("seq") or 0))
        self.lines_buffer = deque(merged[-BUFFER:], maxlen=BUFFER)
        self.refilter()

    def replace(self, lines: Iterable[dict[str, Any]]) -> None:
        self.lines_buffer.clear()
        self.follower.reset()
        self.load_history(lines)

    def refilter(self) -> None:
        self._pending = []  # everything in the buffer is redrawn below
        self.clear()
        for line in self.lines_buffer:
            if self.filter.matches(line):
                self.write(render_line(line, self.with_node), scroll_end=False)
        self.follow()

    def follow(self) -> None:
        self.scroll_end(animate=False, immediate=True)
        if self.behind:
            self.behind = 0
            self.post_message(self.Behind(0))

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if self.behind and self.at_bottom:
            self.behind = 0
            self.post_message(self.Behind(0))

    def last_ts(self) -> float | None:
        """The newest line taken in (shown or filtered out): where the history of a gap starts."""
        return self.follower.last_ts
