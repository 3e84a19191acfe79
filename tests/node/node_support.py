"""Shared helpers of the node daemon tests: a throwaway PKI, TLS contexts and condition polling."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dvic_node
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    """PEM material of a CA, a server certificate for 127.0.0.1 and a node (client) certificate."""

    dir: Path
    ca_pem: str
    server_cert: Path
    server_key: Path
    node_cert_pem: str
    node_key_pem: str
    rogue_ca_pem: str  # another CA: trusting only it must fail against our server
    rogue_node_cert_pem: str
    rogue_node_key_pem: str

    def server_context(self, require_client_cert: bool = True, expired: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if expired:
            ctx.load_cert_chain(self.dir / "expired.crt", self.dir / "expired.key")
        else:
            ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.ca_pem)
        return ctx

    def bundle(self, url: str, **extra: object) -> dict:
        """An enrollment bundle (docs/protocol.md section 1) for a server at `url` (https://...)."""
        b = {
            "format": "dvic-node-bundle/1", "node_id": "6b0f7c52-0000-4000-8000-000000000001",
            "name": "test-node", "kind": "desktop", "group": "", "server_url": url,
            "ws_url": url.replace("https://", "wss://").replace("http://", "ws://") + "/api/v1/node/ws",
            "keepalive_url": url + "/api/v1/keepalive", "ca_pem": self.ca_pem, "ca_sha256": "",
            "cert_pem": self.node_cert_pem, "key_pem": self.node_key_pem, "token": "node-token-1",
            "interval": 5,
        }
        b.update(extra)
        return b


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str,
          server: bool, expired: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=60 if expired else 0)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def make_pki(d: Path) -> Pki:
    ca, ca_key = _ca("dvic test CA")
    srv, srv_key = _leaf(ca, ca_key, "127.0.0.1", server=True)
    node, node_key = _leaf(ca, ca_key, "6b0f7c52-0000-4000-8000-000000000001", server=False)
    rogue, rogue_key = _ca("rogue CA")
    rnode, rnode_key = _leaf(rogue, rogue_key, "rogue-node", server=False)
    old, old_key = _leaf(ca, ca_key, "127.0.0.1", server=True, expired=True)
    (d / "expired.crt").write_text(_pem(old))
    (d / "expired.key").write_text(_key_pem(old_key))
    (d / "server.crt").write_text(_pem(srv))
    (d / "server.key").write_text(_key_pem(srv_key))
    return Pki(dir=d, ca_pem=_pem(ca), server_cert=d / "server.crt", server_key=d / "server.key",
               node_cert_pem=_pem(node), node_key_pem=_key_pem(node_key), rogue_ca_pem=_pem(rogue),
               rogue_node_cert_pem=_pem(rnode), rogue_node_key_pem=_key_pem(rnode_key))


async def wait_until(cond: Callable[[], object], timeout: float = 10.0,  # noqa: ASYNC109
                     what: str = "condition") -> object:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_until_sync(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition",
                    interval: float = 0.1) -> object:
    """Poll `cond` (every `interval` s: conditions that page through the server's API are not free)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def start_app(app: web.Application, ssl_context: ssl.SSLContext | None = None,
                    port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve `app` on 127.0.0.1 (port 0: a free one); returns the runner and the base URL."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]  # the only way to learn port 0's pick
    real_port = sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{real_port}"


# -- a raw websocket peer, to send what a well-behaved server never would -----------------------

async def accept_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Answer a websocket upgrade request with 101; returns the request head."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = [ln.split(":", 1)[1].strip() for ln in head.decode().split("\r\n")
           if ln.lower().startswith("sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1((key + dvic_node.WS_GUID).encode()).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    await writer.drain()
    return head


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    if n < 126:
        return head + bytes([n]) + payload
    if n < 65536:
        return head + bytes([126]) + struct.pack("!H", n) + payload
    return head + bytes([127]) + struct.pack("!Q", n) + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4)
    return b0 & 0x0F, dvic_node.mask_payload(await reader.readexactly(n), mask)
