"""A live-stream client that stops reading is cut off by the bytes it leaves queued, even while it
keeps its socket busy with pings; nobody else notices (security review M1)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp

from central.bus import CUT_OFF_GRACE_S, MAX_FRAME_BYTES, SEND_STALL_S, Bus, _log_frames
from tests.central.streamkit import stream_seqs
from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for

LINE = 60_000  # characters per log line: 15 lines make a frame of about 900 KB
BATCHES = 60


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket whose kernel buffer holds little, so what it does not read stays on the server."""
    sock = socket.socket(addr_info[0], addr_info[1], addr_info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_a_viewer_that_pings_but_never_reads_is_cut_off_and_the_others_carry_on(tmp_path):
    server = CentralServer(tmp_path / "central", extra_args=("--max-client-bytes", "4M")).start()
    try:
        bundle = server.enroll("pi-loud")
        status, body = server.api("POST", "/api/v1/operators", {"name": "watcher", "role": "viewer"})
        assert status == 201, body
        headers = {"Authorization": f"Bearer {body['token']}"}
        stream_url = server.url + "/api/v1/stream"
        subscribe = json.dumps({"type": "subscribe", "logs": ["*"]})
        slow_connector = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        async with aiohttp.ClientSession() as http, aiohttp.ClientSession(connector=slow_connector) as slow_http:
            # Subscribes to every node's lines, never reads a frame, and pings every 0.2 s (which
            # kept the websocket heartbeat content: it was never cut off).
            slow = await slow_http.ws_connect(stream_url, headers=headers, ssl=server.ssl_context,
                                              autoping=False)
            await slow.send_str(subscribe)
            hung_up = asyncio.Event()

            async def ping_for_ever() -> None:
                try:
                    while True:
                        await slow.ping()
                        await asyncio.sleep(0.2)
                except (ConnectionError, RuntimeError):
                    hung_up.set()

            pinger = asyncio.create_task(ping_for_ever())
            fast = await http.ws_connect(stream_url, headers=headers, ssl=server.ssl_context)
            assert json.loads((await fast.receive(timeout=10)).data)["type"] == "hello"
            await fast.send_str(subscribe)
            assert json.loads((await fast.receive(timeout=10)).data)["type"] == "subscribed"
            reader = asyncio.create_task(stream_seqs(fast, BATCHES * 15))
            async with greeted(bundle) as node:
                for batch in range(BATCHES):  # about 54 MB to each subscriber
                    lines = [node.line(f"{batch}:{i}:" + "y" * LINE) for i in range(15)]
                    ack = await node.send_logs(lines)
                assert ack["seq"] == BATCHES * 15  # the node was acked all along
                seen = await asyncio.wait_for(reader, 120)
                assert seen == list(range(1, BATCHES * 15 + 1))  # the reading client got every line, in order
                # The server hung up on the viewer that never read, though it kept pinging.
                await asyncio.wait_for(hung_up.wait(), 30)
                # The node and the reading client carry on.
                ack = await node.send_logs([node.line("after the cut-off")])
                assert ack["seq"] == BATCHES * 15 + 1
                while True:
                    msg = json.loads((await fast.receive(timeout=10)).data)
                    if msg["type"] == "logs":
                        assert [line["msg"] for line in msg["lines"]] == ["after the cut-off"]
                        break
            pinger.cancel()
            await fast.close()
        wait_for(lambda: "stream client" in server.log(), what="the cut-off in the server log")
    finally:
        server.stop()


async def test_the_byte_budget_cuts_a_subscriber_and_a_wake_up_frame_is_never_sent():
    bus = Bus(client_queue_limit=100, client_byte_budget=1000)
    slow, fast = bus.subscribe(), bus.subscribe()
    for i in range(3):
        bus.publish({"type": "node", "pad": "x" * 380, "i": i})  # about 400 bytes a frame
        frame = fast.queue.get_nowait()
        fast.sent(frame)
    assert slow.too_slow.is_set() and slow.queue.qsize() == 3  # two frames, then the wake-up
    assert slow.queued_bytes <= 1000 and slow.queue.get_nowait() and slow.queue.get_nowait()
    assert slow.queue.get_nowait() == b""  # wakes the connection's task, which then cuts off
    assert not fast.too_slow.is_set() and fast.queued_bytes == 0
    bus.unsubscribe(slow)
    bus.unsubscribe(fast)


async def test_one_frame_larger_than_the_budget_still_reaches_a_client_that_reads():
    bus = Bus(client_byte_budget=100)
    sub = bus.subscribe()
    bus.publish({"type": "node", "pad": "x" * 500})
    assert not sub.too_slow.is_set() and sub.queue.qsize() == 1
    bus.unsubscribe(sub)


async def test_the_watchdog_hangs_up_a_client_whose_send_never_finishes():
    bus = Bus(send_stall_s=SEND_STALL_S)
    stuck, cut, idle = bus.subscribe(), bus.subscribe(), bus.subscribe()
    hung: list[str] = []
    for name, sub in (("stuck", stuck), ("cut", cut), ("idle", idle)):
        sub.hang_up = lambda name=name: hung.append(name)
    bus.publish({"type": "node", "i": 1})
    stuck.sending_since = cut.sending_since = 100.0  # their sends began at loop time 100
    cut.too_slow.set()  # already cut off: only a short grace to take its close frame
    assert bus.hang_up_stalled(100.0 + CUT_OFF_GRACE_S + 0.1) == 1 and hung == ["cut"]
    assert bus.hang_up_stalled(100.0 + SEND_STALL_S + 0.1) == 1 and hung == ["cut", "stuck"]
    # What they had queued is freed, and they get nothing more.
    assert stuck.queue.empty() and stuck.queued_bytes == 0 and stuck.too_slow.is_set()
    assert bus.subscriber_count == 1 and idle.queue.qsize() == 1
    bus.unsubscribe(idle)


def test_log_frames_are_split_by_size_and_keep_every_line_in_order():
    lines = [{"seq": i, "msg": "z" * 60_000} for i in range(1, 41)]  # about 2.4 MB
    frames = [json.loads(f) for f in _log_frames({"node-a": lines})]
    assert len(frames) > 1
    assert all(len(json.dumps(f)) <= MAX_FRAME_BYTES for f in frames)
    assert [line["seq"] for f in frames for line in f["lines"]] == list(range(1, 41))
    assert all(f["node"] == "node-a" for f in frames)
    # Small lines still travel 1,000 to a frame.
    small = _log_frames({"a": [{"seq": i} for i in range(2500)], "b": [{"seq": 1}]})
    assert [len(json.loads(f)["lines"]) for f in small] == [1000, 1000, 501]
