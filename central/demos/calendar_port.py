"""The calendar's Deployments port (central/calendar/ports.py) on top of DeploymentHub.

Runbook steps `deploy DEMO@VERSION` / `undeploy DEMO` change the group's desired state; a booking's
`--deploy NAME@VERSION` is a node-scope assignment on each booked node (node scope beats group, so a
group-wide deploy while the booking holds leaves those nodes on the booking's release), and the
booking's end drops the node-scope assignments so the group's desired state applies again.
"""

from __future__ import annotations

from .catalog import Catalog
from .deployments import DeployError, DeploymentHub, Target


class CalendarDeployments:
    """Implements central.calendar.ports.Deployments."""

    def __init__(self, hub: DeploymentHub, catalog: Catalog) -> None:
        self.hub = hub
        self.catalog = catalog

    def knows(self, demo: str, version: str | None = None) -> bool:
        if version is not None:
            return self.catalog.get(demo, version) is not None
        return bool(self.catalog.versions(demo))

    async def deploy(self, group: str, demo: str, version: str, by: str) -> str:
        dep = await self.hub.deploy(demo, version, Target("group", group), by)
        return f"deployment {dep.id}: {demo} {version} desired on group {group}"

    async def undeploy(self, group: str, demo: str, by: str) -> str:
        dep = await self.hub.undeploy(demo, Target("group", group), by)
        return f"deployment {dep.id}: {demo} removed from group {group}"

    async def deploy_nodes(self, node_ids: list[str], demo: str, version: str, by: str) -> str:
        """Each node on its own: one the hub refuses (revoked since the booking was made) does not
        keep the others from the release, and those are restored at the end as usual."""
        ids, refused = [], []
        for node_id in node_ids:
            try:
                ids.append((await self.hub.deploy(demo, version, Target("node", node_id), by)).id)
            except DeployError as exc:
                refused.append(exc.message)
        if not ids:
            raise DeployError(409, "not_deployed", "; ".join(refused) or "no node to deploy to")
        return (f"{demo} {version} desired on {len(ids)} node(s) (deployment(s) {', '.join(ids)})"
                + (f"; refused: {'; '.join(refused)}" if refused else ""))

    async def restore_nodes(self, node_ids: list[str], by: str) -> str:
        demos = await self.hub.clear_nodes(node_ids, by)
        if not demos:
            return "nothing to restore: no node-level deployment on these nodes"
        return f"{', '.join(demos)}: back to the group's desired state on {len(node_ids)} node(s)"
