"""The daemon release the server hands to nodes: the file, its version, and an RSA signature.

The release key (RSA 3072, `release.key` in the data dir, 0600) signs the daemon file with
PKCS#1 v1.5 over SHA-256. Nodes pin the public key from their bundle and verify with a few lines of
integer arithmetic (no dependency). Rotation signs the new public key with the old one, so nodes
can move to it without trusting anything new.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dvic_core.files import write_private

from .datadir import data_dir_lock

RELEASE_KEY = "release.key"
RELEASE_DIR = "daemon"
VERSION_RE = re.compile(rb'^(?:__version__|VERSION)\s*=\s*["\']([0-9A-Za-z.+-]+)["\']', re.M)
MAX_DAEMON_BYTES = 2 * 1024 * 1024
PUBLIC_MODE = 0o644  # the published daemon and its metadata


class ReleaseError(ValueError):
    pass


def parse_version(text: str) -> tuple[int, ...]:
    """'0.2.10' -> (0, 2, 10); the numeric prefix of each part counts (so '1.0rc1' -> (1, 0))."""
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def daemon_version(data: bytes) -> str:
    match = VERSION_RE.search(data)
    if match is None:
        raise ReleaseError("the daemon file has no VERSION = '...' line")
    return match.group(1).decode()


def check_daemon(data: bytes) -> str:
    """The version of a daemon file fit to publish; a ReleaseError says why it is not."""
    if len(data) > MAX_DAEMON_BYTES:
        raise ReleaseError(f"daemon file larger than {MAX_DAEMON_BYTES} bytes")
    try:
        compile(data, "dvic_node.py", "exec")
    except (SyntaxError, ValueError) as exc:
        raise ReleaseError(f"the daemon file is not valid Python: {exc}") from None
    except (MemoryError, RecursionError) as exc:
        # CPython's parser gives up on deep nesting (e.g. thousands of unary minus) this way.
        raise ReleaseError(f"the daemon file is not valid Python: nested too deeply to compile "
                           f"({type(exc).__name__})") from None
    return daemon_version(data)


def public_numbers(key: rsa.RSAPublicKey) -> dict[str, Any]:
    nums = key.public_numbers()
    return {"n": format(nums.n, "x"), "e": nums.e}


@dataclass(frozen=True)
class Release:
    version: str
    sha256: str
    signature: str  # base64
    size: int
    path: Path

    def meta(self) -> dict[str, Any]:
        """What release.json holds (`path` is where the file lies)."""
        return {"version": self.version, "sha256": self.sha256, "signature": self.signature, "size": self.size}


class ReleaseStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.key_path = data_dir / RELEASE_KEY
        self.dir = data_dir / RELEASE_DIR
        # publish() may run in a worker thread: one writer of the key and the release at a time.
        self._lock = threading.RLock()
        # Servers sharing a data dir and starting at once: one makes the key, the others load it.
        with data_dir_lock(data_dir):
            if not self.key_path.exists():
                self._write_key(rsa.generate_private_key(public_exponent=65537, key_size=3072))
            self.key = self._load_key()

    def _write_key(self, key: rsa.RSAPrivateKey) -> None:
        write_private(self.key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def _load_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ReleaseError(f"{self.key_path}: expected an RSA private key")
        return key

    @property
    def public(self) -> dict[str, Any]:
        return public_numbers(self.key.public_key())

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()

    def rotate(self) -> dict[str, Any]:
        """New key; returns the endorsement nodes need: the new public key signed by the old key."""
        with self._lock:
            return self._rotate()

    def _rotate(self) -> dict[str, Any]:
        old = self.key
        new = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        new_public = public_numbers(new.public_key())
        statement = json.dumps(new_public, sort_keys=True, separators=(",", ":")).encode()
        endorsement = {"key": new_public,
                       "signature": base64.b64encode(old.sign(statement, padding.PKCS1v15(), hashes.SHA256())).decode(),
                       "rotated_at": time.time()}
        with (self.data_dir / "release-rotations.json").open("a") as log:
            log.write(json.dumps(endorsement) + "\n")
        self._write_key(new)
        self.key = new
        current = self.current()
        if current is not None:  # re-sign the current release with the new key
            self.publish(current.path.read_bytes())
        return endorsement

    def endorsements(self) -> list[dict[str, Any]]:
        path = self.data_dir / "release-rotations.json"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def publish(self, data: bytes) -> Release:
        """Sign and hold `data` as the release; refused if invalid or older than the current one.

        Safe to call from a worker thread (the API compiles an upload off the event loop).
        """
        version = check_daemon(data)
        with self._lock:
            current = self.current()
            if current is not None and parse_version(version) < parse_version(current.version):
                raise ReleaseError(f"version {version} is older than the current release {current.version}")
            self.dir.mkdir(parents=True, exist_ok=True)
            release = Release(version, hashlib.sha256(data).hexdigest(), self.sign(data), len(data),
                              self.dir / "dvic_node.py")
            # Not secret (every node downloads them), but each written whole or not at all, durably,
            # and never through a file planted in the directory.
            write_private(release.path, data, mode=PUBLIC_MODE)
            write_private(self.dir / "release.json", json.dumps(release.meta()), mode=PUBLIC_MODE)
            return release

    def current(self) -> Release | None:
        meta_path = self.dir / "release.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        return Release(path=self.dir / "dvic_node.py", **meta)

    def ensure_published(self, source: Path) -> Release | None:
        """On start: publish the daemon shipped with the server when it is newer than the held one
        (under the data dir's lock: servers sharing it may start at once)."""
        if not source.exists():
            return self.current()
        data = source.read_bytes()
        with data_dir_lock(self.data_dir):
            current = self.current()
            try:
                shipped = daemon_version(data)
            except ReleaseError:
                return current
            if current is None or parse_version(shipped) > parse_version(current.version):
                return self.publish(data)
            return current
