"""Tracked actions on nodes (reboot, restart/stop/start a demo, daemon update) and their states.

States: requested -> in_progress -> done | failed, or lost when no final state comes before the
deadline. A reboot is done when the node says hello again with a new boot time; an update is done
when it says hello with the target daemon version.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from dvic_core.constants import ACTION_FINAL

from . import store
from .cluster.route import LOCAL, Route, unreachable
from .registry import NodeState, Registry
from .release import Release
from .writer import Writer

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = {"reboot": 600.0, "update": 300.0}
# How often a reboot or an update of a node on another replica looks for the node's new session.
RETURN_CHECK_S = 1.0


@dataclass(eq=False)
class Action:
    id: str
    node_id: str
    node_name: str
    operator: str
    action: str
    demo: str
    state: str
    message: str
    requested_at: float
    updated_at: float
    deadline: float
    boot_time: float | None = None
    target_version: str = ""

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id, "node": self.node_id, "node_name": self.node_name, "operator": self.operator,
            "action": self.action, "demo": self.demo, "state": self.state, "message": self.message,
            "requested_at": self.requested_at, "updated_at": self.updated_at, "deadline": self.deadline,
        }


class ActionHub:
    def __init__(self, writer: Writer, registry: Registry) -> None:
        self.writer = writer
        self.registry = registry
        self.pending: dict[str, Action] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Futures of callers waiting for an action's final state (a runbook step: central/calendar/).
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # To the node's own session, or through the replica holding it (central/cluster/routing.py).
        self.route: Route = LOCAL
        # Reboots and updates asked of a node on another replica: its session's epoch when asked.
        # Its next hello goes to whichever replica it reaches; shared presence brings the new
        # session (and its facts) here, and that is what completes them (`_watch_returns`).
        self._away: dict[str, int] = {}
        self._returns: asyncio.Task[None] | None = None

    async def finished(self, action: Action) -> Action:
        """Wait for the action's final state (its deadline ends it as lost at the latest)."""
        if action.state not in ACTION_FINAL:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(action.id, []).append(future)
            await future
        return action

    async def _save(self, action: Action, *, insert: bool = False, urgent: bool = False) -> None:
        write = (store.insert_action(dataclasses.asdict(action)) if insert
                 else store.update_action(action.id, action.state, action.message, action.updated_at))
        await self.writer.submit(write, urgent=urgent)

    async def _set(self, action: Action, state: str, message: str = "") -> None:
        if action.state in ACTION_FINAL:
            return
        action.state, action.message, action.updated_at = state, message or action.message, time.time()
        await self._save(action)
        node = self.registry.get(action.node_id)
        await self.registry.record_event(node, f"action_{state}", f"{action.action} {state}"
                                         + (f": {action.message}" if action.message else ""),
                                         {"action": action.action, "id": action.id, "state": state})
        if state in ACTION_FINAL:
            self.pending.pop(action.id, None)
            self.route.forget(action.id)
            self._away.pop(action.id, None)
            timer = self._timers.pop(action.id, None)
            if timer is not None:
                timer.cancel()
            for future in self._waiters.pop(action.id, []):
                if not future.done():
                    future.set_result(None)

    async def request(self, node: NodeState, operator: str, kind: str, demo: str = "",
                      deadline_s: float | None = None, release: Release | None = None,
                      download_url: str = "", endorsements: list[dict[str, Any]] | None = None) -> Action:
        now = time.time()
        deadline_s = deadline_s or DEFAULT_DEADLINE_S.get(kind, 120.0)
        boot_time = node.facts.get("boot_time")
        action = Action(str(uuid.uuid4()), node.id, node.name, operator, kind, demo, "requested", "", now, now,
                        now + deadline_s, boot_time if isinstance(boot_time, int | float) else None,
                        release.version if release else "")
        await self._save(action, insert=True, urgent=True)  # the operator's request waits on it
        self.pending[action.id] = action
        if not self.route.reachable(node):
            await self._set(action, "failed", unreachable(node))
            return action
        if kind == "update":
            assert release is not None
            message: dict[str, Any] = {"type": "update", "id": action.id, "version": release.version, "url": download_url,
                       "sha256": release.sha256, "signature": release.signature,
                       # Nodes pinned an older key follow the rotations through these (release.py).
                       "endorsements": endorsements or []}
        else:
            message = {"type": "action", "id": action.id, "action": kind, "demo": demo or None}
        why = await self.route.open(node, action.id, "updates" if kind == "update" else "actions", message)
        if why is not None:
            await self._set(action, "failed", why)
            return action
        loop = asyncio.get_running_loop()
        self._timers[action.id] = loop.call_later(deadline_s, lambda: asyncio.ensure_future(self._expire(action)))
        if kind in ("reboot", "update") and node.send is None:
            self._away[action.id] = node.epoch
            if self._returns is None or self._returns.done():
                self._returns = loop.create_task(self._watch_returns(), name="dvic-actions-returns")
        return action

    async def _watch_returns(self) -> None:
        """A node of another replica with a newer session than when asked said hello somewhere:
        the same check as a hello here (on_hello)."""
        while self._away:
            await asyncio.sleep(RETURN_CHECK_S)
            for action_id, epoch in list(self._away.items()):
                action = self.pending.get(action_id)
                node = self.registry.get(action.node_id) if action is not None else None
                if action is None or node is None:
                    self._away.pop(action_id, None)
                elif node.epoch > epoch and node.connected:
                    self._away[action_id] = node.epoch
                    await self.on_hello(node)

    async def close(self) -> None:
        if self._returns is not None:
            self._returns.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._returns

    async def _expire(self, action: Action) -> None:
        if action.state not in ACTION_FINAL:
            what = "the node did not come back" if action.action in ("reboot", "update") else "no result"
            await self._set(action, "lost", f"{what} within {action.deadline - action.requested_at:.0f} s")

    async def on_message(self, node: NodeState, msg: dict[str, Any]) -> None:
        action = self.pending.get(msg["id"])
        if action is None or action.node_id != node.id:
            return
        if msg["type"] == "unsupported":
            await self._set(action, "failed", "the node's daemon does not support this action")
            return
        state = msg["state"]
        # A reboot is only done when the node is back (see on_hello), whatever it says before going.
        if action.action == "reboot" and state == "done":
            state = "in_progress"
        await self._set(action, state, msg["message"])

    async def on_update_state(self, node: NodeState, msg: dict[str, Any]) -> None:
        action = self.pending.get(msg["id"])
        if action is None or action.node_id != node.id:
            return
        state = msg["state"]
        if state in ("refused", "failed", "rolled_back"):
            await self._set(action, "failed", f"{state}: {msg['message']}")
        else:
            await self._set(action, "in_progress", f"{state}: {msg['message']}" if msg["message"] else state)

    async def on_hello(self, node: NodeState) -> None:
        for action in [a for a in self.pending.values() if a.node_id == node.id]:
            if action.action == "reboot" and action.state == "in_progress":
                boot = node.facts.get("boot_time")
                if action.boot_time is None or boot != action.boot_time:
                    await self._set(action, "done", "the node came back after rebooting")
            elif action.action == "update" and action.state in ("requested", "in_progress"):
                if node.daemon_version == action.target_version:
                    await self._set(action, "done", f"running daemon {node.daemon_version}")
