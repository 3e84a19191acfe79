"""Both transports of the client library (tui/api/aio.py on aiohttp, tui/api/sync.py on the standard
library) against the real server: the same calls give the same answers, the same refusals the same
errors, and both follow the one TLS policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.server import CentralServer
from tui.api import calls
from tui.api.aio import AsyncClient
from tui.api.config import Settings
from tui.api.core import Request
from tui.api.errors import ApiError, ConfigError, Unreachable
from tui.api.sync import SyncClient


def _settings(server: CentralServer, token: str | None = None, ca: Path | None = None) -> Settings:
    return Settings(server.url, token or server.admin_token, str(ca or server.ca_path))


async def _both(settings: Settings, req: Request[object]) -> tuple[object, object]:
    """What each transport makes of `req`: its answer, or the ApiError it raised."""
    def sync_send() -> object:
        try:
            with SyncClient(settings) as api:
                return api.send(req)
        except ApiError as exc:
            return exc

    try:
        async with AsyncClient(settings) as api:
            by_aio: object = await api.send(req)
    except ApiError as exc:
        by_aio = exc
    return by_aio, await asyncio.to_thread(sync_send)


def _same(pair: tuple[object, object]) -> object:
    by_aio, by_sync = pair
    if isinstance(by_aio, ApiError):
        assert isinstance(by_sync, ApiError) and type(by_aio) is type(by_sync), (by_aio, by_sync)
        assert (by_aio.status, by_aio.code, by_aio.message) == (by_sync.status, by_sync.code, by_sync.message)
    else:
        assert by_aio == by_sync
    return by_aio


async def test_the_same_calls_give_the_same_answers_and_refusals(central_server: CentralServer) -> None:
    settings = _settings(central_server)
    central_server.enroll("pi-both", group="hall-c")
    assert _same(await _both(settings, calls.me()))["name"] == "admin"  # type: ignore[index]
    listed = _same(await _both(settings, calls.nodes(group="hall-c")))
    assert [n["name"] for n in listed] == ["pi-both"]  # type: ignore[attr-defined]
    missing = _same(await _both(settings, calls.node("no such/node")))
    assert isinstance(missing, ApiError) and (missing.status, missing.code) == (404, "no_such_node")
    refused = _same(await _both(_settings(central_server, token="dvo_not-a-token"), calls.me()))
    assert isinstance(refused, ApiError) and (refused.status, refused.code) == (401, "bad_token")


async def test_a_refused_websocket_reads_the_same_on_both_transports(central_server: CentralServer) -> None:
    """aiohttp drops a refused upgrade's body (the X-Dvic-Error header says it); the stdlib one reads the body."""
    settings = _settings(central_server, token="dvo_not-a-token")
    async with AsyncClient(settings) as api:
        with pytest.raises(ApiError) as by_aio:
            await api.websocket(calls.stream())

    def sync_open() -> None:
        with SyncClient(settings) as api:
            api.websocket(calls.stream())

    with pytest.raises(ApiError) as by_sync:
        await asyncio.to_thread(sync_open)
    for refused in (by_aio.value, by_sync.value):
        assert (refused.status, refused.code, refused.message) == (401, "bad_token", "unknown or revoked token")


@pytest.mark.parametrize("client", [AsyncClient, SyncClient])
def test_https_without_a_ca_to_pin_is_refused_before_connecting(client: type) -> None:
    """No fallback to the system's trust store (both transports used to take it without a CA)."""
    with pytest.raises(ConfigError) as refused:
        client(Settings("https://127.0.0.1:9", "t0k", None))
    assert refused.value.code == "no_ca" and "no CA to pin" in str(refused.value)
    with pytest.raises(ConfigError) as clear:
        client(Settings("http://192.0.2.1:8080", "t0k", None))
    assert clear.value.code == "insecure_url"


async def test_another_ca_is_not_trusted_by_either_transport(central_server: CentralServer, tmp_path: Path) -> None:
    other = CentralServer(tmp_path / "other").start()
    try:
        by_aio, by_sync = await _both(_settings(central_server, ca=other.ca_path), calls.me())
    finally:
        other.stop()
    for refused in (by_aio, by_sync):
        assert isinstance(refused, Unreachable) and refused.code == "tls", refused
        assert "failed against the pinned CA" in refused.message
