"""Throw-away certificates for tests that need their own TLS peers: a CA, server and client leaves."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_ID = "6b0f7c52-0000-4000-8000-000000000001"  # the node certificate's subject, and the bundle's node_id


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (30 days) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str, *, server: bool,
              expired: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate signed by `ca`: for a server on 127.0.0.1/localhost, or a client; `expired` a month ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=60 if expired else 0)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@dataclass
class Pki:
    """PEM material of a CA, a server certificate for 127.0.0.1 (and an expired one) and a node
    (client) certificate, plus a rogue CA with its own node certificate."""

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

    def bundle(self, url: str, **extra: object) -> dict[str, Any]:
        """An enrollment bundle (docs/protocol.md section 1) for a server at `url` (https://...)."""
        bundle: dict[str, Any] = {
            "format": "dvic-node-bundle/1", "node_id": NODE_ID, "name": "test-node", "kind": "desktop",
            "group": "", "server_url": url,
            "ws_url": url.replace("https://", "wss://").replace("http://", "ws://") + "/api/v1/node/ws",
            "keepalive_url": url + "/api/v1/keepalive", "ca_pem": self.ca_pem, "ca_sha256": "",
            "cert_pem": self.node_cert_pem, "key_pem": self.node_key_pem, "token": "node-token-1",
            "interval": 5,
        }
        bundle.update(extra)
        return bundle


def make_pki(directory: Path) -> Pki:
    """A fresh Pki; the server's (and the expired server's) certificate and key are files in `directory`."""
    ca, ca_key = make_ca("dvic test CA")
    files = {}
    for stem, expired in (("server", False), ("expired", True)):
        cert, key = make_leaf(ca, ca_key, "127.0.0.1", server=True, expired=expired)
        files[stem] = (directory / f"{stem}.crt", directory / f"{stem}.key")
        files[stem][0].write_text(cert_pem(cert))
        files[stem][1].write_text(key_pem(key))
    node, node_key = make_leaf(ca, ca_key, NODE_ID, server=False)
    rogue, rogue_key = make_ca("rogue CA")
    rogue_node, rogue_node_key = make_leaf(rogue, rogue_key, "rogue-node", server=False)
    return Pki(dir=directory, ca_pem=cert_pem(ca), server_cert=files["server"][0], server_key=files["server"][1],
               node_cert_pem=cert_pem(node), node_key_pem=key_pem(node_key), rogue_ca_pem=cert_pem(rogue),
               rogue_node_cert_pem=cert_pem(rogue_node), rogue_node_key_pem=key_pem(rogue_node_key))
