"""`dvic console --web`: serves the console to browsers with textual-serve (one process per session)."""

from __future__ import annotations

import os
import shlex
import sys

from tui.config import Settings


def serve(settings: Settings, host: str, port: int) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        print("dvic: --web needs textual-serve (pip install 'dvic-demo-monitor[web]')", file=sys.stderr)
        return 2
    # Each browser session starts `python -m tui console`; the settings travel in the environment
    # (inherited by the session processes), never on a command line where `ps` would show the token.
    os.environ["DVIC_SERVER"] = settings.server
    if settings.token:
        os.environ["DVIC_TOKEN"] = settings.token
    if settings.ca:
        os.environ["DVIC_CA"] = os.path.abspath(settings.ca)
    command = f"{shlex.quote(sys.executable)} -m tui console"
    print(f"dvic: console served at http://{host}:{port}/ (anyone who can reach it acts with your token)")
    Server(command, host=host, port=port, title="DVIC Demo Monitor").serve()
    return 0
