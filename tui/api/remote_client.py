"""Where the remote-control client's names used to live: kept for the modules that still import them
from here until they switch (issue 13): the remote-control endpoints are methods of tui/api/aio.py's
`AsyncClient`, `command_body` is tui/api/calls.py's, `StreamCut` is `tui.api.errors.StreamClosed`.
"""

from __future__ import annotations

from tui.api.calls import command_body
from tui.api.errors import StreamClosed

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from tui.api.aio import AsyncClient as RemoteClient

__all__ = ["RemoteClient", "StreamCut", "command_body"]

StreamCut = StreamClosed

if not TYPE_CHECKING:  # the checker reads the import above

    def __getattr__(name: str) -> object:
        # The aiohttp transport's module only when asked for: `dvic run` imports this one for `command_body`.
        if name == "RemoteClient":
            from tui.api import aio

            return aio.AsyncClient
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
