"""Supervised demos (issue 14) against a thin stand-in of the server: releases, real demo processes.

`DemoServer` speaks the node protocol over wss:// with mutual TLS (the node's client certificate is
required, as on the real server's mTLS listener): it welcomes the daemon, pushes the desired set
(`demos_desired`) after every welcome and whenever a test changes it, records what the daemon sends,
and serves release archives at /api/v1/node/releases/{sha256} with aiohttp's FileResponse (HTTP Range,
206). It holds no deployment logic: the test decides the desired set. `make_release` builds real
tar.gz releases whose demo is DEMO_PROGRAM, a small Python program that behaves as told (runs, crashes
N times, stays silent, ignores SIGTERM, logs heartbeats through dvic_log).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from node_support import StandIn, start_app

from central.messages import ProtocolError, parse_node_message
from tests.support.daemon import DaemonProcess
from tests.support.demos import kill_demos
from tests.support.pki import Pki
from tests.support.releases import add_file, toml_of
from tests.support.server import REPO, write_bundle

DEMO_PROGRAM = r'''
import os, signal, sys, time
mode, tag = sys.argv[1], sys.argv[2]   # the tag only marks this test's processes in /proc
arg = sys.argv[3] if len(sys.argv) > 3 else ""
state = "state" if os.path.isdir("state") else None   # the kept directory, when the manifest keeps "state/"


def control(name):
    # a file the test drops into the kept directory: its content, once
    try:
        with open(os.path.join(state, name)) as f:
            text = f.read()
        os.unlink(os.path.join(state, name))
        return text
    except (FileNotFoundError, TypeError):
        return None


if state:
    count = os.path.join(state, "count")  # runs so far
    runs = int(open(count).read()) if os.path.exists(count) else 0
    open(count, "w").write(str(runs + 1))
    crashes = os.path.join(state, "crashes")  # crash at start this many more times
    left = int(open(crashes).read()) if os.path.exists(crashes) else 0
    if left > 0:
        open(crashes, "w").write(str(left - 1))
        print("crash %d" % left, file=sys.stderr, flush=True)
        sys.exit(3)
if mode == "exit":
    print("bye", flush=True)
    sys.exit(int(arg or 0))
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "beat":  # a dvic_log file of its own, with heartbeats
    import dvic_log
    log = dvic_log.open_log(os.environ["DVIC_DEMO_NAME"])
    log.info("beating")
    while True:
        dvic_log.heartbeat(log)
        time.sleep(0.3)
if mode != "silent":
    print("up %s pid %d uid %d" % (os.environ.get("DVIC_DEMO_VERSION"), os.getpid(), os.getuid()), flush=True)
while state is None:  # nothing to be told: idle
    time.sleep(3600)
while True:
    code = control("exit")
    if code is not None:
        sys.exit(int(code))
    text = control("say")
    if text is not None:
        print(text, flush=True)
    time.sleep(0.1)
'''


@dataclass
class Release:
    name: str
    version: str
    path: Path
    sha256: str
    size: int
    manifest: dict[str, Any]

    def entry(self, rollout: str | None = None, **extra: Any) -> dict[str, Any]:
        """This release as one item of `demos_desired.demos` (docs/protocol.md section 6)."""
        out = {"name": self.name, "version": self.version, "sha256": self.sha256, "size": self.size,
               "url": f"/api/v1/node/releases/{self.sha256}", "manifest": self.manifest,
               "rollout": rollout or f"rollout-{self.version}-{uuid.uuid4().hex[:6]}"}
        out.update(extra)
        return out


def make_release(directory: Path, name: str, version: str, mode: str = "run", arg: str = "",
                 python: str = sys.executable, tag: str = "", extra_members: Callable[[tarfile.TarFile], None]
                 | None = None, files: dict[str, bytes] | None = None, **manifest: Any) -> Release:
    """A real release archive: dvic-demo.toml + demo.py run as `python demo.py MODE TAG ARG` (DEMO_PROGRAM)."""
    doc: dict[str, Any] = {"name": name, "version": version,
                           "run": [python, "demo.py", mode, tag or "untagged"] + ([arg] if arg else [])}
    doc.update(manifest)
    path = directory / f"{name}-{version}-{uuid.uuid4().hex[:6]}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "dvic-demo.toml", toml_of(doc).encode())
        add_file(tar, "demo.py", DEMO_PROGRAM.encode(), 0o755)
        for fname, data in (files or {}).items():
            add_file(tar, fname, data)
        if extra_members is not None:
            extra_members(tar)
    data = path.read_bytes()
    return Release(name, version, path, hashlib.sha256(data).hexdigest(), len(data), doc)


def demo_env_manifest() -> dict[str, str]:
    """`env` for demos that import dvic_log (the library lives in the repository)."""
    return {"PYTHONPATH": str(REPO / "lib" / "python")}


class DemoServer(StandIn):
    """`async with DemoServer(pki) as srv:` a node websocket and release downloads on https://127.0.0.1."""

    name = "demo-node"

    def __init__(self, pki: Pki) -> None:
        super().__init__()
        self.pki = pki
        self.base = ""
        self.desired: list[dict[str, Any]] | None = None  # pushed after every welcome when set
        self.messages: list[dict[str, Any]] = []  # everything but `logs` and `metrics`, in arrival order
        self.refused: list[str] = []  # frames the real server would refuse (and close the socket for)
        self.lines: list[dict[str, Any]] = []  # every log line
        self.releases: dict[str, Path] = {}
        self.requests: list[dict[str, Any]] = []  # release downloads: sha256, Range header, client cert seen
        self.cut: dict[str, int] = {}  # sha256 -> serve only this many bytes once, then drop the connection

    async def __aenter__(self) -> DemoServer:
        app = web.Application()
        app.router.add_get("/api/v1/node/ws", self._ws)
        app.router.add_get("/api/v1/node/releases/{sha256}", self._release)
        self.runner, self.base = await start_app(app, self.pki.server_context(require_client_cert=True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if exc[0] is None:
            assert not self.refused, f"the daemon sent frames the server refuses: {self.refused}"

    def bundle(self) -> dict[str, Any]:
        return self.pki.bundle(self.base, keepalive_url="")

    def serve(self, *releases: Release) -> None:
        for r in releases:
            self.releases[r.sha256] = r.path

    async def push(self, entries: list[dict[str, Any]]) -> None:
        """Make `entries` the desired set and push it now if the daemon is connected."""
        self.desired = entries
        if self.ws is not None and not self.ws.closed:
            await self.ws.send_json({"type": "demos_desired", "id": str(uuid.uuid4()), "demos": entries})

    async def _release(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        self.requests.append({"sha256": sha, "range": request.headers.get("Range"), "client_cert": bool(peer)})
        path = self.releases.get(sha)
        if path is None:
            return web.json_response({"error": {"code": "not_found", "message": "no such release"}}, status=404)
        if sha in self.cut:  # a download cut in the middle: bytes, then the connection drops
            limit = self.cut.pop(sha)
            resp = web.StreamResponse(status=200, headers={"Content-Length": str(path.stat().st_size)})
            await resp.prepare(request)
            await resp.write(path.read_bytes()[:limit])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.FileResponse(path)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws, _ = await self.welcome(request, self.bundle()["node_id"])
        if self.desired is not None:
            await ws.send_json({"type": "demos_desired", "id": str(uuid.uuid4()), "demos": self.desired})
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            body = json.loads(self.checked(msg.data))
            if body.get("type") == "logs":
                self.lines.extend(body["lines"])
                await ws.send_json({"type": "ack", "seq": body["lines"][-1]["seq"]})
            elif body.get("type") != "metrics":
                body["_at"] = time.time()
                self.messages.append(body)
        if self.ws is ws:
            self.ws = None
        return ws

    def checked(self, text: str) -> str:
        """The frame, noted in `refused` when the server's validator (dvic_core/messages.py) refuses it."""
        try:
            parse_node_message(text)
        except ProtocolError as exc:
            self.refused.append(f"{exc.code}: {exc.message} in {text[:300]}")
        return text

    # -- what the daemon said --
    def of(self, kind: str, demo: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind and (demo is None or m.get("demo") == demo)]

    def installs(self, demo: str, version: str | None = None, rollout: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.of("demo_install", demo) if (version is None or m["version"] == version)
                and (rollout is None or m.get("rollout") == rollout)]

    def install_states(self, demo: str, version: str | None = None) -> list[str]:
        states = [m["state"] for m in self.installs(demo, version)]
        return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]  # progress repeats downloading

    async def healthy(self, release: Release, timeout: float = 60.0) -> dict[str, Any]:
        """The release installed and healthy: its demo_status (with the demo's pid)."""
        result = await self.install_result(release.name, release.version, timeout)
        assert result["state"] == "healthy", result
        return await self.status_is(release.name, lambda s: s["version"] == release.version
                                    and s["state"] == "healthy" and s["pid"], 30,
                                    f"{release.name} {release.version} healthy")

    async def install_result(self, demo: str, version: str, timeout: float = 60.0) -> dict[str, Any]:
        """The final demo_install (healthy, failed, rolled_back) of that version."""
        def final() -> dict[str, Any] | None:
            found = [m for m in self.installs(demo, version) if m["state"] in ("healthy", "failed", "rolled_back")]
            return found[-1] if found else None
        return await self.wait(final, timeout, f"the end of the install of {demo} {version}")

    def status(self, demo: str) -> dict[str, Any]:
        found = self.of("demo_status", demo)
        return found[-1] if found else {}

    async def status_is(self, demo: str, cond: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                        what: str = "a demo_status") -> dict[str, Any]:
        return await self.wait(lambda: (s := self.status(demo)) and cond(s) and s, timeout, what)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "event" and m.get("kind") == kind]

    def demo_lines(self, demo: str) -> list[dict[str, Any]]:
        return [ln for ln in self.lines if ln.get("source") == "demo" and ln.get("unit") == demo]


@dataclass
class Node:
    """The real daemon for a DemoServer, with its own state and log directories."""

    daemon: DaemonProcess
    state: Path
    logs: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    async def stop(self) -> None:
        """Stop the daemon without blocking the stand-in server (same event loop) that answers its close."""
        await asyncio.to_thread(self.daemon.stop)

    def demo_dir(self, name: str) -> Path:
        return self.state / "demos" / name

    def proc(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.demo_dir(name) / "proc.json").read_text())
        except (OSError, ValueError):
            return {}

    def current(self, name: str) -> Path:
        return (self.demo_dir(name) / "current").resolve()


