"""Helpers of the notification tests: alerts and notices, a real migrated database with central's
writer, an SMTP server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from central import db
from central.alerts.model import Alert, Notice, NoticeKind, Severity
from central.writer import Writer
from tests.support.database import started_writer
from tests.support.receivers import SmtpServer


def alert(node: str = "pi-12", *, group: str | None = "hall-a", severity: Severity = "critical",
          rule: str = "node_offline", alert_id: int = 1, summary: str | None = None) -> Alert:
    return Alert(id=alert_id, rule=rule, subject=f"node:{node}", node=node, group=group, kind="pi",
                 severity=severity, state="firing", summary=summary or f"{node} offline for 95 s",
                 started=time.time())


def notice(node: str = "pi-12", kind: NoticeKind = "firing", **fields: object) -> Notice:
    return Notice(kind=kind, alert=alert(node, **fields), at=time.time())  # type: ignore[arg-type]


@dataclass
class Database:
    path: Path
    writer: Writer
    read_db: aiosqlite.Connection


async def open_database(data_dir: Path) -> Database:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / db.DB_FILE
    writer = await started_writer(path, 0.005)
    read_db = await db.connect(path)
    return Database(path, writer, read_db)


async def close_database(database: Database) -> None:
    await database.writer.close()
    await database.read_db.close()


def smtp_server(tmp_path: Path, security: str, users: dict[str, str] | None = None) -> SmtpServer:
    return SmtpServer(tmp_path / f"smtp-{security}", security, users).start()
