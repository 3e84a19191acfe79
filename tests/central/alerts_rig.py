"""An alert engine on a real SQLite database, the real batching writer, registry and bus (in-process):
the engine's clock is a value the test moves, so "for" durations and reminders need no sleeping."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiosqlite

from central import db, store
from central.alerts.engine import AlertEngine
from central.alerts.model import Notice
from central.bus import Bus
from central.registry import NodeState, Registry
from central.writer import Writer
from tests.support.database import started_writer


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@dataclass
class RecordingSink:
    notices: list[Notice] = field(default_factory=list)

    def persist(self, conn: sqlite3.Connection, notices: Sequence[Notice]) -> object:
        return list(notices)

    def committed(self, persisted: object) -> None:
        self.notices.extend(cast("list[Notice]", persisted))

    def kinds(self) -> list[tuple[str, str, str]]:
        return [(n.kind, n.alert.rule, n.alert.subject) for n in self.notices]

    def take(self) -> list[tuple[str, str, str]]:
        kinds = self.kinds()
        self.notices.clear()
        return kinds


@dataclass
class Rig:
    path: Path
    writer: Writer
    read_db: aiosqlite.Connection
    bus: Bus
    registry: Registry
    engine: AlertEngine
    sink: RecordingSink
    clock: Clock
    release: list[str]

    async def node(self, name: str, *, group: str = "hall-a", kind: str = "raspberry", online: bool = True) -> NodeState:
        node_id = str(uuid.uuid4())
        now = self.clock()
        await self.writer.submit(store.create_node(node_id, name, kind, group, now, "fp-" + name, "", "tok-" + name))
        node = NodeState(id=node_id, name=name, kind=kind, group=group, created_at=now, cert_fp="fp-" + name,
                         token_hash="tok-" + name)
        self.registry.add(node)
        if online:
            await self.registry.heard(node)
            node.daemon_version = self.release[0]
        return node

    async def after(self, seconds: float) -> list[tuple[str, str, str]]:
        """The clock moves on `seconds`, then the engine makes a pass: the notices not taken yet."""
        self.clock.advance(seconds)
        await self.engine.evaluate()
        return self.sink.take()

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self.read_db.execute(sql, args) as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def restart(self) -> AlertEngine:
        """A new engine on the same database (what a server restart does)."""
        engine = make_engine(self)
        await engine.load(self.read_db)
        self.registry.event_observers[:] = [engine.on_event]
        self.engine = engine
        return engine


def make_engine(rig: Rig) -> AlertEngine:
    return AlertEngine(rig.writer, rig.registry, rig.bus, interval=10, reminder_s=600, startup_grace_s=0,
                       release=lambda: rig.release[0], sink=rig.sink, clock=rig.clock)


async def open_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path = tmp_path / db.DB_FILE
    writer = await started_writer(path, commit_interval=0.0)
    read_db = await db.connect(path)
    bus = Bus()
    registry = Registry(writer, bus, offline_after=15, keepalive_interval=5)
    rig = Rig(path, writer, read_db, bus, registry, None, RecordingSink(), Clock(time.time()),  # type: ignore[arg-type]
              ["1.0.0"])
    rig.engine = make_engine(rig)
    await rig.engine.load(read_db)
    registry.event_observers.append(rig.engine.on_event)
    try:
        yield rig
    finally:
        await writer.close()
        await read_db.close()
