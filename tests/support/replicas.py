"""Several real `dvic-central` replicas on one PostgreSQL database, sharing one data dir (issue 18),
and what the tests connect to them: a node pointed at a chosen replica, an operator's live stream
on a chosen replica, and a TCP balancer (as HAProxy `mode tcp`: TLS passes through) that sends
each new connection to the first replica that accepts it.

    with Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2) as (r1, r2):
        bundle = r1.enroll("pi")
        async with connected(toward(bundle, r2)) as node: ...   # tests/support/nodes.py
        enrolled_daemon(r1, home, bundle_overrides=toward_fields(r2))  # a real daemon on r2
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from .server import CentralServer
from .wait import async_wait_for, wait_for


class Replicas:
    """`count` CentralServers named r1, r2, ... (`--replica rN`, log file `<data>-rN-server.log`)
    on `database`, started one after the other: they share the data dir's listen.json (and its CA,
    keys and admin token, written by the first). `options` as CentralServer's."""

    def __init__(self, data_dir: Path, database: str, count: int = 2, **options: Any) -> None:
        extra = tuple(options.pop("extra_args", ()))
        self.servers = [CentralServer(data_dir, database=database, name=f"r{i}",
                                      extra_args=("--replica", f"r{i}", *extra), **options)
                        for i in range(1, count + 1)]

    def start(self) -> list[CentralServer]:
        with self._stopped_on_failure():
            for server in self.servers:
                server.start()
        return self.servers

    @contextlib.contextmanager
    def _stopped_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.stop()
            raise

    def start_together(self) -> list[CentralServer]:
        """Start every server at the same instant (first-start races on one data dir): each child
        imports the server, reports at a gate (a Unix socket) and waits there; all are let
        through at once when all have reported."""
        with tempfile.TemporaryDirectory(prefix="dvic-gate-") as gate_dir, socket.socket(socket.AF_UNIX) as gate:
            gate_path = Path(gate_dir) / "gate"
            gate.bind(str(gate_path))
            gate.listen(len(self.servers))
            gate.settimeout(120)
            with self._stopped_on_failure():
                for server in self.servers:
                    server.command = _gated(server.command, gate_path)  # type: ignore[method-assign]
                    server.launch()
                    del server.command  # a restart goes straight in
                waiting = [gate.accept()[0] for _ in self.servers]
                for conn in waiting:
                    conn.sendall(b"go")
                    conn.close()
                for server in self.servers:
                    server.wait_listening()
        return self.servers

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> list[CentralServer]:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# A child at the gate: the server's module imported (the slow part of starting), then wait for the
# go, then run its `main` with the server's arguments.
_GATED = ("import importlib, socket, sys\n"
          "gate, module = sys.argv[1:3]\n"
          "main = importlib.import_module(module).main\n"
          "s = socket.socket(socket.AF_UNIX); s.connect(gate); s.recv(1); s.close()\n"
          "sys.exit(main(sys.argv[3:]))\n")


def _gated(command: Callable[[], list[str]], gate: Path) -> Callable[[], list[str]]:
    """`command` (python -m MODULE ARGS...) run through _GATED."""
    def gated() -> list[str]:
        python, dash_m, module, *args = command()
        assert dash_m == "-m", command()
        return [python, "-c", _GATED, str(gate), module, *args]
    return gated


def toward_fields(server: CentralServer) -> dict[str, object]:
    """The bundle fields that point a node at `server` (enrolled on any replica: same CA, same node)."""
    return {"server_url": server.url, "ws_url": server.url.replace("https://", "wss://", 1) + "/api/v1/node/ws"}


def toward(bundle: dict[str, Any], server: CentralServer) -> dict[str, Any]:
    """A copy of `bundle` whose node connects to `server`."""
    return {**bundle, **toward_fields(server)}


