"""What a running server loads: an installation on SQLite never loads asyncpg (2 MB of RSS it
would carry for nothing; docs/performance.md, "memory per node")."""

from __future__ import annotations

from pathlib import Path

from tests.support import postgres
from tests.support.server import CentralServer


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_server_on_sqlite_never_loads_asyncpg(shared_server: CentralServer) -> None:
    shared_server.enroll("footprint-a")
    status, body = shared_server.api("POST", "/api/v1/nodes", {"name": "footprint-a", "kind": "desktop"})
    assert (status, body["error"]["code"]) == (409, "name_taken")
    assert shared_server.proc is not None
    loaded = "/asyncpg/" in _mapped(shared_server.proc.pid)
    assert loaded == postgres.wanted()
