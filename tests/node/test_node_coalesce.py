"""Log lines that trickle in are sent a few per `logs` message (the server's cost is per message), promptly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon_support import Demo
from remote_support import ScriptedServer, scripted_daemon


async def test_a_slow_demo_is_sent_in_batches_within_the_coalescing_window(tmp_path: Path) -> None:
    async with ScriptedServer() as srv:
        daemon = scripted_daemon(srv, tmp_path).start()
        demo = None
        try:
            await srv.connected()
            demo = Demo(tmp_path / "logs", "trickle", 120, pause=0.025)  # 40 lines/s for 3 s
            await asyncio.to_thread(demo.wait_written)

            def demo_lines() -> list[tuple[float, dict]]:
                return [(at, ln) for at, msg in srv.logs for ln in msg["lines"] if ln["source"] == "demo"]

            await srv.wait(lambda: len(demo_lines()) == 120, what="the 120 demo lines")
            assert [ln["msg"] for _, ln in demo_lines()] == demo.expected()
            messages = [m for _, m in srv.logs if any(ln["source"] == "demo" for ln in m["lines"])]
            # polled every 0.05 s here, so without coalescing ~60 messages; with it, about 12
            assert len(messages) <= 25, [len(m["lines"]) for m in messages]
            first = demo_lines()[0][0]  # new files are found by a scan every 2 s: time lines written after
            delays = sorted(at - ln["ts"] for at, ln in demo_lines() if ln["ts"] > first)
            # the window (0.25 s) plus one poll and a loaded machine; never seconds
            assert len(delays) > 20 and delays[-1] < 1.0, delays[-5:]
        finally:
            if demo is not None:
                demo.kill()
            await asyncio.to_thread(daemon.stop)
