"""Where the async client's names used to live: kept for the modules that still import them from here
until they switch (issue 13): `AsyncClient` and `Stream` are tui/api/aio.py's, the errors
tui/api/errors.py's, the helpers tui/api/core.py's. Nothing new imports this module.
"""

from __future__ import annotations

from tui.api.core import Json, items, params, seg
from tui.api.errors import ApiError, Unreachable

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from tui.api.aio import AsyncClient as ApiClient
    from tui.api.aio import Stream

__all__ = ["ApiClient", "ApiError", "Json", "Stream", "Unreachable", "_list", "_params", "_seg"]

_list = items
_params = params
_seg = seg

if not TYPE_CHECKING:  # the checker reads the imports above

    def __getattr__(name: str) -> object:
        # The aiohttp transport's module only when asked for: `dvic run` imports this one for the errors.
        if name in ("ApiClient", "Stream"):
            from tui.api import aio

            return aio.AsyncClient if name == "ApiClient" else aio.Stream
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
