"""First contact with a server for `dvic login`: read its certificate chain and find the CA to pin.

The chain is read with verification off — the only moment it is — and nothing is trusted until the
user confirmed the CA's SHA-256 fingerprint (or passed it with `--fingerprint`).

Every `dvic` command imports this module (for `PinError`), so `cryptography`, `asyncio`, `hashlib`
and `urllib.parse` are imported only by the functions that use them: they are slow to import.
"""

from __future__ import annotations

import ssl

TYPE_CHECKING = False  # as typing.TYPE_CHECKING; `typing` itself is slow to import (see tui/cmds/run.py)
if TYPE_CHECKING:
    from cryptography import x509


class PinError(Exception):
    """The CA could not be obtained or does not match what the user expects."""


class PinnedCA:
    __slots__ = ("pem", "sha256")

    def __init__(self, pem: str, sha256: str) -> None:
        self.pem = pem
        self.sha256 = sha256  # lower-case hex of the DER bytes, as in the enrollment bundle's `ca_sha256`


def fingerprint(der: bytes) -> str:
    import hashlib

    return hashlib.sha256(der).hexdigest()


def pretty(sha256: str) -> str:
    """Colon-separated upper-case pairs, the way certificate fingerprints are usually printed."""
    return ":".join(sha256[i : i + 2] for i in range(0, len(sha256), 2)).upper()


def normalise(sha256: str) -> str:
    return sha256.replace(":", "").replace(" ", "").strip().lower()


def from_pem_file(path: str) -> PinnedCA:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        data = open(path, "rb").read()
        cert = x509.load_pem_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise PinError(f"{path} is not a readable PEM certificate: {exc}") from exc
    der = cert.public_bytes(Encoding.DER)
    return PinnedCA(pem=cert.public_bytes(Encoding.PEM).decode(), sha256=fingerprint(der))


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.issuer == cert.subject


def pick_ca(chain: list[bytes]) -> PinnedCA:
    """The top-most CA certificate of the chain the server sent."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certs = [x509.load_der_x509_certificate(der) for der in chain]
    cas = [c for c in certs if _is_ca(c)]
    if not cas:
        raise PinError(
            "the server sent only its own certificate, not its CA; pass the CA file with "
            "`dvic login URL --ca FILE` (the server's data dir holds it as ca.pem)"
        )
    ca = cas[-1]
    der = ca.public_bytes(Encoding.DER)
    return PinnedCA(pem=ca.public_bytes(Encoding.PEM).decode(), sha256=fingerprint(der))


async def fetch_chain(url: str, wait: float = 10.0) -> list[bytes]:
    """The DER certificates the server presents, leaf first (unverified!)."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise PinError(f"{url} is not an https:// URL")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 443, ssl=ctx, server_hostname=parts.hostname),
            wait,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise PinError(f"cannot reach {url}: {exc or type(exc).__name__}") from exc
    try:
        obj = writer.get_extra_info("ssl_object")
        chain = _unverified_chain(obj)
    finally:
        writer.close()
    if not chain:
        raise PinError(f"{url} presented no certificate")
    return chain


def _unverified_chain(obj: ssl.SSLObject) -> list[bytes]:
    getter = getattr(obj, "get_unverified_chain", None)  # public from Python 3.13
    if getter is None:
        getter = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        leaf = obj.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    out: list[bytes] = []
    for cert in getter() or []:
        out.append(cert if isinstance(cert, bytes) else cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    return out
