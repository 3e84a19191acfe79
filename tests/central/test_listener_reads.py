"""The listener's reads (central/tlsconn.py, central/listener.py Doorway): every connection's TLS
reads go into one shared buffer, are decrypted into another and handed on as a copy to aiohttp, or
read in place by a node link (central/nodelink.py). Frames many times that buffer's size, from
several nodes at once, must arrive whole and unmixed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from central.tlsconn import WIRE_READ_BYTES
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
    assert LINES * LINE_CHARS > 8 * WIRE_READ_BYTES
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


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


async def test_a_quiet_node_does_not_keep_its_last_large_batch_in_memory(server: CentralServer):
    """After a large batch (a daemon catching up after a reconnect) the node goes quiet: the server
    kept about 1.1 MB per such node: its last frame (about half), and uvloop's TLS buffers sized by
    the reads (the other half; 476 KB in all on this test before central/tlsconn.py, ~85 KB after:
    its reads are at most 32 KiB, so the incoming memory BIO stays small; docs/performance.md)."""
    nodes, lines = 60, 400  # 400 lines of 1,200 characters: a ~500 KB frame per node
    bundles = [server.enroll(f"burst-{i}") for i in range(nodes)]
    assert server.proc is not None
    before = _rss_bytes(server.proc.pid)
    readers: list[asyncio.Task[None]] = []
    async with contextlib.AsyncExitStack() as stack:
        for bundle in bundles:  # each connects, sends its batch, and stays connected, quiet
            node = await stack.enter_async_context(greeted(bundle))
            ack = await node.send_logs([node.line("x" * 1_200) for _ in range(lines)])
            assert ack["seq"] == lines
            readers.append(asyncio.create_task(_answer_pings(node.ws)))
        grown = (_rss_bytes(server.proc.pid) - before) / nodes  # an idle connection alone: ~50 KB
        for reader in readers:
            reader.cancel()
    assert grown < 200_000, f"{grown:,.0f} bytes kept per node after one large batch"


async def _answer_pings(ws: aiohttp.ClientWebSocketResponse | None) -> None:
    """Keeps reading (aiohttp answers the server's pings while something reads)."""
    while ws is not None and not ws.closed:
        await ws.receive()
