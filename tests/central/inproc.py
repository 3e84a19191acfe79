"""The server's application in the test's own process: `create_app(config)` behind aiohttp's
TestServer on 127.0.0.1, with a real SQLite database in a temporary directory.

For handler-level tests (a route's answers to good and bad input), where a server subprocess per
test file would cost more than the tests; everything the app does is real (writer, registry,
auth, audit). Plain HTTP: nodes authenticate with their token, as in development mode.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from central.app import create_app
from central.config import Config
from central.services import SERVICES, Services


class InProcess:
    """A client of the in-process app, as the admin unless told otherwise."""

    def __init__(self, client: TestClient[Any, Any], data_dir: Path) -> None:
        self.client = client
        self.data_dir = data_dir
        self.admin = (data_dir / "admin.token").read_text().strip()
        self._enrolled = 0

    @property
    def services(self) -> Services:
        return self.client.app[SERVICES]  # type: ignore[index]

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                   raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, decoded JSON answer or None); `token` "" sends no Authorization header."""
        token = self.admin if token is None else token
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.client.request(method, path, data=data, headers=sent) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, None

    async def token_for(self, name: str, role: str) -> str:
        status, body = await self.call("POST", "/api/v1/operators", {"name": name, "role": role})
        assert status == 201, body
        token: str = body["token"]
        return token

    async def enroll(self, prefix: str = "node", **fields: Any) -> dict[str, Any]:
        """A new node (a fresh name each call); its bundle."""
        self._enrolled += 1
        status, bundle = await self.call("POST", "/api/v1/nodes", {"name": f"{prefix}-{self._enrolled}", **fields})
        assert status == 201, bundle
        return bundle  # type: ignore[no-any-return]


async def in_process(data_dir: Path, **settings: Any) -> AsyncIterator[InProcess]:
    """Run the app until the generator is closed (use as an async fixture's body)."""
    config = Config(data_dir=data_dir, tls=False, **settings)
    async with TestServer(create_app(config), host="127.0.0.1", port=0) as server:
        async with TestClient(server) as client:
            yield InProcess(client, data_dir)
