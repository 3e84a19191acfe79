"""Where `dvic run`'s blocking client used to live: kept for the modules that still import it from
here until they switch (issue 13). It is tui/api/sync.py's `SyncClient`; `WebSocketClosed` is
`tui.api.errors.StreamClosed`.
"""

from __future__ import annotations

from tui.api.core import split_url
from tui.api.errors import StreamClosed
from tui.api.sync import WS_GUID, SyncClient, websocket_accept

__all__ = ["WS_GUID", "LeanClient", "WebSocketClosed", "split_url", "websocket_accept"]

LeanClient = SyncClient
WebSocketClosed = StreamClosed
