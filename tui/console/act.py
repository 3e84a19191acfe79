"""How the console's Act screens show actions and runs: the action labels and the state styles.

The rules themselves (confirmation, run states, output lines) are tui/api/follow_command.py.
"""

from __future__ import annotations

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
