"""Runs one firing of a runbook: its steps in order, each on every node of the group at once.

Per node: a step that fails ends that node's run (its later steps are skipped) and leaves the
others going; a node offline at the start is reported 'offline', or with a catch-up window waits
('waiting') and runs the node's steps when it comes back within the window; a node held by someone
else's booking is left alone ('held'). Group steps (deploy, undeploy) change the group's desired
state once, in their place: the node steps before them are over on every node first. Every state is written as it happens
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
from ..tasks import Background
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
        self.firings = Background("a calendar firing")

    def start(self, firing: Firing) -> None:
        self.firings.spawn(self.run(firing), name=f"dvic-firing-{firing.id}")

    async def close(self) -> None:
        await self.firings.close()

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
        outcome, ready, waiting = await self._sort_nodes(firing)
        done: dict[str, list[str]] = {n.id: [] for n in ready}
        group_error = ""
        for index, step in enumerate(firing.steps):
            if step["do"] in GROUP_STEPS:
                group_error = await self._group_step(firing, step)
                if group_error:
                    break
                continue
            errors = await asyncio.gather(*(self._node_step(firing, node, index, step) for node in ready))
            for node, error in zip(ready, errors, strict=True):
                if error:
                    outcome[node.id] = "failed"
                else:
                    done[node.id].append(describe(step))
            ready = [n for n, error in zip(ready, errors, strict=True) if not error]
        if group_error:
            for node in ready + waiting:
                outcome[node.id] = "failed"
                await self._node(firing, node, "failed", 0, group_error)
            waiting = []
        else:
            for node in ready:
                outcome[node.id] = "ok"
                await self._node(firing, node, "ok", len(firing.steps), "; ".join(done[node.id]))
        caught = await asyncio.gather(*(self._catch_up(firing, n) for n in waiting))
        for node, state in zip(waiting, caught, strict=True):
            outcome[node.id] = state
        await self._finish(firing, outcome, group_error)

    async def _sort_nodes(self, firing: Firing) -> tuple[dict[str, str], list[NodeState], list[NodeState]]:
        """The group's nodes: (the outcome of those left alone, those to act on, those to wait for)."""
        outcome: dict[str, str] = {}
        ready, waiting = [], []
        now = time.time()
        for node in self.registry.all():
            if node.group != firing.group or node.revoked or node.kind == "esp32":
                continue
            hold = self.holds.holding(node.id, now)
            if hold is not None and firing.by != hold.holder:
                outcome[node.id] = "held"
                await self._node(firing, node, "held", 0, f"held by booking {hold.booking_id} of {hold.holder}")
            elif not node.connected and firing.catch_up_s > 0:
                waiting.append(node)
                await self._node(firing, node, "waiting", 0,
                                 f"{node.state}: runs if it comes back within {firing.catch_up_s:.0f} s")
            elif not node.connected:  # (connected to another replica: reached through the routing)
                outcome[node.id] = "offline"
                await self._node(firing, node, "offline", 0, f"node is {node.state}")
            else:
                ready.append(node)
                await self._node(firing, node, "pending", 0, "")
        return outcome, ready, waiting

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

    async def _group_step(self, firing: Firing, step: dict[str, Any]) -> str:
        """A group step (once for the group, not per node); returns why it failed ('' when it went)."""
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
        """A node offline at the moment: its steps (the group's were done) once it is back, if in time."""
        deadline = firing.due_at + firing.catch_up_s
        while not node.connected:
            if time.time() >= deadline:
                await self._node(firing, node, "offline", 0, f"did not come back within {firing.catch_up_s:.0f} s")
                return "offline"
            await asyncio.sleep(self.catch_up_poll_s)
        done = []
        for index, step in enumerate(firing.steps):
            if step["do"] in GROUP_STEPS:
                continue
            if await self._node_step(firing, node, index, step):
                return "failed"
            done.append(describe(step))
        await self._node(firing, node, "ok", len(firing.steps), "; ".join(done) + " (caught up)")
        return "ok"

    async def _node_step(self, firing: Firing, node: NodeState, index: int, step: dict[str, Any]) -> str:
        """One step on one node, its states written; returns why it failed ('' when it went)."""
        await self._node(firing, node, "running", index, describe(step))
        try:
            error = await self._step(firing, node, step)
        except Exception as exc:  # a node's failure is its own, never the others'
            log.exception("runbook %s step %s on %s", firing.runbook, describe(step), node.name)
            error = f"internal error: {exc}"
        if error:
            await self._node(firing, node, "failed", index, f"{describe(step)}: {error}")
        return error

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

