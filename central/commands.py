"""Commands on nodes: one command fans out to a run per node; output streams live and is stored (capped).

A run's states: pending -> running -> exited | timeout | cancelled | failed | duplicate, or
offline (the node was not connected when asked) or lost (the node went away mid-run, or never
answered before the deadline).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dvic_core.constants import RUN_FINAL

from . import store
from .cluster.route import LOCAL, Refusal, Route, unreachable
from .registry import NodeState
from .writer import Writer

log = logging.getLogger(__name__)

OUTPUT_CAP = 1024 * 1024  # bytes of output stored per run; the rest is counted, not kept
MAX_RUNNING_PER_NODE = 8
WATCH_QUEUE = 2000
DEADLINE_GRACE_S = 20.0

SendFn = Callable[[dict[str, Any]], Awaitable[bool]]


@dataclass(eq=False)
class Run:
    id: str
    command_id: str
    node_id: str
    node_name: str
    state: str = "pending"
    code: int | None = None
    signal: int | None = None
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    output_bytes: int = 0
    truncated: bool = False
    # Its final state has gone to the watchers: `done` waits for this on every run, not just for
    # the final states, which are set before their (awaited) write and so before they are told.
    told_final: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "run_id": self.id, "node": self.node_id, "node_name": self.node_name, "state": self.state,
            "code": self.code, "signal": self.signal, "message": self.message, "started_at": self.started_at,
            "finished_at": self.finished_at, "output_bytes": self.output_bytes, "truncated": self.truncated,
        }


@dataclass(eq=False)
class Command:
    id: str
    created_at: float
    operator: str
    argv: list[str] | None
    shell: str | None
    timeout: float
    target: str
    runs: dict[str, Run] = field(default_factory=dict)
    watchers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, "created_at": self.created_at, "operator": self.operator, "argv": self.argv,
            "shell": self.shell, "timeout": self.timeout, "target": self.target,
            "runs": [r.view() for r in self.runs.values()], "done": self.done.is_set(),
        }


class CommandHub:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.commands: dict[str, Command] = {}
        self.runs: dict[str, Run] = {}
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        # To the node's own session, or through the replica holding it (central/cluster/routing.py).
        self.route: Route = LOCAL

    def running_on(self, node_id: str) -> int:
        return sum(1 for r in self.runs.values() if r.node_id == node_id and r.state in ("pending", "running"))

    async def start(self, operator: str, targets: list[NodeState], argv: list[str] | None, shell: str | None,
                    timeout: float, target: str, also: store.WriteFn | None = None) -> Command:
        """Create the command and its runs (with `also`, e.g. the audit row, in the same commit), then send."""
        now = time.time()
        cmd = Command(str(uuid.uuid4()), now, operator, argv, shell, timeout, target)
        for node in targets:
            run = Run(str(uuid.uuid4()), cmd.id, node.id, node.name)
            cmd.runs[run.id] = run
        create = store.create_command(cmd.id, now, operator, argv, shell, timeout, target,
                                      [(r.id, r.node_id) for r in cmd.runs.values()])
        # Urgent (here and for the runs' states and output): an operator waits on each of these
        # writes in turn, so none of them waits for the writer's commit spacing (central/writer.py).
        await self.writer.submit(store.after(also, create), urgent=True)
        self.commands[cmd.id] = cmd
        by_id = {n.id: n for n in targets}
        sends = []
        for run in list(cmd.runs.values()):
            self.runs[run.id] = run
            node = by_id[run.node_id]
            if not self.route.reachable(node):
                await self._finish(run, "offline", message=unreachable(node))
            elif self.running_on(node.id) + self.route.relayed_on(node.id, "commands") > MAX_RUNNING_PER_NODE:
                await self._finish(run, "refused", message=f"node {node.name} already runs "
                                                            f"{MAX_RUNNING_PER_NODE} commands")
            else:
                sends.append(self._send_exec(run, node, {
                    "type": "exec", "id": run.id, "argv": argv, "shell": shell, "timeout": timeout,
                    "cap": OUTPUT_CAP}))
        # All at once: a node that does not read its socket (a send waiting for room) must not
        # hold up the requests to the others.
        await asyncio.gather(*sends)
        self._check_done(cmd)
        return cmd

    async def _send_exec(self, run: Run, node: NodeState, request: dict[str, Any]) -> None:
        # The deadline runs from now, so a send that never completes still ends the run as lost.
        self._deadlines[run.id] = asyncio.get_running_loop().call_later(
            request["timeout"] + DEADLINE_GRACE_S, self._expire_soon, run)
        why = await self.route.open(node, run.id, "commands", request)
        if why is not None:
            await self._finish(run, "refused" if isinstance(why, Refusal) else "lost", message=why)

    def _expire_soon(self, run: Run) -> None:
        asyncio.ensure_future(self._expire(run))

    async def _expire(self, run: Run) -> None:
        if run.state not in RUN_FINAL:
            await self._finish(run, "lost", message="no result from the node before the deadline")

    async def cancel(self, cmd: Command, nodes: dict[str, NodeState]) -> None:
        for run in cmd.runs.values():
            if run.state in RUN_FINAL:
                continue
            node = nodes.get(run.node_id)
            if node is not None:
                await self.route.send(node, run.id, {"type": "cancel", "id": run.id})

    def _publish(self, cmd: Command, event: dict[str, Any]) -> None:
        for queue in list(cmd.watchers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A watcher that cannot keep up is dropped, never waited for: its queue is
                # emptied and ends with None, which its connection reads as "cut off".
                cmd.watchers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def watch(self, cmd: Command) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(WATCH_QUEUE)
        cmd.watchers.add(queue)
        return queue

    async def _save_run(self, run: Run) -> None:
        await self.writer.submit(store.save_run(run.view), urgent=True)

    async def _finish(self, run: Run, state: str, *, code: int | None = None, signal: int | None = None,
                      message: str = "", truncated: bool = False) -> None:
        if run.state in RUN_FINAL:
            return
        run.state, run.code, run.signal, run.message = state, code, signal, message
        run.truncated = run.truncated or truncated
        run.finished_at = time.time()
        timer = self._deadlines.pop(run.id, None)
        if timer is not None:
            timer.cancel()
        self.route.forget(run.id)
        await self._save_run(run)
        cmd = self.commands.get(run.command_id)
        if cmd is not None:
            self._publish(cmd, {"type": "state", **run.view()})
        run.told_final = True
        if cmd is not None:
            self._check_done(cmd)

    def _check_done(self, cmd: Command) -> None:
        if not cmd.done.is_set() and all(r.told_final for r in cmd.runs.values()):
            cmd.done.set()
            self._publish(cmd, {"type": "done", "id": cmd.id})
            for run_id in cmd.runs:
                self.runs.pop(run_id, None)
            # Keep finished commands in memory briefly for late watchers; the store has them anyway.
            asyncio.get_running_loop().call_later(600, self.commands.pop, cmd.id, None)

    async def on_message(self, node: NodeState, msg: dict[str, Any]) -> None:
        run = self.runs.get(msg["id"])
        if run is None or run.node_id != node.id:
            log.info("node %s: %s for unknown command run %s", node.name, msg["type"], msg["id"])
            return
        kind = msg["type"]
        if kind == "exec_started":
            run.state = "running"
            run.started_at = time.time()
            # Not urgent: nobody waits for it, and the run's next write (output or exit) is, and
            # takes it along in the same commit.
            self.writer.submit_later(store.save_run(run.view))
            cmd = self.commands.get(run.command_id)
            if cmd is not None:
                self._publish(cmd, {"type": "state", **run.view()})
        elif kind == "exec_output":
            await self._output(run, msg["stream"], msg["data"])
        elif kind == "exec_exit":
            await self._finish(run, msg["reason"], code=msg["code"], signal=msg["signal"], message=msg["message"],
                               truncated=msg["truncated"])
        elif kind == "unsupported":
            await self._finish(run, "failed", message="the node's daemon does not support commands")

    async def _output(self, run: Run, stream: str, data: str) -> None:
        size = len(data.encode())
        room = OUTPUT_CAP - run.output_bytes
        run.output_bytes += size
        if room <= 0:
            run.truncated = True
            return
        if size > room:
            data = data.encode()[:room].decode("utf-8", "ignore")
            run.truncated = True
        chunk = await self.writer.submit(store.add_command_output(run.id, stream, data), urgent=True)
        cmd = self.commands.get(run.command_id)
        if cmd is not None:
            self._publish(cmd, output_event(chunk, run.id, run.node_id, run.node_name, stream, data))

    async def lost(self, run_id: str, why: str) -> None:
        """The run's node can no longer answer (its replica said so, or stopped)."""
        run = self.runs.get(run_id)
        if run is not None:
            await self._finish(run, "lost", message=why)

    async def node_disconnected(self, node: NodeState) -> None:
        for run in [r for r in self.runs.values() if r.node_id == node.id and r.state not in RUN_FINAL]:
            await self._finish(run, "lost", message=f"node {node.name} went offline")


def output_event(chunk: int, run_id: str, node_id: str, node_name: str, stream: str, data: str) -> dict[str, Any]:
    """A piece of output as clients see it; `chunk` orders pieces and lets a late client skip repeats."""
    return {"type": "output", "chunk": chunk, "run_id": run_id, "node": node_id, "node_name": node_name,
            "stream": stream, "data": data}
