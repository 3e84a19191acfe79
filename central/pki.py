"""The server's PKI: its own CA, the server certificate, node client certificates, fingerprints.

One place owns node identity: a node *is* the SHA-256 fingerprint of the client certificate this
module signed for it. The CA key never leaves the data dir; node private keys are handed over once
in the enrollment bundle and never stored by the server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Re-exported: central/cli.py and central/devstack.py write node bundles with it.
from dvic_core.files import write_private as write_private

from .datadir import data_dir_lock

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
PUBLIC_MODE = 0o644  # certificates: not secret

_CA_YEARS = 20
_SERVER_DAYS = 825
# The common name of a replica's client certificate (node certificates carry their node's UUID).
REPLICA_CN_PREFIX = "dvic-replica:"
_NODE_YEARS = 10


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def der_fingerprint(der: bytes) -> str:
    """Hex SHA-256 of a certificate's DER bytes: how nodes are identified and CAs pinned."""
    return hashlib.sha256(der).hexdigest()


def cert_fingerprint(cert: x509.Certificate) -> str:
    return der_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def pem_fingerprint(pem: str | bytes) -> str:
    data = pem.encode() if isinstance(pem, str) else pem
    return cert_fingerprint(x509.load_pem_x509_certificate(data))


def format_fingerprint(hex_digest: str) -> str:
    """`AB:CD:...` form shown to people who compare fingerprints by eye."""
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


@dataclass(frozen=True)
class IssuedNode:
    node_id: str
    cert_pem: str
    key_pem: str
    fingerprint: str


class CertificateAuthority:
    """The CA in a data dir: created on first use, loaded afterwards.

    Made and loaded under the data dir's lock (central/datadir.py): of several servers starting
    at once on a new shared data dir, one makes the CA and the others load it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cert_path = data_dir / CA_CERT
        key_path = data_dir / CA_KEY
        with data_dir_lock(data_dir):
            if not self.cert_path.exists():
                self._create(key_path)
            cert_data, key_data = self.cert_path.read_bytes(), key_path.read_bytes()
        self.cert = x509.load_pem_x509_certificate(cert_data)
        loaded = serialization.load_pem_private_key(key_data, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        self.key = loaded

    def _create(self, key_path: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DVIC Demo Monitor CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * _CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        # The certificate last: its presence says the pair is complete.
        write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE)

    @property
    def pem(self) -> str:
        return cert_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return cert_fingerprint(self.cert)

    def _leaf(self, subject: str, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )

    def server_cert_paths(self, replica: str = "") -> tuple[Path, Path]:
        """server.pem/server.key; server-NAME.pem/.key for a replica named with --replica, so that
        replicas sharing a data dir, each with its own listen address, do not reissue each
        other's certificate at every start."""
        if not replica:
            return self.data_dir / SERVER_CERT, self.data_dir / SERVER_KEY
        return self.data_dir / f"server-{replica}.pem", self.data_dir / f"server-{replica}.key"

    def ensure_server_cert(self, hosts: list[str], replica: str = "") -> tuple[Path, Path]:
        """A server certificate valid for every host we listen on; reissued when the set changes.
        Call under the data dir's lock (server_ssl_context does): the pair is two files."""
        cert_path, key_path = self.server_cert_paths(replica)
        wanted = _san_entries(hosts)
        if cert_path.exists() and key_path.exists():
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            try:
                san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                have = set(san)
            except x509.ExtensionNotFound:
                have = set()
            fresh = current.not_valid_after_utc > _now() + dt.timedelta(days=30)
            if set(wanted) <= have and fresh and current.issuer == self.cert.subject:
                return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._leaf("dvic-central", key.public_key(), _SERVER_DAYS)
            .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_MODE)
        return cert_path, key_path

    def issue_node(self, node_id: str) -> IssuedNode:
        """A fresh key pair and client certificate for a node (CN = its UUID)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._leaf(node_id, key.public_key(), 365 * _NODE_YEARS)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return IssuedNode(node_id, cert_pem(cert), _key_pem(key).decode(), cert_fingerprint(cert))

    def replica_client_context(self, replica: str) -> ssl.SSLContext:
        """TLS for one replica calling another (cluster/forward.py): the other's certificate checked
        against this CA, and a client certificate naming this replica (CN `dvic-replica:NAME`),
        made now in memory: only a holder of the CA key can make one, and node certificates are
        named by their UUID, so a server seeing it knows the caller is a replica."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._leaf(REPLICA_CN_PREFIX + replica, key.public_key(), _SERVER_DAYS)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        ctx = ssl.create_default_context(cafile=str(self.cert_path))
        with tempfile.TemporaryDirectory(prefix="dvic-replica-") as tmp:  # (ssl loads a key from a file only)
            cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            write_private(key_file, _key_pem(key))
            write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
            ctx.load_cert_chain(cert_file, key_file)
        return ctx

    def server_ssl_context(self, hosts: list[str], replica: str = "") -> ssl.SSLContext:
        """TLS for the listener: client certificates are optional on the socket (operators have
        none) and required, per route, by the node websocket. The certificate is loaded once:
        a later rewrite of the files does not change what a running server presents."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with data_dir_lock(self.data_dir):  # another process may be writing the same pair
            ctx.load_cert_chain(*self.ensure_server_cert(hosts, replica))
        ctx.load_verify_locations(cafile=str(self.cert_path))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


def replica_of_peer(peercert: dict[str, Any] | None) -> str:
    """The replica a verified client certificate names (CA.replica_client_context), "" if none."""
    for rdn in (peercert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and str(value).startswith(REPLICA_CN_PREFIX):
                return str(value)[len(REPLICA_CN_PREFIX):]
    return ""


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, "localhost", "127.0.0.1", "::1"]:
        if host in seen or host in ("", "0.0.0.0", "::"):
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names
