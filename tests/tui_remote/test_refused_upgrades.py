"""A websocket the server refuses says the server's code and reason, not aiohttp's "Invalid response status"."""

from __future__ import annotations

import pytest

from tests.support.server import CentralServer
from tui.api.aio import AsyncClient
from tui.api.config import Settings
from tui.api.errors import ApiError


async def test_a_refused_stream_carries_the_servers_code_and_message(central_server: CentralServer):
    settings = Settings(server=central_server.url, token="dvo_not-a-token", ca=str(central_server.ca_path))
    async with AsyncClient(settings) as api:
        with pytest.raises(ApiError) as refused:
            await api.stream()
    assert (refused.value.status, refused.value.code) == (401, "bad_token")
    assert refused.value.message == "unknown or revoked token"
