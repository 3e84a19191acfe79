"""How the console's Act screens show actions and runs: keys, action labels and state styles.

The rules themselves (confirmation, run states, output lines) are tui/api/follow_command.py.
"""

from __future__ import annotations

from textual.binding import Binding

# The keys that act on the node(s) a screen is about (fleet: the marked nodes or the cursor's).
ACT_BINDINGS = [
    Binding("x", "run", "Run"),
    Binding("h", "shell", "Shell"),
    Binding("b", "reboot", "Reboot", show=False),
    Binding("D", "demo_action", "Demo action", show=False),
    Binding("u", "update", "Update daemon", show=False),
]

# Tracked actions the console can request (docs/protocol.md 4, POST /nodes/{node}/actions).
ACTIONS: dict[str, str] = {
    "reboot": "Reboot",
    "restart_demo": "Restart demo",
    "stop_demo": "Stop demo",
    "start_demo": "Start demo",
}
DEMO_ACTIONS = ("restart_demo", "stop_demo", "start_demo")
ACTION_STYLE = {"requested": "cyan", "in_progress": "yellow", "done": "green", "failed": "bold red",
                "lost": "bold red", "downloading": "yellow", "verified": "yellow", "restarting": "yellow"}
RUN_STYLE = {"pending": "cyan", "running": "yellow", "exited": "green", "timeout": "bold red",
             "cancelled": "magenta", "failed": "bold red", "duplicate": "dim", "offline": "dim", "lost": "bold red",
             "refused": "bold red"}
