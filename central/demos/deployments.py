"""Deployments: the desired state of supervised demos, rollouts in canary batches, per-node tracking.

The plain async API other features call (the API routes, the calendar's bookings and runbooks):
`deploy`, `undeploy`, `rollback`, `status`, plus `deployment` and `deployments` to read them back.

Desired state. An *assignment* says "demo D at version V" (or "D not at all", an undeploy) for a
scope: one node, a group, or the whole fleet. For a node the most specific assignment wins: node
over group over all. Each assignment was made by a *deployment*; a node's desired set (the
`demos_desired` push, docs/protocol.md section 6) holds every demo whose winning assignment names a
version, with that deployment's id as the `rollout`. Nodes get it after `welcome` and whenever it
changes, so a node that was off converges when it comes back.

Rollouts. A deployment with `batch` K releases the new version to its first K nodes (online ones
first, by name), and to the rest only once those are `healthy`; until then the rest keep what they
had (their `previous_version`). A node whose install ends `failed`, `rolled_back` or `lost` fails
the deployment: nothing more is released and the rest keep the old version. An offline node does
not hold a rollout up: it is pushed when it comes back.

Tracking. Each (deployment, node) moves through the daemon's `demo_install` states like a tracked
action: every state but the final ones has an inactivity timeout (`install_timeout`, and for
`starting` the release's `start_timeout_s` on top), after which it is `lost`. A download's progress
resets it. A later report from the node replaces `lost` (the node knows better).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import Refusal
from ..registry import NodeState, Registry
from . import store
from .archive import Limits
from .catalog import Catalog, Release
from .manifest import unmet_requirement

log = logging.getLogger(__name__)

SCOPES = ("node", "group", "all")
KINDS = ("deploy", "undeploy", "rollback")
DEPLOYMENT_STATES = ("rolling", "done", "failed", "superseded")
INSTALL_STATES = ("queued", "downloading", "verifying", "installing", "stopping_old", "starting")
IN_PROGRESS = frozenset({"pushed", *INSTALL_STATES})
NOT_STARTED = frozenset({"waiting", "offline"})
GOOD = frozenset({"healthy", "removed", "superseded", "skipped"})
BAD = frozenset({"failed", "rolled_back", "lost"})
FINAL = GOOD | BAD
NODE_STATES = (*NOT_STARTED, *IN_PROGRESS, *FINAL)
RUNTIME_STATES = ("running", "healthy", "unhealthy", "crashloop", "stopped", "failed")
DEFAULT_INSTALL_TIMEOUT_S = 300.0
MAX_DESIRED = 64  # the daemon refuses a larger set (docs/protocol.md section 6)

Submit = Callable[..., Awaitable[Any]]


class DeployError(Refusal):
    """A refused deployment: HTTP status, error code, and what to change."""


@dataclass(frozen=True)
class Target:
    """Where a deployment applies: ("node", node id), ("group", name) or ("all", "")."""

    scope: str
    value: str = ""

    def describe(self, registry: Registry) -> str:
        if self.scope == "node":
            node = registry.get(self.value)
            return f"node {node.name if node else self.value}"
        return f"group {self.value}" if self.scope == "group" else "all nodes"


@dataclass
class RolloutNode:
    deployment_id: str
    node_id: str
    batch: int
    previous_version: str | None
    previous_rollout: str | None
    state: str
    message: str = ""
    bytes: int | None = None
    total: int | None = None
    updated_at: float = field(default_factory=time.time)


@dataclass
class Deployment:
    id: str
    demo: str
    kind: str
    version: str | None
    scope: str
    target: str
    batch: int | None
    released: int
    previous_version: str | None
    state: str
    message: str
    operator: str
    created_at: float
    updated_at: float
    nodes: dict[str, RolloutNode] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("nodes")
        return out

    @property
    def last_batch(self) -> int:
        return max((r.batch for r in self.nodes.values()), default=0)


@dataclass
class Assignment:
    version: str | None  # None: the demo must not run there
    deployment_id: str


class DeploymentHub:
    def __init__(self, submit: Submit, submit_later: Callable[[Any], None], registry: Registry, catalog: Catalog,
                 limits: Limits, install_timeout: float = DEFAULT_INSTALL_TIMEOUT_S) -> None:
        self.submit = submit
        self.submit_later = submit_later
        self.registry = registry
        self.catalog = catalog
        self.limits = limits
        self.install_timeout = install_timeout
        self.assignments: dict[tuple[str, str, str], Assignment] = {}
        self.deployments: dict[str, Deployment] = {}  # the live ones: named by an assignment, or rolling
        self.status: dict[tuple[str, str], dict[str, Any]] = {}  # (node id, demo) -> demo_status
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._pushes: dict[str, str] = {}  # push id -> node id (an old daemon answers `unsupported`)
        # deployment id -> why some nodes of its scope are not in it (a more specific assignment
        # decides for them), said again in its final message
        self._held: dict[str, str] = {}
        self._lock = asyncio.Lock()
        # How a message reaches a node wherever its session is (the router's `deliver`, set by the
        # server); None: only a node connected here.
        self.deliver: Callable[[NodeState, dict[str, Any]], Awaitable[bool]] | None = None

    # -- loading -------------------------------------------------------------------------------
    def load(self, assignments: list[dict[str, Any]], deployments: list[dict[str, Any]],
             rollout_rows: list[dict[str, Any]], statuses: list[dict[str, Any]]) -> None:
        """What is stored (at start; again, from scratch, on gaining the features lead)."""
        self.stop()
        self.assignments.clear()
        self.deployments.clear()
        self.status.clear()
        self._pushes.clear()
        self._held.clear()
        for a in assignments:
            self.assignments[(a["demo"], a["scope"], a["target"])] = Assignment(a["version"], a["deployment_id"])
        for d in deployments:
            self.deployments[d["id"]] = Deployment(**d)
        for r in rollout_rows:
            dep = self.deployments.get(r["deployment_id"])
            if dep is not None:
                dep.nodes[r["node_id"]] = RolloutNode(**r)
        for s in statuses:
            self.status[(s["node_id"], s["demo"])] = s

    async def read(self, read_db: Any) -> None:
        """Releases, assignments, live deployments and demo statuses from the database, replacing
        what was here (at start; on gaining the features lead with several replicas)."""
        self.catalog.load(await store.releases(read_db))
        live = await store.live_deployments(read_db)
        self.load(await store.assignments(read_db), live,
                  await store.rollout_nodes(read_db, [dep["id"] for dep in live]), await store.statuses(read_db))

    def start(self) -> None:
        """After loading: rows a previous process was following get their timeouts again."""
        for dep in self.deployments.values():
            for row in dep.nodes.values():
                if row.state in IN_PROGRESS:
                    self._arm_timer(dep, row)

    def stop(self) -> None:
        """No more timeouts from here (the features lead is lost: the next leader arms its own)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # -- the plain API -------------------------------------------------------------------------
    async def deploy(self, demo: str, version: str, target: Target, operator: str, batch: int | None = None,
                     *, kind: str = "deploy") -> Deployment:
        """Make `target` run `demo` at `version`; returns the new deployment (state `rolling`)."""
        release = self.catalog.get(demo, version)
        if release is None:
            known = ", ".join(r.version for r in self.catalog.versions(demo)) or "none"
            raise DeployError(404, "no_such_release",
                              f"no release {demo} {version} (published versions: {known}; dvic demo publish)")
        if batch is not None and batch < 1:
            raise DeployError(400, "bad_batch", "batch: a number of nodes, at least 1")
        async with self._lock:
            nodes = self._nodes_in(target)
            return await self._change(demo, target, version, kind, operator, nodes, batch, release)

    async def undeploy(self, demo: str, target: Target, operator: str) -> Deployment:
        """Make `target` run no `demo` (stopped and removed on its nodes; their kept data stays).
        On all nodes it clears every assignment of the demo: it runs nowhere."""
        async with self._lock:
            if not self._demo_known(demo):
                raise DeployError(404, "no_such_demo", f"no demo {demo!r} is published or deployed")
            nodes = self._nodes_in(target)
            return await self._change(demo, target, None, "undeploy", operator, nodes, None, None)

    async def rollback(self, demo: str, target: Target, operator: str) -> Deployment:
        """Deploy, at `target`, the version it had before its current deployment (a new deployment)."""
        key = (demo, target.scope, target.value)
        assignment = self.assignments.get(key)
        current = self.deployments.get(assignment.deployment_id) if assignment else None
        if assignment is None or current is None:
            raise DeployError(409, "no_deployment", f"nothing is deployed of {demo} on {target.describe(self.registry)}")
        previous = current.previous_version
        if previous is None:
            raise DeployError(409, "no_previous", f"{target.describe(self.registry)} ran no other version of {demo} "
                                                  "before this deployment: nothing to roll back to (dvic undeploy?)")
        if self.catalog.get(demo, previous) is None:
            raise DeployError(409, "no_previous", f"the previous release {demo} {previous} is no longer published")
        return await self.deploy(demo, previous, target, operator, kind="rollback")

    async def clear_nodes(self, node_ids: Iterable[str], operator: str) -> list[str]:
        """Drop every node-scope assignment of these nodes, so their group's (or the fleet's) desired
        state applies again: unlike an undeploy, which writes "does not run here". Returns the
        demos whose assignment was dropped (the calendar's booking end)."""
        ids = set(node_ids)
        async with self._lock:
            keys = [k for k in self.assignments if k[1] == "node" and k[2] in ids]
            if not keys:
                return []
            dropped = [self.assignments.pop(k) for k in keys]
            writes: list[Any] = [store.delete_node_assignments(sorted(ids))]
            for a in dropped:
                dep = self.deployments.get(a.deployment_id)
                if dep is not None and dep.state == "rolling":
                    writes += self._supersede(dep, "the node's own assignment was cleared")
            await self.submit(_all(writes), urgent=True)
            self._forget_unreferenced()
            demos = sorted({demo for demo, _, _ in keys})
            for node_id in sorted({target for _, _, target in keys}):
                node = self.registry.get(node_id)
                await self.registry.record_event(node, "deployment_clear",
                                                 f"{', '.join(demos)}: back to the group's desired state by {operator}",
                                                 {"demos": demos})
                if node is not None and node.connected:
                    await self.push(node)
            return demos

    def status_rows(self, demo: str | None = None) -> list[dict[str, Any]]:
        """Per node and supervised demo: desired and running version, health, restarts, install progress."""
        now = time.time()
        keys = {k for k in self.status if demo is None or k[1] == demo}
        for node in self.registry.all():
            for name in self._demo_names():
                if (demo is None or name == demo) and self._effective(node, name) is not None:
                    keys.add((node.id, name))
        rows = []
        for node_id, name in sorted(keys, key=lambda k: (k[1], self._node_name(k[0]))):
            rows.append(self._status_row(node_id, name, now))
        return rows

    def deployment_view(self, dep: Deployment) -> dict[str, Any]:
        nodes = [_node_view(r, self._node_name(r.node_id)) for r in dep.nodes.values()]
        nodes.sort(key=lambda r: (r["batch"], r["node_name"]))
        counts: dict[str, int] = {}
        for r in dep.nodes.values():
            counts[r.state] = counts.get(r.state, 0) + 1
        return {**dep.row(), "target_name": self._target_name(dep), "nodes": nodes, "counts": counts}

    async def deployment(self, read_db: Any, deployment_id: str) -> dict[str, Any] | None:
        live = self.deployments.get(deployment_id)
        if live is not None:
            return self.deployment_view(live)
        row = await store.deployment(read_db, deployment_id)
        if row is None:
            return None
        dep = Deployment(**row)
        for r in await store.rollout_nodes(read_db, [deployment_id]):
            dep.nodes[r["node_id"]] = RolloutNode(**r)
        return self.deployment_view(dep)

    async def deployments_list(self, read_db: Any, demo: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await store.deployments(read_db, demo, limit)
        out = []
        for row in rows:
            live = self.deployments.get(row["id"])
            view = self.deployment_view(live) if live else {**row, "target_name": self._target_name(Deployment(**row))}
            view.pop("nodes", None)
            out.append(view)
        return out

    def referenced(self) -> set[tuple[str, str]]:
        """Releases retention must keep: assigned, assigned before (rollback), running, or still desired."""
        out: set[tuple[str, str]] = set()
        for (demo, _, _), a in self.assignments.items():
            if a.version is not None:
                out.add((demo, a.version))
        for dep in self.deployments.values():
            for version in (dep.version, dep.previous_version, *(r.previous_version for r in dep.nodes.values())):
                if version is not None:
                    out.add((dep.demo, version))
        for (_, demo), s in self.status.items():
            out.add((demo, s["version"]))
        return out

    # -- node events ---------------------------------------------------------------------------
    async def on_hello(self, node: NodeState) -> None:
        """After `welcome`: the node's desired set, and its rollouts that waited for it. While no demo
        is deployed anywhere there is nothing to say (nor to take away), and nothing is sent."""
        if not self.assignments:
            return
        async with self._lock:
            await self.push(node)

    async def on_install(self, node: NodeState, msg: dict[str, Any]) -> None:
        """A node's `demo_install`: the row moves on. Nothing here waits for a commit while holding the
        lock (every node's messages would queue behind each one); the row is written in order, in the
        background, only when its state changes (download progress stays in memory)."""
        state = msg["state"]
        async with self._lock:
            row = self._row_for(node, msg)
            if row is None:  # e.g. a removal after a node's own assignment was cleared (clear_nodes)
                if state == "removed":
                    self._forget_status(node, msg["demo"])
                return
            dep = self.deployments[row.deployment_id]
            if state == "removed" and dep.kind != "undeploy":
                return  # a removal answers an undeploy; a deploy's row keeps its state
            if state == row.state and state in FINAL:
                return  # a result repeated after a push that changed nothing for this demo
            changed = state != row.state or msg["message"] != row.message
            row.state, row.message, row.updated_at = state, msg["message"], time.time()
            row.bytes, row.total = msg.get("bytes"), msg.get("total")
            if state in FINAL:
                self._cancel_timer(row)
            else:
                self._arm_timer(dep, row)
            if changed:
                self.submit_later(store.save_rollout_nodes([asdict(row)]))
            self._publish(dep)
            await self._advance(dep)
        if state in FINAL:
            await self._final_event(node, dep, row)
        if state == "removed":
            self._forget_status(node, msg["demo"])

    def _forget_status(self, node: NodeState, demo: str) -> None:
        self.status.pop((node.id, demo), None)
        self.submit_later(store.forget_status(node.id, demo))

    async def on_status(self, node: NodeState, msg: dict[str, Any]) -> None:
        # (version: null from a daemon that has no release of it any more)
        row = {"node_id": node.id, "demo": msg["demo"], "version": msg["version"] or "", "state": msg["state"],
               "pid": msg["pid"], "restarts": msg["restarts"], "since": msg["since"], "last_exit": msg["last_exit"],
               "last_heartbeat": msg["last_heartbeat"], "message": msg["message"], "updated_at": time.time()}
        self.status[(node.id, msg["demo"])] = row
        self.submit_later(store.save_status(row))
        if self.registry.bus.has_audience():
            # The stream names a node's id `node`, as every other frame does (docs/protocol.md).
            frame = {k: v for k, v in row.items() if k != "node_id"}
            self.registry.bus.publish({"type": "demo_status", "node": node.id, "node_name": node.name, **frame})

    async def on_unsupported(self, node: NodeState, push_id: str) -> bool:
        """An old daemon answered a push with `unsupported`: its rollouts fail, saying why."""
        if self._pushes.get(push_id) != node.id:
            return False
        async with self._lock:
            for dep in list(self.deployments.values()):
                row = dep.nodes.get(node.id)
                if row is not None and row.state in IN_PROGRESS:
                    await self._set_row(node, dep, row, "failed",
                                        "the node's daemon does not support supervised demos: update it (dvic update)")
        return True

    def allowed_release(self, node: NodeState, sha256: str) -> bool:
        """May this node download the release? Only those of its own desired set."""
        return any(e["sha256"] == sha256 for e in self.desired(node))

    # -- desired state -------------------------------------------------------------------------
    def desired(self, node: NodeState) -> list[dict[str, Any]]:
        """The complete desired set of `node` (the `demos` of `demos_desired`)."""
        out = []
        for name in self._demo_names():
            effective = self._effective(node, name)
            if effective is None:
                continue
            release, rollout = effective
            out.append({"name": release.name, "version": release.version, "sha256": release.sha256,
                        "size": release.size, "url": f"/api/v1/node/releases/{release.sha256}",
                        "manifest": release.manifest, "rollout": rollout,
                        "max_unpacked_bytes": self.limits.max_unpacked_bytes, "max_members": self.limits.max_members})
        return out[:MAX_DESIRED]

    def _demo_names(self) -> list[str]:
        return sorted({demo for demo, _, _ in self.assignments})

    def _demo_known(self, demo: str) -> bool:
        return bool(self.catalog.versions(demo)) or demo in self._demo_names()

    def _winning(self, node: NodeState, demo: str) -> Assignment | None:
        for key in ((demo, "node", node.id), (demo, "group", node.group) if node.group else None, (demo, "all", "")):
            if key is not None and key in self.assignments:
                return self.assignments[key]
        return None

    def _effective(self, node: NodeState, demo: str) -> tuple[Release, str | None] | None:
        """(release, rollout id) the node should run of `demo`, or None."""
        version, rollout = self._effective_version(node, demo)
        if version is None or node.revoked or node.kind == "esp32":
            return None
        release = self.catalog.get(demo, version)
        if release is None or self._unmet(node, release) is not None:
            return None
        return release, rollout

    def _effective_version(self, node: NodeState, demo: str) -> tuple[str | None, str | None]:
        assignment = self._winning(node, demo)
        if assignment is None:
            return None, None
        dep = self.deployments.get(assignment.deployment_id)
        row = dep.nodes.get(node.id) if dep else None
        if row is not None and row.state == "waiting":  # a later batch: it keeps what it had
            return row.previous_version, row.previous_rollout
        return assignment.version, assignment.deployment_id

    def _unmet(self, node: NodeState, release: Release) -> str | None:
        return unmet_requirement(release.manifest, node.kind, node.group, str(node.facts.get("arch") or ""))

    def _nodes_in(self, target: Target) -> list[NodeState]:
        if target.scope not in SCOPES:
            raise DeployError(400, "bad_target", "give a node, a group, or all")
        if target.scope == "node":
            node = self.registry.get(target.value)
            if node is None:
                raise DeployError(404, "no_such_node", f"no node with id or name {target.value!r}")
            if node.revoked:
                raise DeployError(409, "revoked", f"node {node.name!r} is revoked")
            if node.kind == "esp32":
                raise DeployError(409, "not_supported", f"node {node.name!r} is an ESP32 board: it runs no demos")
            return [node]
        nodes = [n for n in self.registry.all() if not n.revoked and n.kind != "esp32"
                 and (target.scope == "all" or n.group == target.value)]
        if target.scope == "group" and not nodes:
            raise DeployError(404, "empty_group", f"no node in group {target.value!r}")
        return nodes

    # -- changing the desired state ------------------------------------------------------------
    async def _change(self, demo: str, target: Target, version: str | None, kind: str, operator: str,
                      nodes: list[NodeState], batch: int | None, release: Release | None) -> Deployment:
        now = time.time()
        key = (demo, target.scope, target.value)
        before = {n.id: self._effective_version(n, demo) for n in nodes}
        scope_before = self._scope_version(demo, target)
        dep = Deployment(str(uuid.uuid4()), demo, kind, version, target.scope, target.value, batch, 0,
                         scope_before, "rolling", "", operator, now, now)
        old = self.assignments.get(key)
        if target.scope == "all" and version is None:
            removed = {k: v for k, v in self.assignments.items() if k[0] == demo}
            for k in removed:
                del self.assignments[k]
            self.assignments[key] = Assignment(None, dep.id)
        else:
            removed = {}
            self.assignments[key] = Assignment(version, dep.id)
        self.deployments[dep.id] = dep
        # the nodes this deployment now governs (a more specific assignment keeps the others)
        governed = [n for n in nodes if self._winning(n, demo) is self.assignments[key]]
        held = [n for n in nodes if n not in governed]
        if held:
            self._held[dep.id] = self._held_note(held)
            dep.message = self._held[dep.id]
        self._plan(dep, governed, before, release)
        superseded = [self.deployments[a.deployment_id] for a in (old, *removed.values())
                      if a is not None and a.deployment_id in self.deployments]
        writes: list[Any] = []
        for other in superseded:
            if other.state == "rolling" and other is not dep:
                writes += self._supersede(other, f"superseded by deployment {dep.id}")
        if target.scope == "all" and version is None:
            writes.append(store.clear_assignments(demo))
        writes.append(store.set_assignment(demo, target.scope, target.value, version, dep.id))
        writes.append(store.save_deployment(dep.row()))
        writes.append(store.save_rollout_nodes(asdict(r) for r in dep.nodes.values()))
        await self.submit(_all(writes), urgent=True)
        self._forget_unreferenced()
        await self.registry.record_event(None, f"deployment_{kind}",
                                         self._describe(dep) + f" by {operator}",
                                         {"deployment": dep.id, "demo": demo, "version": version,
                                          "target": self._target_name(dep), "batch": batch})
        for node in governed:
            if node.connected:
                await self.push(node)
        await self._advance(dep)
        return dep

    def _scope_version(self, demo: str, target: Target) -> str | None:
        """What a scope ran before: its own assignment, else the one above it (group, then all)."""
        keys = [(demo, target.scope, target.value)]
        if target.scope == "node":
            node = self.registry.get(target.value)
            if node is not None and node.group:
                keys.append((demo, "group", node.group))
        if target.scope != "all":
            keys.append((demo, "all", ""))
        for key in keys:
            if key in self.assignments:
                return self.assignments[key].version
        return None

    def _plan(self, dep: Deployment, nodes: list[NodeState], before: dict[str, tuple[str | None, str | None]],
              release: Release | None) -> None:
        """One row per governed node: its batch (canaries first: online nodes, by name) and state."""
        ordered = sorted(nodes, key=lambda n: (not n.connected, n.name))
        batch_index = 0
        for i, node in enumerate(ordered):
            previous_version, previous_rollout = before.get(node.id, (None, None))
            if dep.version is None and previous_version is None:
                continue  # an undeploy where it did not run: nothing to do there
            unmet = self._unmet(node, release) if release is not None else None
            if dep.batch is not None:
                batch_index = 0 if i < dep.batch else 1
            row = RolloutNode(dep.id, node.id, batch_index, previous_version, previous_rollout, "waiting")
            if unmet is not None:
                row.state, row.message = "skipped", unmet
            elif batch_index == 0:
                row.state = "pushed" if node.connected else "offline"
            dep.nodes[node.id] = row

    def _supersede(self, dep: Deployment, why: str) -> list[Any]:
        dep.state, dep.message, dep.updated_at = "superseded", why, time.time()
        for row in dep.nodes.values():
            if row.state not in FINAL:
                self._cancel_timer(row)
                row.state, row.message, row.updated_at = "superseded", why, dep.updated_at
        self._publish(dep)
        return [store.save_deployment(dep.row()), store.save_rollout_nodes(asdict(r) for r in dep.nodes.values())]

    def _forget_unreferenced(self) -> None:
        named = {a.deployment_id for a in self.assignments.values()}
        for dep_id, dep in list(self.deployments.items()):
            if dep_id not in named and dep.state != "rolling":
                for row in dep.nodes.values():
                    self._cancel_timer(row)
                del self.deployments[dep_id]
        self._held = {k: v for k, v in self._held.items() if k in self.deployments}

    # -- pushing and advancing ---------------------------------------------------------------------
    async def push(self, node: NodeState) -> None:
        """Send the node its complete desired set; start tracking the rows it now works on."""
        if not node.connected:
            return
        entries = self.desired(node)
        push_id = str(uuid.uuid4())
        self._pushes = {k: v for k, v in self._pushes.items() if v != node.id}
        self._pushes[push_id] = node.id
        if not await self._send(node, {"type": "demos_desired", "id": push_id, "demos": entries}):
            return
        rollouts = {e["rollout"] for e in entries}
        changed: list[RolloutNode] = []
        for dep in list(self.deployments.values()):
            row = dep.nodes.get(node.id)
            if row is None or row.state in FINAL or row.state == "waiting":
                continue
            winning = self._winning(node, dep.demo)
            governs = dep.id in rollouts or (dep.kind == "undeploy" and winning is not None
                                             and winning.deployment_id == dep.id)
            if not governs:
                await self._set_row(node, dep, row, "superseded", "another deployment now decides for this node")
                continue
            if row.state == "offline":
                row.state, row.updated_at = "pushed", time.time()
                changed.append(row)
                self._publish(dep)
            self._arm_timer(dep, row)
        if changed:
            self.submit_later(store.save_rollout_nodes(asdict(r) for r in changed))

    async def _send(self, node: NodeState, msg: dict[str, Any]) -> bool:
        if self.deliver is not None:
            return await self.deliver(node, msg)
        return node.send is not None and await node.send(msg)

    async def _advance(self, dep: Deployment) -> None:
        """Release the next batch, or end the deployment, once the released rows allow it. A deployment
        that was done with nodes offline is done again (or failed) once those have their result."""
        if dep.state == "done":
            await self._late_result(dep)
        while dep.state == "rolling":
            released = [r for r in dep.nodes.values() if r.batch <= dep.released]
            if any(r.state in IN_PROGRESS for r in released):
                return
            bad = [r for r in released if r.state in BAD]
            if bad:
                await self._fail(dep, bad)
                return
            if dep.released < dep.last_batch:
                await self._release_next(dep)
                continue
            await self._end(dep, "done", self._done_message(dep))

    async def _late_result(self, dep: Deployment) -> None:
        if any(r.state in IN_PROGRESS for r in dep.nodes.values()):
            return
        bad = [r for r in dep.nodes.values() if r.state in BAD]
        if bad:
            await self._fail(dep, bad)
            return
        message = self._done_message(dep)
        if message != dep.message:
            dep.message, dep.updated_at = message, time.time()
            self.submit_later(store.save_deployment(dep.row()))
            self._publish(dep)

    def _done_message(self, dep: Deployment) -> str:
        offline = sum(1 for r in dep.nodes.values() if r.state == "offline")
        parts = [f"{offline} node(s) offline: they converge when they come back"] if offline else []
        if dep.id in self._held:
            parts.append(self._held[dep.id])
        return "; ".join(parts)

    def _held_note(self, held: list[NodeState]) -> str:
        """Why a group or fleet deployment leaves these nodes as they are: a node-level assignment (a
        `--node` deploy, or a booking's) decides for them, whatever the group gets."""
        names = sorted(n.name for n in held)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (f"{len(held)} node(s) left as they are: a node-level deployment or a booking decides for them"
                f" ({shown})")

    async def _release_next(self, dep: Deployment) -> None:
        dep.released += 1
        dep.updated_at = time.time()
        batch = [r for r in dep.nodes.values() if r.batch == dep.released and r.state == "waiting"]
        for row in batch:
            node = self.registry.get(row.node_id)
            row.state = "pushed" if node is not None and node.connected else "offline"
            row.updated_at = dep.updated_at
        await self.submit(_all([store.save_deployment(dep.row()),
                                store.save_rollout_nodes(asdict(r) for r in batch)]))
        self._publish(dep)
        for row in batch:
            node = self.registry.get(row.node_id)
            if node is not None and node.connected:
                await self.push(node)

    async def _fail(self, dep: Deployment, bad: list[RolloutNode]) -> None:
        first = bad[0]
        held = sum(1 for r in dep.nodes.values() if r.state == "waiting")
        why = f"{self._node_name(first.node_id)}: {first.state}" + (f" ({first.message})" if first.message else "")
        if held:
            why += f"; the other {held} node(s) keep " + (f"version {first.previous_version}"
                                                         if first.previous_version else "what they run")
        await self._end(dep, "failed", why)

    async def _end(self, dep: Deployment, state: str, message: str) -> None:
        dep.state, dep.message, dep.updated_at = state, message, time.time()
        await self.submit(store.save_deployment(dep.row()))
        self._publish(dep)
        await self.registry.record_event(None, f"deployment_{state}",
                                         self._describe(dep) + f": {state}" + (f": {message}" if message else ""),
                                         {"deployment": dep.id, "demo": dep.demo, "version": dep.version,
                                          "state": state})
        self._forget_unreferenced()

    # -- rows and their timers -------------------------------------------------------------------
    def _row_for(self, node: NodeState, msg: dict[str, Any]) -> RolloutNode | None:
        rollout = msg.get("rollout")
        if rollout:
            dep = self.deployments.get(rollout)
            return dep.nodes.get(node.id) if dep is not None and dep.demo == msg["demo"] else None
        # `removed` comes without a rollout: the undeploy that governs this node
        for dep in self.deployments.values():
            row = dep.nodes.get(node.id)
            if dep.kind == "undeploy" and dep.demo == msg["demo"] and row is not None and row.state not in FINAL:
                return row
        return None

    async def _set_row(self, node: NodeState, dep: Deployment, row: RolloutNode, state: str, message: str) -> None:
        row.state, row.message, row.updated_at = state, message, time.time()
        self._cancel_timer(row)
        self.submit_later(store.save_rollout_nodes([asdict(row)]))
        self._publish(dep)
        await self._advance(dep)  # before any await: a reader sees the row and its deployment agree
        await self._final_event(node, dep, row)

    def _timeout(self, dep: Deployment, row: RolloutNode) -> float:
        release = self.catalog.get(dep.demo, dep.version) if dep.version else None
        manifest = release.manifest if release else {}
        if row.state == "starting":
            return float(manifest.get("start_timeout_s", 30)) + self.install_timeout
        if row.state == "stopping_old":
            return float(manifest.get("stop_grace_s", 10)) + self.install_timeout
        return self.install_timeout

    def _arm_timer(self, dep: Deployment, row: RolloutNode) -> None:
        self._cancel_timer(row)
        timeout = self._timeout(dep, row)
        state = row.state
        loop = asyncio.get_running_loop()
        self._timers[(row.deployment_id, row.node_id)] = loop.call_later(
            timeout, lambda: asyncio.ensure_future(self._expire(dep, row, state, timeout)))

    def _cancel_timer(self, row: RolloutNode) -> None:
        timer = self._timers.pop((row.deployment_id, row.node_id), None)
        if timer is not None:
            timer.cancel()

    async def _expire(self, dep: Deployment, row: RolloutNode, state: str, timeout: float) -> None:
        async with self._lock:
            if row.state != state or self.deployments.get(dep.id) is not dep:
                return
            self._timers.pop((row.deployment_id, row.node_id), None)
            node = self.registry.get(row.node_id)
            what = "no answer to the push" if state == "pushed" else f"no news in state {state}"
            message = f"{what} for {timeout:.0f} s"
            if node is None:
                return
            await self._set_row(node, dep, row, "lost", message)

    async def _final_event(self, node: NodeState, dep: Deployment, row: RolloutNode) -> None:
        version = dep.version or row.previous_version or ""
        await self.registry.record_event(
            node, f"demo_install_{row.state}",
            f"{dep.demo} {version}: {row.state}" + (f": {row.message}" if row.message else ""),
            {"demo": dep.demo, "version": dep.version, "deployment": dep.id, "state": row.state})

    # -- views ---------------------------------------------------------------------------------
    def _publish(self, dep: Deployment) -> None:
        if self.registry.bus.has_audience():  # a view of every node row: only built for someone (any replica's)
            self.registry.bus.publish({"type": "deployment", "deployment": self.deployment_view(dep)})

    def _node_name(self, node_id: str) -> str:
        node = self.registry.get(node_id)
        return node.name if node else node_id

    def _target_name(self, dep: Deployment) -> str:
        if dep.scope == "node":
            return self._node_name(dep.target)
        return dep.target if dep.scope == "group" else "all"

    def _describe(self, dep: Deployment) -> str:
        where = {"node": "node ", "group": "group ", "all": ""}[dep.scope] + self._target_name(dep)
        if dep.kind == "undeploy":
            return f"undeploy {dep.demo} from {where}"
        batch = f" in batches of {dep.batch}" if dep.batch else ""
        return f"{dep.kind} {dep.demo} {dep.version} to {where}{batch}"

    def _status_row(self, node_id: str, demo: str, now: float) -> dict[str, Any]:
        node = self.registry.get(node_id)
        status = self.status.get((node_id, demo))
        effective = self._effective(node, demo) if node is not None else None
        install: dict[str, Any] | None = None
        latest = 0.0
        for dep in self.deployments.values():
            row = dep.nodes.get(node_id)
            if dep.demo == demo and row is not None and row.updated_at > latest:
                latest = row.updated_at
                install = {"deployment": dep.id, "version": dep.version, "state": row.state, "message": row.message,
                           "bytes": row.bytes, "total": row.total, "updated_at": row.updated_at}
        alive = status is not None and status["state"] in ("running", "healthy", "unhealthy") and status["pid"]
        return {
            "node": node_id, "node_name": node.name if node else node_id,
            "node_state": node.state if node else "unknown", "demo": demo,
            "desired_version": effective[0].version if effective else None,
            "version": status["version"] if status else None,
            "state": status["state"] if status else None,
            "pid": status["pid"] if status else None,
            "restarts": status["restarts"] if status else 0,
            "since": status["since"] if status else None,
            "uptime": (now - status["since"]) if alive and status and status["since"] else None,
            "last_heartbeat": status["last_heartbeat"] if status else None,
            "last_exit": status["last_exit"] if status else None,
            "message": status["message"] if status else "",
            "install": install,
        }


def _node_view(row: RolloutNode, name: str) -> dict[str, Any]:
    out = asdict(row)
    del out["deployment_id"]
    out["node"] = out.pop("node_id")
    out["node_name"] = name
    return out


def _all(writes: Iterable[Any]) -> Any:
    """Several writes in one commit (the writer runs a closure in one SAVEPOINT)."""
    writes = list(writes)

    def run(conn: Any) -> None:
        for write in writes:
            write(conn)

    return run
