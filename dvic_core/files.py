"""The one writer of private files (keys, tokens, bundles, settings) for the server, the `dvic`
client and the installer: `write_private`.

The node daemon keeps its own copy (`write_file_atomic` in node_script/dvic_node.py: one file,
Python 3.8); tests/central/test_private_writer.py holds the two to the same cases.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: `typing` is slow to import (dvic_core/__init__.py)
if TYPE_CHECKING:
    from os import PathLike


def write_private(path: str | PathLike[str], data: bytes | str, mode: int = 0o600, sync: bool = True) -> None:
    """Replace `path` with `data` (str as UTF-8) so that a crash leaves the old content or the new
    one, never half of it, and the file has `mode` from its first byte.

    The temp file is a new one with a random name in the target's directory (mkstemp: O_CREAT|O_EXCL
    and O_NOFOLLOW), so a file or symlink someone planted there is never written through; the
    rename replaces `path` itself (a symlink at `path` is replaced, not followed). Every byte is
    written (os.write may write less than asked); on any failure the temp file is removed and
    `path` is left as it was. `sync`: the data and the rename reach the disk before this returns
    (a power cut then leaves the new file).
    """
    import tempfile  # not at module level: it imports shutil and random, and `dvic run` imports this module

    target = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data.encode() if isinstance(data, str) else data, sync)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        _sync_directory(directory)


def _write_all(fd: int, data: bytes, sync: bool) -> None:
    """Every byte of `data` (os.write may write less than asked), then to the disk if `sync`."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if sync:
        os.fsync(fd)


def _sync_directory(directory: str) -> None:
    """Makes a rename in `directory` durable (the directory entry is data too)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
