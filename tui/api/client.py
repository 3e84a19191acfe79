"""Where the async client's names used to live: kept for the modules that still import them from here
until they switch (issue 13): `AsyncClient` and `Stream` are tui/api/aio.py's, the errors
tui/api/errors.py's, the helpers tui/api/core.py's. Nothing new imports this module.
"""

from __future__ import annotations

from tui.api.aio import AsyncClient, Stream
from tui.api.core import Json, items, params, seg
from tui.api.errors import ApiError, Unreachable

__all__ = ["ApiClient", "ApiError", "Json", "Stream", "Unreachable", "_list", "_params", "_seg"]

ApiClient = AsyncClient
_list = items
_params = params
_seg = seg
