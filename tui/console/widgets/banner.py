"""The connection banner: says plainly when the console lost the server and when it retries."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

from tui.textsafe import literal


class ConnectionBanner(Static):
    """Hidden while connected; a red line with the reason and the retry countdown otherwise."""

    DEFAULT_CSS = """
    ConnectionBanner { display: none; height: auto; background: $error; color: $text; padding: 0 1; }
    ConnectionBanner.-down { display: block; }
    """

    def __init__(self) -> None:
        super().__init__("", id="banner")
        self._reason = ""
        self._retry_at = 0.0
        self._fatal = False

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)

    def set_state(self, connected: bool, reason: str = "", retry_in: float = 0.0, fatal: bool = False) -> None:
        self.set_class(not connected, "-down")
        self._reason, self._fatal = reason, fatal
        self._retry_at = time.monotonic() + retry_in
        self._tick()

    def _tick(self) -> None:
        if not self.has_class("-down"):
            return
        left = max(0, int(self._retry_at - time.monotonic() + 0.999))
        if not self._reason:
            self.update(Text("⋯ Connecting to the server…", style="bold"))
            return
        head = "⚠ Not authorized" if self._fatal else "⚠ Connection to the server lost"
        text = Text(f"{head}: ", style="bold")
        text.append_text(literal(self._reason))  # the reason may quote server text: keep it literal
        text.append(f" — retrying in {left}s (ctrl+r: now). Data shown may be stale.")
        self.update(text)
