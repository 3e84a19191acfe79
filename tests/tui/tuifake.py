"""A small in-memory server speaking the documented operator API (docs/protocol.md section 4).

Stand-in for the real central server while it is being written; kept for tests that need to
inject exact data (hostile text, thousands of nodes) the real server would need a fleet for.
Optionally serves HTTPS with its own throw-away CA, so the CLI's pinning is tested for real.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import secrets
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

OP = web.RequestKey("op", dict)
ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}
LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _err(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def make_pki(directory: Path, send_chain: bool = True) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1; returns (ca.pem, chain.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake dvic CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, chain_path, key_path = directory / "ca.pem", directory / "chain.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(pem))
    chain_path.write_bytes(leaf.public_bytes(pem) + (ca.public_bytes(pem) if send_chain else b""))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_path, chain_path, key_path


class FakeCentral:
    """Start with `await FakeCentral().start()`; `.url`, `.admin_token`, helpers to add data."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.logs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.audit: list[dict[str, Any]] = []
        self.operators: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self.streams: dict[web.WebSocketResponse, list[str]] = {}
        self.admin_token = self.add_operator("admin", "admin")
        self.url = ""
        self.ca_path: Path | None = None
        self._runner: web.AppRunner | None = None
        self._next_log = 1
        self._next_event = 1

    # -- test helpers ------------------------------------------------------------------------
    def add_operator(self, name: str, role: str, status: str = "active") -> str:
        token = f"dvo_{secrets.token_urlsafe(16)}"  # as the real server: never starts with "-"
        self.operators[name] = {"name": name, "role": role, "status": status, "created_at": time.time()}
        self.tokens[token] = name
        return token

    def add_node(self, name: str, kind: str = "desktop", group: str = "", state: str = "online",
                 **extra: Any) -> dict[str, Any]:
        now = time.time()
        node = {
            "id": str(uuid.uuid4()), "name": name, "kind": kind, "group": group, "state": state,
            "state_since": now - 60, "last_seen": now - 1, "connected": state == "online",
            "daemon_version": "0.1.0", "revoked": False,
            "metrics": {"cpu": 12.5, "mem": 50.0, "disk": 25.0, "temp": 48.3, "load1": 0.5},
            "demos": {"alive": 1, "total": 2},
            "facts": {"hostname": name, "os": "Debian GNU/Linux 12", "kernel": "6.1.0", "arch": "x86_64",
                      "model": "Test box", "ips": ["10.0.0.42"], "macs": ["dc:a6:32:00:00:01"],
                      "python": "3.11.2", "boot_time": now - 3600},
            "sample": {"type": "metrics", "ts": now, "uptime": 3600.0, "procs": 100},
            "demos_list": [
                {"type": "demo", "token": "a1b2c3d4a1b2c3d4", "name": "robot-arm", "pid": 1234,
                 "state": "alive", "started_at": now - 600, "exited_at": None, "header": {}},
                {"type": "demo", "token": "0000111122223333", "name": "old-demo", "pid": 99,
                 "state": "exited", "started_at": now - 7200, "exited_at": now - 3600, "header": {}},
            ],
            "created_at": now - 86400,
        }
        node.update(extra)
        self.nodes[node["id"]] = node
        return node

    def summary(self, node: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in node.items() if k not in ("facts", "sample", "demos_list", "created_at")}

    async def update_node(self, node_id: str, **changes: Any) -> None:
        self.nodes[node_id].update(changes)
        await self._broadcast({"type": "node", "node": self.summary(self.nodes[node_id])})

    async def add_logs(self, node_id: str, msgs: list[tuple[str, str]], source: str = "demo",
                       unit: str = "robot-arm") -> list[dict[str, Any]]:
        node = self.nodes[node_id]
        lines = []
        for level, msg in msgs:
            line = {"id": self._next_log, "node": node_id, "node_name": node["name"], "seq": self._next_log,
                    "ts": time.time(), "source": source, "unit": unit, "demo": "a1b2c3d4a1b2c3d4",
                    "level": level, "msg": msg}
            self._next_log += 1
            lines.append(line)
        self.logs.extend(lines)
        for ws, subs in list(self.streams.items()):
            if "*" in subs or node_id in subs:
                await self._send(ws, {"type": "logs", "node": node_id, "lines": lines})
        return lines

    async def add_event(self, node_id: str, kind: str, message: str) -> dict[str, Any]:
        ev = {"id": self._next_event, "ts": time.time(), "node": node_id,
              "node_name": self.nodes[node_id]["name"], "kind": kind, "message": message, "data": {}}
        self._next_event += 1
        self.events.append(ev)
        await self._broadcast({"type": "event", "event": ev})
        return ev

    async def send_raw(self, text: str) -> None:
        """Sends one frame as is to every stream client (for bad-input tests)."""
        for ws in list(self.streams):
            if not ws.closed:
                await ws.send_str(text)

    async def drop_streams(self) -> None:
        for ws in list(self.streams):
            await ws.close(code=1012, message=b"restarting")

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, tls_dir: Path | None = None, send_chain: bool = True, port: int = 0) -> FakeCentral:
        app = web.Application(middlewares=[self._auth])
        r = app.router
        r.add_get("/api/v1/health", self._health)
        r.add_post("/api/v1/register", self._register)
        r.add_get("/api/v1/me", self._me)
        r.add_get("/api/v1/nodes", self._nodes)
        r.add_get("/api/v1/nodes/{node}", self._node)
        r.add_delete("/api/v1/nodes/{node}", self._revoke)
        r.add_post("/api/v1/nodes/{node}/maintenance", self._maintenance)
        r.add_get("/api/v1/nodes/{node}/metrics", self._metrics)
        r.add_get("/api/v1/logs", self._logs)
        r.add_get("/api/v1/events", self._events)
        r.add_get("/api/v1/operators", self._operators)
        r.add_post("/api/v1/operators", self._op_add)
        r.add_post("/api/v1/operators/{name}/approve", self._op_approve)
        r.add_post("/api/v1/operators/{name}/role", self._op_role)
        r.add_delete("/api/v1/operators/{name}", self._op_disable)
        r.add_post("/api/v1/operators/{name}/tokens", self._op_token)
        r.add_get("/api/v1/audit", self._audit)
        r.add_get("/api/v1/stream", self._stream)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        ctx = None
        if tls_dir is not None:
            self.ca_path, chain, key = make_pki(tls_dir, send_chain)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(chain, key)
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ctx)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        self.url = f"{'https' if ctx else 'http'}://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        for ws in list(self.streams):
            await ws.close()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing ----------------------------------------------------------------------------
    PUBLIC = {"/api/v1/health", "/api/v1/register"}
    ADMIN = ("/api/v1/operators", "/api/v1/audit")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in self.PUBLIC:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        name = self.tokens.get(header.removeprefix("Bearer ").strip()) if header.startswith("Bearer ") else None
        if name is None:
            return _err(401, "unauthorized", "missing or unknown token")
        op = self.operators[name]
        if op["status"] == "disabled":
            return _err(401, "unauthorized", "account disabled")
        if request.path == "/api/v1/me":
            request[OP] = op
            return await handler(request)
        if op["status"] != "active":
            return _err(403, "pending", "account waits for approval")
        need = "viewer"
        if request.path.startswith(self.ADMIN) or request.method == "DELETE":
            need = "admin"
        elif request.method == "POST":
            need = "operator"
        if ROLE_RANK[op["role"]] < ROLE_RANK[need]:
            return _err(403, "forbidden", f"needs role {need}")
        request[OP] = op
        if request.method in ("POST", "DELETE"):
            self.audit.append({"id": len(self.audit) + 1, "ts": time.time(), "operator": name,
                               "action": f"{request.method} {request.path}", "target": "", "data": {}})
        return await handler(request)

    def _find(self, ref: str) -> dict[str, Any] | None:
        if ref in self.nodes:
            return self.nodes[ref]
        return next((n for n in self.nodes.values() if n["name"] == ref), None)

    async def _send(self, ws: web.WebSocketResponse, doc: dict[str, Any]) -> None:
        if not ws.closed:
            await ws.send_str(json.dumps(doc))

    async def _broadcast(self, doc: dict[str, Any]) -> None:
        for ws in list(self.streams):
            await self._send(ws, doc)

    @staticmethod
    def _page(items: list[dict[str, Any]], request: web.Request, key: str) -> web.Response:
        cursor = request.query.get("cursor")
        limit = int(request.query.get("limit", "100"))
        newest = sorted(items, key=lambda x: x["id"], reverse=True)
        if cursor:
            newest = [x for x in newest if x["id"] < int(cursor)]
        page = newest[:limit]
        nxt = str(page[-1]["id"]) if len(newest) > limit else None
        return web.json_response({key: page, "next_cursor": nxt})

    # -- handlers ----------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "version": "fake"})

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return _err(400, "bad_request", "name required")
        if name in self.operators:
            return _err(409, "exists", f"operator {name} exists")
        token = self.add_operator(name, "viewer", status="pending")
        return web.json_response({"name": name, "status": "pending", "token": token}, status=201)

    async def _me(self, request: web.Request) -> web.Response:
        op = request[OP]
        return web.json_response({"name": op["name"], "role": op["role"], "status": op["status"]})

    async def _nodes(self, request: web.Request) -> web.Response:
        q = request.query
        out = [self.summary(n) for n in self.nodes.values()
               if all(not q.get(k) or n[k] == q[k] for k in ("group", "kind", "state"))]
        return web.json_response({"nodes": out})

    async def _node(self, request: web.Request) -> web.Response:
        node = self._find(request.match_info["node"])
        return web.json_response(node) if node else _err(404, "not_found", "no such node")

    async def _revoke(self, request: web.Request) -> web.Response:
        node = self._find(request.match_info["node"])
        if not node:
            return _err(404, "not_found", "no such node")
        await self.update_node(node["id"], revoked=True, state="offline", connected=False)
        return web.json_response({"ok": True})

    async def _maintenance(self, request: web.Request) -> web.Response:
        node = self._find(request.match_info["node"])
        if not node:
            return _err(404, "not_found", "no such node")
        on = (await request.json()).get("on")
        await self.update_node(node["id"], state="maintenance" if on else "online")
        return web.json_response(self.summary(node))

    async def _metrics(self, request: web.Request) -> web.Response:
        node = self._find(request.match_info["node"])
        if not node:
            return _err(404, "not_found", "no such node")
        q = request.query
        start, end, step = int(q["from"]), int(q["to"]), int(q["step"])
        names = q.get("names", "cpu,mem,disk,temp").split(",")
        series = {}
        for i, name in enumerate(names):
            pts = [[t, 10.0 + i, 20.0 + i + (t // step) % 30, 40.0 + i] for t in range(start, end, step)]
            series[name] = pts[-400:]
        if "series" in node:  # a test's exact points (json_response writes NaN/Infinity as Python does)
            series = node["series"]
        return web.json_response({"node": node["id"], "from": start, "to": end, "step": step, "series": series})

    async def _logs(self, request: web.Request) -> web.Response:
        q = request.query
        items = self.logs
        if q.get("node"):
            items = [x for x in items if x["node"] == q["node"]]
        if q.get("level"):
            items = [x for x in items if LEVELS.index(x["level"]) >= LEVELS.index(q["level"])]
        if q.get("source"):
            items = [x for x in items if x["source"] == q["source"]]
        if q.get("q"):
            items = [x for x in items if q["q"].lower() in x["msg"].lower()]
        if q.get("from"):
            items = [x for x in items if x["ts"] >= float(q["from"])]
        return self._page(items, request, "lines")

    async def _events(self, request: web.Request) -> web.Response:
        items = self.events
        if request.query.get("node"):
            items = [x for x in items if x["node"] == request.query["node"]]
        return self._page(items, request, "events")

    async def _operators(self, request: web.Request) -> web.Response:
        return web.json_response({"operators": list(self.operators.values())})

    async def _op_add(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("role") not in ROLE_RANK:
            return _err(400, "bad_request", "unknown role")
        if body.get("name") in self.operators:
            return _err(409, "exists", "operator exists")
        token = self.add_operator(body["name"], body["role"])
        return web.json_response({**self.operators[body["name"]], "token": token}, status=201)

    def _op(self, request: web.Request) -> dict[str, Any] | None:
        return self.operators.get(request.match_info["name"])

    async def _op_approve(self, request: web.Request) -> web.Response:
        op = self._op(request)
        if op is None:
            return _err(404, "not_found", "no such operator")
        if op["status"] != "pending":
            return _err(409, "not_pending", "account is not pending")
        op.update(status="active", role=(await request.json())["role"])
        return web.json_response(op)

    async def _op_role(self, request: web.Request) -> web.Response:
        op = self._op(request)
        if op is None:
            return _err(404, "not_found", "no such operator")
        op["role"] = (await request.json())["role"]
        return web.json_response(op)

    async def _op_disable(self, request: web.Request) -> web.Response:
        op = self._op(request)
        if op is None:
            return _err(404, "not_found", "no such operator")
        op["status"] = "disabled"
        return web.json_response(op)

    async def _op_token(self, request: web.Request) -> web.Response:
        op = self._op(request)
        if op is None:
            return _err(404, "not_found", "no such operator")
        token = f"dvo_{secrets.token_urlsafe(16)}"  # as the real server: never starts with "-"
        self.tokens[token] = op["name"]
        return web.json_response({"name": op["name"], "token": token}, status=201)

    async def _audit(self, request: web.Request) -> web.Response:
        return self._page(self.audit, request, "entries")

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
        self.streams[ws] = []
        try:
            # As the real server: the whole fleet first (docs/protocol.md 4.2); the console's snapshot.
            await self._send(ws, {"type": "hello", "nodes": [self.summary(n) for n in self.nodes.values()]})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    doc = json.loads(msg.data)
                    if doc.get("type") == "subscribe":
                        self.streams[ws] = list(doc.get("logs", []))
        finally:
            self.streams.pop(ws, None)
        return ws


async def wait_for(predicate: Any, within: float = 10.0, what: str = "condition") -> None:
    """Polls `predicate()` (sync or async) until true, failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
