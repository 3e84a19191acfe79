"""A small HTTPS stand-in for the central server's enrollment API (until the real one is used everywhere).

It speaks the documented API (protocol.md sections 1, 3, 4) for the calls the installer makes and
marks a node online when it posts a keep-alive with its token, so the stub daemon can come online.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _cert(subject: str, issuer_key: Any, issuer: x509.Name | None, key: Any, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class FakeCentral:
    directory: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("fake dvic CA", ca_key, None, ca_key, True)
        srv_key = ec.generate_private_key(ec.SECP256R1())
        srv = _cert("127.0.0.1", ca_key, ca.subject, srv_key, False)
        self.ca_pem = _pem(ca)
        self.ca_path = self.directory / "ca.pem"
        self.ca_path.write_text(self.ca_pem)
        (self.directory / "server.pem").write_text(_pem(srv))
        (self.directory / "server.key").write_bytes(srv_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.ca_sha256 = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()

    def enroll_count(self) -> int:
        return sum(1 for method, path, _ in self.requests if method == "POST" and path == "/api/v1/nodes")

    def _find(self, ref: str) -> dict[str, Any] | None:
        if ref in self.nodes:
            return self.nodes[ref]
        named = [n for n in self.nodes.values() if n["name"] == ref]
        return next((n for n in named if not n["revoked"]), named[-1] if named else None)

    def _auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(text='{"error": {"code": "unauthorized", "message": "bad token"}}',
                                       content_type="application/json")

    async def _enroll(self, request: web.Request) -> web.Response:
        self._auth(request)
        body = await request.json()
        self.requests.append(("POST", request.path, body))
        name = body.get("name", "")
        if not name or any(n["name"] == name and not n["revoked"] for n in self.nodes.values()):
            return web.json_response({"error": {"code": "conflict", "message": f"name {name!r} taken"}},
                                     status=409 if name else 400)
        node_id = str(uuid.uuid4())
        key = ec.generate_private_key(ec.SECP256R1())
        bundle = {
            "format": "dvic-node-bundle/1", "node_id": node_id, "name": name, "kind": body.get("kind", "desktop"),
            "group": body.get("group", ""), "server_url": self.url, "ws_url": self.url.replace("https", "wss")
            + "/api/v1/node/ws", "keepalive_url": self.url + "/api/v1/keepalive", "ca_pem": self.ca_pem,
            "ca_sha256": self.ca_sha256, "cert_pem": "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n",
            "key_pem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
            "token": secrets.token_urlsafe(24), "interval": 5,
        }
        self.nodes[node_id] = {"id": node_id, "name": name, "kind": bundle["kind"], "group": bundle["group"],
                               "state": "new", "revoked": False, "token": bundle["token"], "last_seen": None}
        return web.json_response(bundle, status=201)

    async def _get(self, request: web.Request) -> web.Response:
        self._auth(request)
        self.requests.append(("GET", request.path, None))
        node = self._find(request.match_info["node"])
        if node is None:
            return web.json_response({"error": {"code": "not_found", "message": "no such node"}}, status=404)
        return web.json_response({k: v for k, v in node.items() if k != "token"})

    async def _delete(self, request: web.Request) -> web.Response:
        self._auth(request)
        self.requests.append(("DELETE", request.path, None))
        node = self._find(request.match_info["node"])
        if node is None:
            return web.json_response({"error": {"code": "not_found", "message": "no such node"}}, status=404)
        if node["revoked"]:
            return web.json_response({"error": {"code": "already_revoked", "message": "revoked"}}, status=409)
        node["revoked"] = True
        node["state"] = "offline"
        return web.json_response({"ok": True})

    async def _keepalive(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        node = next((n for n in self.nodes.values() if n["token"] == token), None)
        if node is None:
            return web.json_response({"error": {"code": "unauthorized", "message": "?"}}, status=401)
        if node["revoked"]:
            return web.json_response({"error": {"code": "revoked", "message": "revoked"}}, status=403)
        node["state"] = "online"
        node["last_seen"] = time.time()
        return web.json_response({"server_time": time.time(), "interval": 5, "node_id": node["id"]})

    role: str = "admin"

    async def _me(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response({"name": "tester", "role": self.role, "status": "active"})

    async def _tunnel(self, request: web.Request) -> web.StreamResponse:
        """Like the real relay, but this process stands in for the node and opens the TCP stream."""
        self._auth(request)
        self.requests.append(("TUNNEL", request.path, dict(request.query)))
        node = self._find(request.match_info["node"])
        if node is None:
            return web.json_response({"error": {"code": "not_found", "message": "no such node"}}, status=404)
        if node["state"] != "online":
            return web.json_response({"error": {"code": "node_offline", "message": "offline"}}, status=409)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            reader, writer = await asyncio.open_connection(request.query["host"], int(request.query["port"]))
        except OSError as exc:
            await ws.send_str(json.dumps({"type": "closed", "message": exc.strerror or str(exc)}))
            await ws.close()
            return ws
        await ws.send_str(json.dumps({"type": "opened"}))

        async def to_client() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(data)
            await ws.close()

        pump = asyncio.create_task(to_client())
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
        writer.close()
        pump.cancel()
        return ws

    async def start(self) -> FakeCentral:
        app = web.Application()
        app.router.add_post("/api/v1/nodes", self._enroll)
        app.router.add_get("/api/v1/nodes/{node}", self._get)
        app.router.add_delete("/api/v1/nodes/{node}", self._delete)
        app.router.add_post("/api/v1/keepalive", self._keepalive)
        app.router.add_get("/api/v1/nodes/{node}/tunnel", self._tunnel)
        app.router.add_get("/api/v1/me", self._me)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.directory / "server.pem", self.directory / "server.key")
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