class StreamClient:
    """An operator's `/api/v1/stream` on one replica, read all the time into `frames` (decoded),
    so a test can wait for what it expects and then look at everything that came."""

    def __init__(self, server: CentralServer, logs: Sequence[str] = ()) -> None:
        self.server = server
        self.logs = list(logs)
        self.frames: list[dict[str, Any]] = []
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StreamClient:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.server.url + "/api/v1/stream", ssl=self.server.ssl_context,
                                               headers={"Authorization": f"Bearer {self.server.admin_token}"})
        self._reader = asyncio.create_task(self._read(self._ws))
        await async_wait_for(lambda: self.of_type("hello"), 20, "the stream's hello")
        if self.logs:
            await self.subscribe(self.logs)
            await async_wait_for(lambda: self.of_type("subscribed"), 20, "the stream's subscribed")
        return self

    async def subscribe(self, logs: Sequence[str]) -> None:
        """Ask for these nodes' lines (the answer, `subscribed`, comes into `frames`)."""
        assert self._ws is not None
        await self._ws.send_str(json.dumps({"type": "subscribe", "logs": list(logs)}))

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._http is not None:
            await self._http.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    def node_updates(self, node_id: str) -> list[dict[str, Any]]:
        """Every summary of this node the stream carried (its hello's, then `node` frames), in order."""
        out = [n for f in self.of_type("hello") for n in f["nodes"] if n["id"] == node_id]
        return out + [f["node"] for f in self.of_type("node") if f["node"]["id"] == node_id]

    def latest(self, node_id: str) -> dict[str, Any] | None:
        updates = self.node_updates(node_id)
        return updates[-1] if updates else None

    def events(self, node_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [f["event"] for f in self.of_type("event")
                if f["event"]["node"] == node_id and (kind is None or f["event"]["kind"] == kind)]

    def log_seqs(self, node_id: str) -> list[int]:
        return [line["seq"] for f in self.of_type("logs") for line in f["lines"] if line["node"] == node_id]


class Balancer:
    """A TCP forwarder on 127.0.0.1 (port 0) in a thread of its own: each new connection goes to the
    first backend (host, port) that accepts it, bytes copied both ways untouched, as a load balancer
    in `mode tcp` does. A node keeps one URL and reaches whichever replica is alive."""

    def __init__(self, backends: Callable[[], Sequence[tuple[str, int]]]) -> None:
        self.backends = backends
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-balancer", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> Balancer:
        self._thread.start()
        listening = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = listening.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0, family=socket.AF_INET)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks(self._loop) - {asyncio.current_task()}:
            task.cancel()

    async def _forward(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for host, port in self.backends():
            try:
                server_r, server_w = await asyncio.open_connection(host, port)
            except OSError:
                continue
            await asyncio.gather(_copy(client_r, server_w), _copy(server_r, client_w), return_exceptions=True)
            return
        client_w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.contextmanager
def balanced(servers: Sequence[CentralServer]) -> Iterator[Balancer]:
    """A Balancer in front of `servers` (tried in this order, the dead ones skipped)."""

    def backends() -> list[tuple[str, int]]:
        return [("127.0.0.1", int(s.url.rsplit(":", 1)[1])) for s in servers if s.running()]

    with Balancer(backends) as balancer:
        yield balancer


def known_on(server: CentralServer, node: str, timeout: float = 20.0) -> dict[str, Any]:
    """Until `server` knows the node (enrolled through another replica); returns its detail."""
    def known() -> dict[str, Any]:
        status, body = server.api("GET", f"/api/v1/nodes/{node}")
        return dict(body) if status == 200 else {}

    return wait_for(known, timeout, f"{server.name or server.url} to know node {node}")


def behind(balancer: Balancer) -> dict[str, object]:
    """The bundle fields that point a node at the balancer (so at whichever replica is alive)."""
    return {"server_url": balancer.url(), "ws_url": balancer.url().replace("https://", "wss://", 1) + "/api/v1/node/ws"}


async def job_leader(server: CentralServer, job: str) -> str:
    """The replica running `job` now ("" none), from PostgreSQL's advisory locks (cluster/leader.py)."""
    import asyncpg

    from central.cluster.leader import holders

    conn = await asyncpg.connect(server.database or "")
    try:
        return (await holders(conn, [job])).get(job, "")
    finally:
        await conn.close()
