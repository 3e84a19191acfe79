"""The command hub's ordering promises, on a real writer and database: a command's `done` comes
after every run's final state, and one node that does not take its request holds up no other."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from central.commands import CommandHub
from central.registry import NodeState
from central.writer import Writer
from tests.support.database import started_writer
from tests.support.wait import async_wait_for


async def _writer(tmp_path: Path) -> Writer:
    return await started_writer(tmp_path / "t.sqlite3", commit_interval=0.0)


def _node(name: str, send: Any) -> NodeState:
    node = NodeState(id=f"id-{name}", name=name, kind="desktop", group="lab", created_at=0.0, cert_fp="",
                     token_hash="", liveness="online")
    node.send = send
    return node


async def _accepts(message: dict[str, Any]) -> bool:
    return True


def _exit(run_id: str) -> dict[str, Any]:
    return {"type": "exec_exit", "id": run_id, "reason": "exited", "code": 0, "signal": None, "message": "",
            "truncated": False}


async def test_done_follows_every_runs_final_state_when_runs_end_together(tmp_path: Path) -> None:
    writer = await _writer(tmp_path)
    try:
        hub = CommandHub(writer)
        nodes = [_node(f"n{i}", _accepts) for i in range(3)]
        cmd = await hub.start("alice", nodes, ["true"], None, 30.0, "group:lab")
        watched = hub.watch(cmd)
        by_node = {run.node_id: run.id for run in cmd.runs.values()}
        # All results at once: each run's final write is in flight while the others finish.
        await asyncio.gather(*(hub.on_message(node, _exit(by_node[node.id])) for node in nodes))
        events = []
        while not watched.empty():
            events.append(watched.get_nowait())
        kinds = [e["type"] if e else None for e in events]
        assert kinds.count("done") == 1
        assert kinds.index("done") == len(kinds) - 1, kinds
        assert sorted(e["node_name"] for e in events if e and e["type"] == "state") == ["n0", "n1", "n2"]
    finally:
        await writer.close()


async def test_a_node_that_does_not_take_its_request_holds_up_no_other(tmp_path: Path) -> None:
    writer = await _writer(tmp_path)
    release = asyncio.Event()
    reached: list[str] = []

    async def stuck(message: dict[str, Any]) -> bool:
        reached.append("stuck")
        await release.wait()  # a node whose socket buffer is full: the send waits for it to read
        return True

    async def quick(message: dict[str, Any]) -> bool:
        reached.append("quick")
        return True

    try:
        hub = CommandHub(writer)
        starting = asyncio.ensure_future(hub.start(
            "alice", [_node("slow", stuck), _node("fast", quick)], ["true"], None, 30.0, "group:lab"))
        async def second_reached() -> bool:
            return "quick" in reached

        await async_wait_for(second_reached, timeout=10, what="the second node's request")
        assert not starting.done()
        release.set()
        cmd = await starting
        assert {run.state for run in cmd.runs.values()} == {"pending"}
    finally:
        release.set()
        await writer.close()
