"""What the calendar needs from a feature that may land after it: deployments (issue 14). A small
Protocol; the server hands the calendar an implementation when it has one (Calendar.deployments),
and until then a runbook step or a booking that needs it is refused when it is created, saying so
(never at firing time).

The alerts (issue 15) need nothing from here the other way round: their engine asks the calendar
`quiet(group, severity)` (central/calendar/service.py, docs/calendar.md "Silencing").
"""

from __future__ import annotations

from typing import Protocol


class Deployments(Protocol):
    """Desired state of demos per group (issue 14's server half: deploy / undeploy / rollback)."""

    def knows(self, demo: str, version: str | None = None) -> bool:
        """Whether a release of `demo` (at `version`, when given) exists to deploy."""
        ...

    async def deploy(self, group: str, demo: str, version: str, by: str) -> str:
        """Make `demo@version` desired on `group`; returns a short description of what changed."""
        ...

    async def undeploy(self, group: str, demo: str, by: str) -> str:
        ...

    async def deploy_nodes(self, node_ids: list[str], demo: str, version: str, by: str) -> str:
        """Make `demo@version` desired on these nodes only (a booking's deployment)."""
        ...

    async def restore_nodes(self, node_ids: list[str], by: str) -> str:
        """Give these nodes back their group's desired state (a booking's end)."""
        ...


NO_DEPLOYMENTS = ("this server has no deployments yet (they arrive with the demos feature, issue 14): "
                  "{what}")
