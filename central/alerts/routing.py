"""Where a notice goes: routes from (group, minimum severity) to channels (plain functions).

With no route at all, every channel receives every notice (one `dvic channel add` is enough to
start). Once routes exist, a notice goes to the channels of the routes it matches, each channel
once; a notice no route matches goes nowhere (add a `* *` route to keep a catch-all).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .model import SEVERITIES, Alert

ANY = "*"
# A route's severity is a minimum: "warning" takes warnings and criticals.
SEVERITY_RANK: dict[str, int] = {"info": 1, "warning": 2, "critical": 3}
ROUTE_SEVERITIES: tuple[str, ...] = (ANY, *SEVERITIES)
DEFAULT_ROUTE = "all"  # the grouping key of the implicit route when none is configured


@dataclass(frozen=True)
class Route:
    id: int
    group: str      # "*": any group; "": nodes without a group
    severity: str   # "*" or the minimum severity
    channel: str

    def matches(self, alert: Alert) -> bool:
        if self.group != ANY and self.group != (alert.group or ""):
            return False
        return self.severity == ANY or SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[self.severity]

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Higher first: a named group, then a higher minimum severity, then the older route."""
        return (self.group != ANY, SEVERITY_RANK.get(self.severity, 0), -self.id)


def targets(alert: Alert, routes: Iterable[Route], channels: Iterable[str]) -> dict[str, str]:
    """channel name -> the route key its notices group under, for this alert."""
    routes = list(routes)
    if not routes:
        return dict.fromkeys(channels, DEFAULT_ROUTE)
    best: dict[str, Route] = {}
    for route in routes:
        if route.matches(alert):
            held = best.get(route.channel)
            if held is None or route.specificity > held.specificity:
                best[route.channel] = route
    return {channel: f"route{route.id}" for channel, route in best.items()}
