"""Where the remote-control client's names used to live: kept for the modules that still import them
from here until they switch (issue 13): the remote-control endpoints are methods of tui/api/aio.py's
`AsyncClient`, `command_body` is tui/api/calls.py's, `StreamCut` is `tui.api.errors.StreamClosed`.
"""

from __future__ import annotations

from tui.api.aio import AsyncClient
from tui.api.calls import command_body
from tui.api.errors import StreamClosed

__all__ = ["RemoteClient", "StreamCut", "command_body"]

RemoteClient = AsyncClient
StreamCut = StreamClosed
