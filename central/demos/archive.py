"""The member rules and limits of a release archive, checked at publish (the daemon checks them again
when it unpacks: node_script/dvic_node.py `unpack_release`, docs/node-daemon.md "Unpacking").

Allowed: regular files and directories; symbolic links to a relative target inside the release (and
no member below a symlink); hard links to a file that came before. Refused, naming the member and the
rule: absolute paths, `..` components, names over 4,096 bytes (255 a component), devices, FIFOs,
sparse files, anything else. An archive bomb stops at the limits (unpacked file bytes, members, the
decompressed stream, extended headers of 1 MiB) without being unpacked anywhere: the archive is read
as a stream and only the manifest's bytes are kept.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES

MIB = 1024 * 1024
DEFAULT_MAX_UNPACKED = 4 * 1024 * MIB
DEFAULT_MAX_MEMBERS = 100_000
MAX_HEADER = 1 * MIB
EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
            tarfile.SOLARIS_XHDTYPE)
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
KINDS = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO",
         tarfile.GNUTYPE_SPARSE: "a sparse file"}


class BadArchive(ValueError):
    """The archive breaks a member rule or a limit; the message names the member and the rule."""


@dataclass(frozen=True)
class Limits:
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED
    max_members: int = DEFAULT_MAX_MEMBERS


@dataclass(frozen=True)
class Contents:
    manifest: bytes
    unpacked_bytes: int
    members: int


def member_path(raw: str) -> str | None:
    """'a/b' for a member inside the release, None for the root itself; BadArchive otherwise."""
    if "\x00" in raw or len(raw.encode("utf-8", "surrogateescape")) > 4096:
        raise BadArchive(f"bad archive member {raw[:200]!r}: the name is too long or holds a NUL")
    if raw.startswith("/"):
        raise BadArchive(f"bad archive member {raw!r}: absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadArchive(f"bad archive member {raw!r}: '..' component")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise BadArchive(f"bad archive member {raw[:200]!r}: a name component is longer than 255 bytes")
    return "/".join(parts) if parts else None


class _Bounded:
    """The decompressed stream, refusing to go past `limit` bytes (also reads tarfile makes itself)."""

    def __init__(self, raw: IO[bytes] | gzip.GzipFile, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or self.count + n > self.limit:
            n = self.limit - self.count + 1
        data = self.raw.read(n)
        self.count += len(data)
        if self.count > self.limit:
            raise BadArchive(f"the archive unpacks to more than {self.limit} bytes (an archive bomb?)")
        return data


class _CheckedTarInfo(tarfile.TarInfo):
    def _proc_member(self, tar: Any) -> Any:  # tarfile's hook for every header it reads
        if self.type in EXTENDED and self.size > MAX_HEADER:
            raise BadArchive(f"bad archive: an extended header of {self.size} bytes (an archive bomb?)")
        return super()._proc_member(tar)  # type: ignore[misc]


def check_archive(path: Path, limits: Limits) -> Contents:
    """Every member of the tar.gz at `path` checked; its manifest's bytes. Reads, never unpacks."""
    try:
        with gzip.open(path, "rb") as raw:
            return _walk(raw, limits)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise BadArchive(f"not a gzip-compressed tar archive: {exc}") from None
    except tarfile.TarError as exc:
        raise BadArchive(f"not a valid tar archive: {exc}") from None


def _walk(raw: IO[bytes] | gzip.GzipFile, limits: Limits) -> Contents:
    # the stream itself: file content, plus headers and padding per member, plus slack
    stream_limit = limits.max_unpacked_bytes + 2048 * limits.max_members + MIB
    tar = tarfile.open(fileobj=_Bounded(raw, stream_limit), mode="r|",  # type: ignore[call-overload]
                       tarinfo=_CheckedTarInfo)
    kinds: dict[str, str] = {}  # member path -> "dir" | "file" | "link"
    total = members = 0
    manifest: bytes | None = None
    for m in tar:
        members += 1
        if members > limits.max_members:
            raise BadArchive(f"the archive has more than {limits.max_members} members (an archive bomb?)")
        name = member_path(m.name)
        if name is None:
            if not m.isdir():
                raise BadArchive(f"bad archive member {m.name!r}: the release's root must be a directory")
            continue
        _check_parents(m.name, name, kinds)
        kinds[name] = _check_member(m, name, kinds)
        if m.type in REGULAR:
            total += m.size
            if total > limits.max_unpacked_bytes:
                raise BadArchive(f"the archive unpacks to more than {limits.max_unpacked_bytes} bytes "
                                 "(an archive bomb?)")
            if name == MANIFEST_NAME:
                manifest = _read_manifest(tar, m)
    if manifest is None:
        raise BadArchive(f"no {MANIFEST_NAME} at the archive's root (it must hold the manifest as a file)")
    return Contents(manifest, total, members)


def _check_parents(raw: str, name: str, kinds: dict[str, str]) -> None:
    parts = name.split("/")
    for i in range(1, len(parts)):
        above = "/".join(parts[:i])
        if kinds.get(above) == "link":
            raise BadArchive(f"bad archive member {raw!r}: it lies below the symlink {above!r}")
        if kinds.get(above) == "file":
            raise BadArchive(f"bad archive member {raw!r}: it lies below the file {above!r}")
        kinds.setdefault(above, "dir")


def _check_member(m: tarfile.TarInfo, name: str, kinds: dict[str, str]) -> str:
    what = f"bad archive member {m.name!r}: "
    if name in kinds and not (kinds[name] == "dir" and m.isdir()):
        raise BadArchive(what + "it appears twice")
    if m.isdir():
        return "dir"
    if m.type in REGULAR:
        return "file"
    if m.issym():
        link = m.linkname
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), link)) if link else ".."
        if os.path.isabs(link) or resolved == ".." or resolved.startswith("../"):
            raise BadArchive(what + f"a symlink to {link!r}, outside the release")
        return "link"
    if m.islnk():
        target: str | None
        try:
            target = member_path(m.linkname)
        except BadArchive:  # absolute, '..': outside the release in any case
            target = None
        if target is None or kinds.get(target) != "file":
            raise BadArchive(what + f"a hard link to {m.linkname!r}, which is not a file that came before it")
        return "file"
    kind = KINDS.get(m.type, f"a member of type {m.type!r}")
    raise BadArchive(what + f"{kind} (only files, directories and links are allowed)")


def _read_manifest(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    if m.size > MAX_MANIFEST_BYTES:
        raise BadArchive(f"{MANIFEST_NAME}: larger than {MAX_MANIFEST_BYTES // 1024} KiB")
    f = tar.extractfile(m)
    assert f is not None  # a regular file
    return f.read()
