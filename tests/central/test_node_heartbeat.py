"""Node websocket heartbeats (central/heartbeats.py: one sweep for every node instead of aiohttp's
two timers per node): the server pings a node it heard nothing from for NODE_HEARTBEAT_S, counts
the node's pongs (any frame) as life, and drops a node that does not answer within half that,
with aiohttp's reason. Real server subprocess, nodes over mutual TLS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from dvic_core.constants import NODE_HEARTBEAT_S
from tests.support.fake_node import client_ssl
from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

STEP = NODE_HEARTBEAT_S / 4  # the sweep's step


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CentralServer]:
    # Presence's own sweep (offline after 15 s of silence by default) would race the heartbeat's
    # drop (15 s, up to two steps later): here only the heartbeat ends a silent node.
    with CentralServer(tmp_path / "central", offline_after=120) as running:
        yield running


async def test_a_node_that_stops_answering_pings_is_dropped_with_the_reason(server: CentralServer):
    bundle = server.enroll("mute")
    async with greeted(bundle):  # never reads again: the server's pings go unanswered
        quiet_since = time.monotonic()
        await async_wait_for(lambda: server.node("mute")["state"] == "offline",
                             timeout=NODE_HEARTBEAT_S * 3, what="the unanswering node offline")
        dropped_after = time.monotonic() - quiet_since
    # aiohttp's timers: ping after NODE_HEARTBEAT_S of silence, drop after half that again; the
    # sweep is up to two steps later (and the machine may be busy).
    assert NODE_HEARTBEAT_S * 1.5 - 1 <= dropped_after <= NODE_HEARTBEAT_S * 1.5 + 2 * STEP + 5
    _, body = server.api("GET", "/api/v1/events?node=mute&kind=state")
    reasons = [event["data"].get("reason", "") for event in body["events"]]
    assert f"websocket error: No PONG received after {NODE_HEARTBEAT_S / 2} seconds" in reasons, reasons


async def test_a_quiet_node_that_answers_pings_stays_connected(server: CentralServer):
    bundle = server.enroll("quiet")
    async with aiohttp.ClientSession() as http:
        # autoping off: the test sees each ping, and answers it itself
        ws = await http.ws_connect(bundle["ws_url"], ssl=client_ssl(bundle), autoping=False, heartbeat=None)
        await ws.send_json({"type": "hello", "protocol": 1, "daemon_version": "test-0",
                            "facts": {"hostname": "quiet"}})
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        pings = 0
        deadline = time.monotonic() + NODE_HEARTBEAT_S * 5
        while pings < 3:  # three pings span three heartbeat intervals of silence
            msg = await ws.receive(timeout=deadline - time.monotonic())
            assert msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.TEXT), msg
            if msg.type == aiohttp.WSMsgType.PING:
                pings += 1
                await ws.pong(msg.data)
        # Still open at the server (silent nodes turn offline in the registry after a while,
        # but their socket stays): it answers the close handshake.
        assert not ws.closed
        await ws.close()
        assert ws.close_code == 1000
