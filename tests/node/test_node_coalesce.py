"""Log lines go out at once while the link is idle, and gather while a `logs` message awaits its ack
(the server's cost is per message), never for long."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

from daemon_support import Demo
from remote_support import ScriptedServer, scripted_daemon


async def trickle(srv: ScriptedServer, tmp_path: Path, count: int, pause: float) -> list[tuple[float, dict]]:
    """`count` demo lines written `pause` apart; returns each `logs` message with its arrival time."""
    daemon = scripted_daemon(srv, tmp_path).start()
    demo = None
    try:
        await srv.connected()
        demo = Demo(tmp_path / "logs", "trickle", count, pause=pause)
        await asyncio.to_thread(demo.wait_written)

        def demo_lines() -> list[dict]:
            return [ln for _, msg in srv.logs for ln in msg["lines"] if ln["source"] == "demo"]

        await srv.wait(lambda: len(demo_lines()) == count, what=f"the {count} demo lines")
        assert [ln["msg"] for ln in demo_lines()] == demo.expected()
        return [(at, m) for at, m in srv.logs if any(ln["source"] == "demo" for ln in m["lines"])]
    finally:
        if demo is not None:
            demo.kill()
        await asyncio.to_thread(daemon.stop)


def delays(messages: list[tuple[float, dict]]) -> list[float]:
    """Write -> arrival of each line after the first message (a new file is found by a scan)."""
    first = messages[0][0]
    return sorted(at - ln["ts"] for at, m in messages for ln in m["lines"] if ln["ts"] > first)


async def test_a_slow_demo_on_an_idle_link_is_sent_line_by_line_at_once(tmp_path: Path) -> None:
    async with ScriptedServer() as srv:
        messages = await trickle(srv, tmp_path, 20, pause=0.1)
    waited = delays(messages)
    # inotify wakes the daemon on the write and nothing awaits an ack: no coalescing window (it was 0.25 s)
    assert len(waited) > 10 and statistics.median(waited) < 0.1 and waited[-1] < 1.0, waited


async def test_lines_gather_while_an_ack_is_awaited_but_never_for_long(tmp_path: Path) -> None:
    async with ScriptedServer() as srv:
        srv.ack_delay = 0.5  # a busy server
        messages = await trickle(srv, tmp_path, 120, pause=0.025)  # 40 lines/s for 3 s
    # line by line that would be 120 messages; a batch at most every 0.25 s while acks are awaited
    assert len(messages) <= 25, [len(m["lines"]) for _, m in messages]
    waited = delays(messages)
    # at most the 0.25 s hold plus a read; never the 0.5 s ack delay piled up, never seconds
    assert len(waited) > 20 and waited[-1] < 1.0, waited[-5:]
