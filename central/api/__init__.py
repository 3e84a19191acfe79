"""The operator API (/api/v1), one module per resource family; each declares its routes on
central.routes with their roles and parameter schemas. Importing this package registers them all."""

from ..calendar import api as calendar_api  # noqa: F401  (the calendar's routes: hours, runbooks, bookings)
from . import (  # noqa: F401
    actions,
    alerts,
    commands,
    demos,
    history,
    nodes,
    notifications,
    operators,
    public,
    relays,
    release,
)
