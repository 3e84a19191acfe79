"""One process at a time in a data dir's shared files: the lock replicas sharing a data dir take.

Several `dvic-central serve --replica NAME` may share one data dir (a shared volume). Whatever a
server creates there when it is missing (the CA, the release key, the admin token, its server
certificate) and what it announces there (listen.json) is read, created and written under
`data_dir_lock`, so a second process waits for the first and then uses what it made instead of
making its own (two CAs would leave certificates issued by one that is then overwritten).

The lock is `fcntl.flock` on LOCK_FILE: the kernel releases it when the process dies, and Linux
NFS clients map it to NFS byte-range locks, so it also holds between hosts on NFSv4 (or NFSv3
with lockd).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

LOCK_FILE = "datadir.lock"


def _open_lock(data_dir: Path) -> int:
    return os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's lock (waiting for another process that holds it). Blocks the thread:
    for short work that does not wait on the event loop."""
    fd = _open_lock(data_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.asynccontextmanager
async def data_dir_lock_async(data_dir: Path) -> AsyncIterator[None]:
    """`data_dir_lock` for a coroutine that awaits while holding it: waits in a worker thread."""
    fd = _open_lock(data_dir)
    locking = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
    try:
        await asyncio.shield(locking)
        yield
    finally:
        # Closing releases the lock. A cancelled wait's thread is still in flock on `fd`: close it
        # when that returns, not before (the number could be reused meanwhile).
        if locking.done():
            os.close(fd)
        else:
            locking.add_done_callback(lambda task: _close_after(task, fd))


def _close_after(task: asyncio.Future[None], fd: int) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed flock has nothing to release
    os.close(fd)
