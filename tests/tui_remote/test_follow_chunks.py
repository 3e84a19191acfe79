"""Stored command output names its `chunk` ids, the ids of the stream's output events (issue 13,
decision 5): a follower that read part of the stream and then the store shows each piece once."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.server import CentralServer
from tests.tui_remote.executor_node import ExecutorNode
from tui.api import calls
from tui.api.config import Settings
from tui.api.follow_command import CommandTracker
from tui.api.sync import SyncClient


def _stream_frames(server: CentralServer, command_id: str, outputs: int) -> list[dict]:
    """The command stream's frames up to its `outputs`-th output, then the socket is dropped (a cut)."""
    frames: list[dict] = []
    settings = Settings(server=server.url, token=server.admin_token, ca=str(server.ca_path))
    with SyncClient(settings) as api:
        ws = api.websocket(calls.command_stream(command_id))
        try:
            while sum(f["type"] == "output" for f in frames) < outputs:
                text = ws.receive(15)
                assert text is not None, "the stream went silent"
                frames.append(json.loads(text))
        finally:
            ws.close()
    return frames


async def test_stored_output_names_the_streams_chunk_ids(central_server: CentralServer) -> None:
    async with ExecutorNode(central_server.enroll("pi-c")):
        status, started = central_server.api("POST", "/api/v1/commands", {
            "nodes": ["pi-c"], "shell": "echo one; sleep 0.3; echo two; sleep 0.3; echo three", "timeout": 30})
        assert status == 201
        # The stream up to two pieces of output; then it is gone.
        frames = await asyncio.to_thread(_stream_frames, central_server, started["id"], 2)
        streamed = [f for f in frames if f["type"] == "output"]
        assert [f["data"] for f in streamed] == ["one\n", "two\n"]
        deadline = time.monotonic() + 15
        while not (doc := central_server.api("GET", f"/api/v1/commands/{started['id']}")[1])["done"]:
            assert time.monotonic() < deadline, "the command did not end"
            await asyncio.sleep(0.05)
    stored = doc["runs"][0]["output"]
    assert [p["chunk"] for p in stored[:2]] == [f["chunk"] for f in streamed]
    assert [p["chunk"] for p in stored] == sorted(p["chunk"] for p in stored)
    tracker = CommandTracker(started)
    for frame in frames:
        tracker.on_frame(frame)
    tracker.on_cut(time.monotonic())
    rest = [u.data for u in tracker.on_snapshot(doc) if u.kind == "output"]
    assert rest == ["three\n"] and tracker.done