def demo_node(srv: DemoServer, tmp_path: Path, python: str = sys.executable, env: dict[str, str] | None = None,
              extra: tuple[str, ...] = ()) -> Node:
    state, logs = tmp_path / "state", tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    bundle = write_bundle(srv.bundle(), tmp_path / "bundle.json")
    return Node(DaemonProcess(bundle, state, logs, python=python, extra=extra, env=dict(env or {})), state, logs)


@contextlib.asynccontextmanager
async def deployed(srv: DemoServer, node: Node, tag: str, *releases: Release,
                   push: list[dict[str, Any]] | None = None) -> AsyncIterator[Node]:
    """The node's daemon started once `releases` are served and the desired set pushed (`push`, by
    default every release); at the end the daemon stopped and the demos it left (tagged `tag`) killed."""
    srv.serve(*releases)
    await srv.push([r.entry() for r in releases] if push is None else push)
    node.daemon.start()
    try:
        yield node
    finally:
        await node.stop()
        kill_demos(node.state, tag)


@dataclass
class DemoRig:
    """A test's DemoServer, the node (real daemon, not started) it serves, and the tag that marks the
    test's demo processes (the `rig` fixture)."""

    srv: DemoServer
    node: Node
    tag: str


def control(node: Node, name: str, file: str, text: str) -> None:
    """Tell a running demo something through its kept directory (see DEMO_PROGRAM)."""
    path = node.demo_dir(name) / "data" / "state" / file
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)




def new_tag() -> str:
    return "dvic-test-" + uuid.uuid4().hex[:12]
