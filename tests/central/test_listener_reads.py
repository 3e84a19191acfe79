"""The listener's reads (central/listener.py BufferedReads): every connection's TLS reads are
decrypted into one shared buffer and handed on as a copy. Frames many times that buffer's size,
from several nodes at once, must arrive whole and unmixed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.listener import READ_BUFFER_BYTES
from tests.support.nodes import greeted
from tests.support.server import CentralServer

NODES = 3
LINES = 300
LINE_CHARS = 2_000  # a batch of ~700 KB: about ten times the shared buffer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CentralServer]:
    with CentralServer(tmp_path / "central") as running:
        yield running


def _text(node: int, line: int) -> str:
    """A line only this node sends, its characters varying along it (a swapped chunk would show)."""
    stem = f"node{node}-line{line}-"
    return (stem + "".join(chr(0x61 + (node * 7 + line + k) % 26) for k in range(LINE_CHARS)))[:LINE_CHARS]


async def test_large_frames_from_several_nodes_at_once_arrive_whole(server: CentralServer):
    assert LINES * LINE_CHARS > 8 * READ_BUFFER_BYTES
    bundles = [server.enroll(f"big-{i}") for i in range(NODES)]

    async def send(index: int) -> None:
        async with greeted(bundles[index]) as node:
            ack = await node.send_logs([node.line(_text(index, k)) for k in range(LINES)])
            assert ack["seq"] == LINES

    await asyncio.gather(*(send(i) for i in range(NODES)))
    for index in range(NODES):
        _, body = server.api("GET", f"/api/v1/logs?node=big-{index}&limit=1000")
        stored = {line["seq"]: line["msg"] for line in body["lines"]}
        assert stored == {k + 1: _text(index, k) for k in range(LINES)}
