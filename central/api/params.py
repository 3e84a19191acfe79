"""Request helpers the route schemas do not cover, and the query fields several routes share.

The schemas check what a parameter is (central/routes.py); what it refers to is looked up here:
the node a path or a `node` parameter names (404 `no_such_node`), the server's services.
"""

from __future__ import annotations

from aiohttp import web

from dvic_core.schema import Csv, Int, Number, Str

from ..auth import ApiError
from ..registry import NodeState
from ..services import SERVICES, Services

MAX_LIMIT = 1000


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def node_named(services: Services, ref: str) -> NodeState:
    """The node with this id or name."""
    node = services.registry.get(ref)
    if node is None:
        raise ApiError(404, "no_such_node", f"no node with id or name {ref!r}")
    return node


def find_node(request: web.Request) -> NodeState:
    """The node the route's `{node}` path part names."""
    return node_named(services(request), request.match_info["node"])


def node_id(services: Services, ref: str | None) -> str | None:
    """The id of the node a `node` query parameter names (name or id); None when not given."""
    return node_named(services, ref).id if ref else None


# -- query fields ----------------------------------------------------------------------------------
def limit(default: int = 100) -> Int:
    return Int(min=1, max=MAX_LIMIT, default=default, doc="how many at most")


def node_ref(doc: str = "a node's name or id") -> Str:
    return Str(doc=doc)


def node_refs() -> Csv:
    return Csv(Str(), doc="node names or ids, comma-separated")


def since_until(what: str) -> dict[str, Number]:
    """`from` and `to`, in Unix seconds."""
    return {"from": Number(min=0, unit="Unix seconds", doc=f"{what} from this time"),
            "to": Number(min=0, unit="Unix seconds", doc=f"{what} until this time")}


def cursor() -> Str:
    return Str(doc="the next_cursor of the previous page (opaque)")
