"""The release catalog: publishing (streamed to disk while hashing), immutability, retention.

Archives live content-addressed in `DATA_DIR/releases/sha256/<hex>`; their name, version, manifest
(as JSON), size and sha256 in the database (`demo_releases`), and in memory for the deployments.
A release is immutable: the same name and version with other bytes is refused (409); with the same
bytes, publishing again is a no-op.

An upload in progress is a file in `DATA_DIR/releases/uploads/` that the receiving process holds
an flock on from its creation to its end; at start a server removes only the files nobody holds
(left by a crash or a kill), not those another server sharing the data dir is receiving.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..datadir import data_dir_lock
from ..errors import Refusal
from . import store
from .archive import BadArchive, Limits, check_archive
from .manifest import ManifestError, parse_manifest, version_key

log = logging.getLogger(__name__)

RELEASES_DIR = Path("releases") / "sha256"
UPLOADS_DIR = Path("releases") / "uploads"
DEFAULT_MAX_RELEASE_BYTES = 2 * 1024**3
DEFAULT_KEEP_UNREFERENCED = 5
WRITE_BATCH = 1024 * 1024  # bytes handed to the worker thread at once (hash + write)

Submit = Callable[..., Any]


class PublishError(Refusal):
    """Refused publication: HTTP status, error code and a message that says what to change."""


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    sha256: str
    size: int
    manifest: dict[str, Any]
    unpacked_bytes: int
    members: int
    published_at: float
    published_by: str

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "size": self.size,
                "manifest": self.manifest, "unpacked_bytes": self.unpacked_bytes, "members": self.members,
                "published_at": self.published_at, "published_by": self.published_by}


class Catalog:
    def __init__(self, data_dir: Path, submit: Submit, limits: Limits, max_release_bytes: int = DEFAULT_MAX_RELEASE_BYTES,
                 keep_unreferenced: int = DEFAULT_KEEP_UNREFERENCED) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / RELEASES_DIR
        self.uploads = data_dir / UPLOADS_DIR
        for d in (self.dir, self.uploads):
            d.mkdir(parents=True, exist_ok=True)
        self.submit = submit
        self.limits = limits
        self.max_release_bytes = max_release_bytes
        self.keep_unreferenced = keep_unreferenced
        self.by_name: dict[str, dict[str, Release]] = {}
        self._remove_stale_uploads()

    def _remove_stale_uploads(self) -> None:
        """Uploads cut short by a process that ended (a crash, a kill) leave nothing behind; those
        another server sharing the data dir is receiving stay (it holds their lock)."""
        with data_dir_lock(self.data_dir):  # no upload is created and not yet locked meanwhile
            for path in self.uploads.iterdir():
                if not _held(path):
                    path.unlink(missing_ok=True)

    def load(self, rows: list[dict[str, Any]]) -> None:
        """The releases stored (at start; again, from scratch, on gaining the features lead)."""
        self.by_name.clear()
        for row in rows:
            self._add(Release(**row))

    def _add(self, release: Release) -> None:
        self.by_name.setdefault(release.name, {})[release.version] = release

    # -- lookups -------------------------------------------------------------------------------
    def get(self, name: str, version: str) -> Release | None:
        return self.by_name.get(name, {}).get(version)

    def versions(self, name: str) -> list[Release]:
        """Releases of a demo, oldest version first."""
        return sorted(self.by_name.get(name, {}).values(), key=lambda r: version_key(r.version))

    def names(self) -> list[str]:
        return sorted(n for n, versions in self.by_name.items() if versions)

    def path(self, sha256: str) -> Path:
        return self.dir / sha256

    # -- publishing ----------------------------------------------------------------------------
    async def publish(self, body: AsyncIterator[bytes], content_length: int | None, operator: str, *,
                      name: str | None = None, version: str | None = None) -> tuple[Release, bool]:
        """Stream `body` to disk while hashing it, check it, keep it. (release, True when new)."""
        if content_length is not None and content_length > self.max_release_bytes:
            raise self._too_large()
        tmp = self.uploads / f"{uuid.uuid4().hex}.part"
        out = await asyncio.to_thread(self._new_upload, tmp)
        try:
            sha256, size = await self._receive(body, out)
            contents = await asyncio.to_thread(self._check, tmp, name, version)
            manifest = contents[0]
            release = Release(manifest["name"], manifest["version"], sha256, size, manifest, contents[1],
                              contents[2], time.time(), operator)
            return await self._keep(release, tmp)
        finally:
            tmp.unlink(missing_ok=True)
            out.close()  # its lock last: the file is gone or kept by then

    def _too_large(self) -> PublishError:
        return PublishError(413, "too_large", f"a release is at most {self.max_release_bytes} bytes "
                                              "(dvic-central serve --max-release-bytes)")

    def _new_upload(self, tmp: Path) -> IO[bytes]:
        """The upload's file, created and locked as one step for _remove_stale_uploads."""
        with data_dir_lock(self.data_dir):
            out = open(tmp, "xb")  # closed by publish
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)
        return out

    async def _receive(self, body: AsyncIterator[bytes], out: IO[bytes]) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in body:
            size += len(chunk)
            if size > self.max_release_bytes:
                raise self._too_large()
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_BATCH:
                await asyncio.to_thread(_absorb, out, digest, pending)
                pending, pending_size = [], 0
        await asyncio.to_thread(_absorb, out, digest, pending)
        await asyncio.to_thread(out.flush)
        await asyncio.to_thread(os.fsync, out.fileno())
        if size == 0:
            raise PublishError(400, "bad_archive", "the body is empty: send the release's tar.gz")
        return digest.hexdigest(), size

    def _check(self, tmp: Path, name: str | None, version: str | None) -> tuple[dict[str, Any], int, int]:
        try:
            contents = check_archive(tmp, self.limits)
        except BadArchive as exc:
            raise PublishError(400, "bad_archive", str(exc)) from None
        try:
            manifest = parse_manifest(contents.manifest, name=name, version=version)
        except ManifestError as exc:
            raise PublishError(400, "bad_manifest", str(exc)) from None
        return manifest, contents.unpacked_bytes, contents.members

    async def _keep(self, release: Release, tmp: Path) -> tuple[Release, bool]:
        known = self.get(release.name, release.version)
        if known is not None:
            return self._same_or_conflict(known, release), False
        final = self.path(release.sha256)
        if not final.exists():
            os.replace(tmp, final)
        row = {**release.view()}
        existing_sha = await self.submit(store.add_release(row), urgent=True)
        if existing_sha is not None:  # published by a concurrent request between the check and here
            known = self.get(release.name, release.version)
            return self._same_or_conflict(known or release, release), False
        self._add(release)
        log.info("published demo %s %s (%d bytes, sha256 %s) by %s", release.name, release.version, release.size,
                 release.sha256, release.published_by)
        return release, True

    @staticmethod
    def _same_or_conflict(known: Release, new: Release) -> Release:
        if known.sha256 != new.sha256:
            raise PublishError(409, "release_exists",
                               f"{known.name} {known.version} is already published with other content "
                               f"(sha256 {known.sha256[:12]}…): releases are immutable, publish a new version")
        return known

    # -- retention -----------------------------------------------------------------------------
    def expired(self, referenced: Collection[tuple[str, str]]) -> list[Release]:
        """Per demo, the unreferenced releases beyond the newest `keep_unreferenced` (by publication)."""
        out: list[Release] = []
        for versions in self.by_name.values():
            loose = sorted((r for r in versions.values() if (r.name, r.version) not in referenced),
                           key=lambda r: r.published_at, reverse=True)
            out.extend(loose[self.keep_unreferenced:])
        return out

    async def apply_retention(self, referenced: Collection[tuple[str, str]]) -> list[Release]:
        gone = self.expired(referenced)
        if not gone:
            return []
        orphans = await self.submit(store.delete_releases((r.name, r.version) for r in gone))
        for release in gone:
            self.by_name.get(release.name, {}).pop(release.version, None)
        for sha in orphans:
            with contextlib.suppress(FileNotFoundError):
                self.path(sha).unlink()
        log.info("retention removed demo releases %s", ", ".join(f"{r.name} {r.version}" for r in gone))
        return gone


def _held(path: Path) -> bool:
    """Whether a process holds the upload's lock (is receiving it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # gone, or not a plain file of ours (a symlink): removed all the same
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _absorb(out: IO[bytes], digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
