"""Runs one firing of a runbook: its steps in order, each on every node of the group at once.

Per node: a step that fails ends that node's run (its later steps are skipped) and leaves the
others going; a node offline at the start is reported 'offline', or with a catch-up window waits
('waiting') and runs the node's steps when it comes back within the window; a node held by someone
else's booking is left alone ('held'). Group steps (deploy, undeploy) change the group's desired
state once, before the node steps that follow them. Every state is written as it happens
(firing_nodes), and the firing ends 'done' (every node ok), 'partial' or 'failed'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dvic_core.constants import ACTION_FINAL

from ..actions import ActionHub
from ..commands import CommandHub
from ..registry import NodeState, Registry
from ..writer import Writer
from . import store
from .holds import Holds
from .ports import Deployments
from .steps import GROUP_STEPS, describe

log = logging.getLogger(__name__)

# How long a `run` step may take on a node, and how often a catch-up looks for its nodes.
RUN_TIMEOUT_S = 600.0
CATCH_UP_POLL_S = 1.0


@dataclass(frozen=True)
class Firing:
    id: int
    runbook_id: int
    runbook: str
    group: str
    steps: list[dict[str, Any]]
    due_at: float
    catch_up_s: float
    by: str  # 'calendar' for a scheduled firing, the operator for run-now


class Runner:
    def __init__(self, writer: Writer, registry: Registry, actions: ActionHub, commands: CommandHub, holds: Holds,
                 deployments: Callable[[], Deployments | None],
                 catch_up_poll_s: float = CATCH_UP_POLL_S) -> None:
        self.writer = writer
        self.registry = registry
        self.actions = actions
        self.commands = commands
        self.holds = holds
        self.deployments = deployments
        self.catch_up_poll_s = catch_up_poll_s
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, firing: Firing) -> None:
        task = asyncio.create_task(self.run(firing), name=f"dvic-firing-{firing.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def run(self, firing: Firing) -> None:
        try:
            await self._run(firing)
        except asyncio.CancelledError:
            raise  # the server stops: the firing stays 'running' and is marked interrupted at the next start
        except Exception as exc:  # one firing's bug must not stop the scheduler
            log.exception("firing %d of runbook %s failed", firing.id, firing.runbook)
            await self.writer.submit(store.set_firing(firing.id, "failed", time.time(), f"internal error: {exc}"))

    async def _run(self, firing: Firing) -> None:
        await self.writer.submit(store.set_firing(firing.id, "running", time.time()))
        nodes = [n for n in self.registry.all() if n.group == firing.group and not n.revoked and n.kind != "esp32"]
        outcome: dict[str, str] = {}
        now = time.time()
        ready, waiting = [], []
        for node in nodes:
            hold = self.holds.holding(node.id, now)
            if hold is not None and firing.by != hold.holder:
                outcome[node.id] = "held"
                await self._node(firing, node, "held", 0, f"held by booking {hold.booking_id} of {hold.holder}")
            elif node.send is None:
                if firing.catch_up_s > 0:
                    waiting.append(node)
                    await self._node(firing, node, "waiting", 0, f"{node.state}: will run if it comes back within "
                                                                  f"{firing.catch_up_s:.0f} s")
                else:
                    outcome[node.id] = "offline"
                    await self._node(firing, node, "offline", 0, f"node is {node.state}")
            else:
                ready.append(node)
                await self._node(firing, node, "pending", 0, "")
        group_error = await self._group_steps(firing)
        if group_error:
            for node in ready + waiting:
                outcome[node.id] = "failed"
                await self._node(firing, node, "failed", 0, group_error)
            ready, waiting = [], []
        results = await asyncio.gather(*(self._node_steps(firing, n) for n in ready),
                                       *(self._catch_up(firing, n) for n in waiting))
        for node, state in zip(ready + waiting, results, strict=True):
            outcome[node.id] = state
        await self._finish(firing, outcome, group_error)

    async def _finish(self, firing: Firing, outcome: dict[str, str], group_error: str) -> None:
        ok = sum(1 for s in outcome.values() if s == "ok")
        acted = [s for s in outcome.values() if s != "held"]
        if group_error:
            state, message = "failed", group_error
        elif not acted:
            state, message = "done", "no node to act on" if not outcome else "every node is held by a booking"
        elif ok == len(acted):
            state, message = "done", f"{ok} nodes ok"
        else:
            state = "partial" if ok else "failed"
            counts: dict[str, int] = {}
            for s in acted:
                counts[s] = counts.get(s, 0) + 1
            message = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        await self.writer.submit(store.set_firing(firing.id, state, time.time(), message))

    async def _group_steps(self, firing: Firing) -> str:
        """Run the group steps (once, not per node); returns the first failure ('' when all went)."""
        for step in firing.steps:
            if step["do"] not in GROUP_STEPS:
                continue
            deployments = self.deployments()
            if deployments is None:
                return f"{describe(step)}: this server has no deployments"
            try:
                if step["do"] == "deploy":
                    await deployments.deploy(firing.group, step["demo"], step["version"], firing.by)
                else:
                    await deployments.undeploy(firing.group, step["demo"], firing.by)
            except Exception as exc:  # the deployments feature says why
                return f"{describe(step)}: {exc}"
        return ""

    async def _catch_up(self, firing: Firing, node: NodeState) -> str:
        deadline = firing.due_at + firing.catch_up_s
        while node.send is None:
            if time.time() >= deadline:
                await self._node(firing, node, "offline", 0, f"did not come back within {firing.catch_up_s:.0f} s")
                return "offline"
            await asyncio.sleep(self.catch_up_poll_s)
        return await self._node_steps(firing, node, caught_up=True)

    async def _node_steps(self, firing: Firing, node: NodeState, caught_up: bool = False) -> str:
        done = []
        for index, step in enumerate(firing.steps):
            if step["do"] in GROUP_STEPS:
                continue
            await self._node(firing, node, "running", index, describe(step))
            try:
                error = await self._step(firing, node, step)
            except Exception as exc:  # a node's failure is its own, never the others'
                log.exception("runbook %s step %s on %s", firing.runbook, describe(step), node.name)
                error = f"internal error: {exc}"
            if error:
                await self._node(firing, node, "failed", index, f"{describe(step)}: {error}")
                return "failed"
            done.append(describe(step))
        message = "; ".join(done) + (" (caught up)" if caught_up else "")
        await self._node(firing, node, "ok", len(firing.steps), message)
        return "ok"

    async def _step(self, firing: Firing, node: NodeState, step: dict[str, Any]) -> str:
        """One step on one node; returns '' when it succeeded, else why not."""
        by = f"runbook:{firing.runbook}"
        do = step["do"]
        if do == "maintenance":
            await self.registry.set_maintenance(node, bool(step["on"]), by)
            return ""
        if do == "run":
            cmd = await self.commands.start(by, [node], None, step["shell"], RUN_TIMEOUT_S, f"nodes:{node.name}")
            await cmd.done.wait()
            run = next(iter(cmd.runs.values()))
            if run.state == "exited" and run.code == 0:
                return ""
            return f"{run.state}" + (f" with code {run.code}" if run.code is not None else "") + \
                (f": {run.message}" if run.message else "")
        kind = do  # start_demo, stop_demo, restart_demo, reboot: tracked actions
        action = await self.actions.request(node, by, kind, step.get("demo", ""))
        action = await self.actions.finished(action)
        assert action.state in ACTION_FINAL
        return "" if action.state == "done" else f"{action.state}: {action.message}"

    async def _node(self, firing: Firing, node: NodeState, state: str, step: int, message: str) -> None:
        await self.writer.submit(store.set_firing_node(firing.id, node.id, node.name, state, step, message,
                                                       time.time()))

