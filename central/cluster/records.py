"""Node records across replicas (issue 18, docs/architecture.md "Several replicas").

Every replica keeps every node's record in its registry (name, group, credentials, maintenance,
revocation). When one replica changes a record (an enrollment, a rename, a re-enrollment, a
maintenance switch, a revocation) it stores it and says so on `dvic_nodes`; every other replica
reads the row again and applies it, so a node enrolled through one replica may connect to any, and a
revoked node is refused and cut off everywhere. After a gap on the bus every record is read again.
On SQLite there is no other replica: nothing is sent.
"""

from __future__ import annotations

import logging
from typing import Any

from ..queries import Queries
from ..registry import Registry
from ..tasks import Background
from .pgbus import BusError
from .replica import Cluster

log = logging.getLogger(__name__)

CHANNEL = "dvic_nodes"


class NodeRecords:
    def __init__(self, cluster: Cluster, registry: Registry, queries: Queries) -> None:
        self.cluster = cluster
        self.registry = registry
        self.queries = queries
        self._background = Background("a node record from another replica")
        self.applied = 0  # records applied from other replicas (tests)

    def start(self) -> None:
        """Before the bus starts: listen for the others' changes, and tell them ours."""
        if not self.cluster.shared:
            return
        self.cluster.bus.subscribe(CHANNEL, self._heard)
        self.cluster.bus.on_gap(self._gap)
        self.registry.record_observers.append(self._changed_here)

    def _gap(self) -> None:
        self._background.spawn(self._reload_all())

    def _changed_here(self, node_id: str) -> None:
        self._background.spawn(self._tell(node_id))

    async def close(self) -> None:
        await self._background.close()

    async def _tell(self, node_id: str) -> None:
        try:
            await self.cluster.bus.publish(CHANNEL, {"replica": self.cluster.replica, "node": node_id})
        except BusError as exc:  # the others read every record again after the gap this leaves
            log.warning("could not tell the other replicas that node %s changed: %s", node_id, exc)

    def _heard(self, message: dict[str, Any]) -> None:
        if message.get("replica") != self.cluster.replica and isinstance(message.get("node"), str):
            self._background.spawn(self._apply(message["node"]))

    async def _apply(self, node_id: str) -> None:
        row = await self.queries.node(node_id)
        if row is not None:
            self.registry.refresh(row)
            self.applied += 1

    async def _reload_all(self) -> None:
        for row in await self.queries.nodes():
            self.registry.refresh(row)
