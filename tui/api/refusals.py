"""Why the server refused a shell or a tunnel, in words an operator can act on. No I/O.

A refused websocket upgrade carries a status and, from this server, a code and message; about the
caller's account or the node's state the API is asked for details first. `explain` says either the
error to show or which read it needs next ("me" or "node"); the transport makes that read (GET /me,
GET /nodes/{node}: read-only, so explaining never opens anything) and asks again:

    known = {}
    while isinstance(step := explain(exc, node, doing, otherwise, known), str):
        known[step] = <the answer of that read>        # a refused read: its error is the answer
"""

from __future__ import annotations

from dvic_core.constants import RANK
from tui.api.core import Json, said_why
from tui.api.errors import ApiError

# Refusals about the caller's account, which `explain` details (role, approval, maintenance).
ACCOUNT_REFUSALS = frozenset({"forbidden", "pending_approval", "maintenance"})


def explain(exc: ApiError, node: str, doing: str, otherwise: str = "",
            known: dict[str, Json] | None = None) -> ApiError | str:
    """The error to show for `exc`, refused while trying to `doing` on `node`, or the read it needs.

    `otherwise` ends the message of a refusal the details do not explain (e.g. a port not allowed)."""
    known = known or {}
    me, detail = known.get("me"), known.get("node")
    status = exc.status
    if status == 401:
        return ApiError(401, "unauthorized", "the server does not know this token")
    if status == 404:
        # The read raises the server's own "no such node" error, which is then the answer.
        return "node" if detail is None else ApiError(404, "not_found", f"cannot {doing}: not found")
    if status == 403 and exc.code in ACCOUNT_REFUSALS:
        if me is None:
            return "me"
        if me.get("status") != "active":
            return ApiError(403, "pending_approval", f"your account {me.get('name')!r} is not active yet")
        if RANK.get(str(me.get("role")), 0) < RANK["operator"]:
            return ApiError(403, "forbidden", f"your role is {me.get('role')!r}: only operators and admins may {doing}")
        if detail is None:
            return "node"
        if detail.get("state") == "maintenance" and me.get("role") != "admin":
            return ApiError(403, "maintenance", f"node {detail.get('name')!r} is in maintenance: only admins may "
                                                f"{doing} on it")
        return ApiError(403, "forbidden", f"the server does not allow you to {doing}{otherwise}")
    if status == 409:
        if detail is None:
            return "node"
        return ApiError(409, "node_offline", f"node {detail.get('name')!r} is {detail.get('state')}: cannot {doing}")
    if status == 429 and exc.code == "too_many":  # an older server, which did not say what
        return ApiError(429, "too_many", f"node {node!r} has too many sessions open: cannot {doing}")
    if said_why(exc):
        return ApiError(status, exc.code, f"cannot {doing}: {exc.message}")
    return exc
