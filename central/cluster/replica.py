"""This server among its replicas: its name, the bus to the others (issue 18, docs/architecture.md
"Several replicas").

On PostgreSQL any number of `dvic-central` processes may share the database; each has a name
(`--replica`, default the host's name) that is its address on the bus (`dvic_r_<name>`) and the
owner recorded for the node sessions it holds. On SQLite there is one process: `LocalBus` has the
bus's interface and carries nothing, since there is nobody to carry it to.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .pgbus import Handler, NoReply, PgBus

# A replica's name is part of a LISTEN channel name (at most 63 bytes) and of log lines: keep it short and plain.
REPLICA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


class ReplicaNameError(ValueError):
    pass


def check_replica_name(name: str) -> str:
    if not REPLICA_NAME.fullmatch(name):
        raise ReplicaNameError(f"a replica name is 1-40 lower-case letters, digits, '-' or '_', starting with a"
                               f" letter or digit, not {name!r}")
    return name


def default_replica_name() -> str:
    """The host's name made fit for a replica name (two replicas on one host need --replica)."""
    plain = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-_")
    return (plain or "central")[:40]


class ReplicaBus(Protocol):
    """What a replica uses to reach the others (PgBus; LocalBus on SQLite)."""

    replica: str

    def subscribe(self, channel: str, handler: Handler) -> None: ...
    def on_gap(self, handler: Callable[[], None]) -> None: ...
    def responder(self, kind: str, answer: Callable[[dict[str, Any]], Any]) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    async def request(self, replica: str, kind: str, message: dict[str, Any],
                      timeout: float = ...) -> dict[str, Any]: ...


class LocalBus:
    """The one server on SQLite: no other replica. Subscriptions never fire, publishing goes
    nowhere, a request has nobody to answer it."""

    def __init__(self, replica: str) -> None:
        self.replica = replica

    def subscribe(self, channel: str, handler: Handler) -> None:
        pass

    def on_gap(self, handler: Callable[[], None]) -> None:
        pass

    def responder(self, kind: str, answer: Callable[[dict[str, Any]], Any]) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        pass

    async def request(self, replica: str, kind: str, message: dict[str, Any],
                      timeout: float = 0.0) -> dict[str, Any]:
        raise NoReply(f"replica {replica!r}: this server is the only one (SQLite)")


@dataclass
class Cluster:
    """This replica's name and bus; `shared` when other replicas may exist (PostgreSQL)."""

    replica: str
    bus: ReplicaBus
    shared: bool


def open_cluster(replica: str, database_url: str | None) -> Cluster:
    """The bus on the PostgreSQL at `database_url`, or the local one for SQLite (None)."""
    if database_url is None:
        return Cluster(replica, LocalBus(replica), shared=False)
    return Cluster(replica, PgBus(database_url, replica), shared=True)
