"""dvic-central with what-if changes applied at start-up, to measure proposed fixes.

    DVIC_BENCH_SSL_READ_BUFFER=16384 DVIC_BENCH_METRICS_NOWAIT=1 python3 -m bench.whatif_server ...

- DVIC_BENCH_SSL_READ_BUFFER=BYTES: asyncio allocates a read buffer of `SSLProtocol.max_size`
  (256 KiB on Python 3.11) for every TLS connection and fills it with zeros, so each idle node
  websocket costs about a quarter of a megabyte. This sets a smaller one.
- DVIC_BENCH_METRICS_NOWAIT=1: metrics writes (keep-alive bodies, `metrics` messages) are queued
  to the batching writer without waiting for their commit; everything else is unchanged.
- DVIC_BENCH_FTS_BULK=1: the per-row full-text trigger `logs_ai` is dropped and each log batch
  fills the FTS index with one INSERT ... SELECT of the rows it added.

The server code itself (central/) is not touched; without these variables this is dvic-central.
Used by the `--whatif-*` options of bench.fleet, bench.ingest and bench.keepalive.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from central.cli import main
from central.writer import Writer

SSL_BUFFER_ENV = "DVIC_BENCH_SSL_READ_BUFFER"
METRICS_NOWAIT_ENV = "DVIC_BENCH_METRICS_NOWAIT"
FTS_BULK_ENV = "DVIC_BENCH_FTS_BULK"

_in_flight: set[asyncio.Future[Any]] = set()


def metrics_without_waiting() -> None:
    submit = Writer.submit

    async def queue_metrics(self: Writer, fn: Callable[[sqlite3.Connection], Any], *, urgent: bool = False) -> Any:
        if not getattr(fn, "__qualname__", "").startswith("insert_metrics."):
            return await submit(self, fn, urgent=urgent)
        task = asyncio.ensure_future(submit(self, fn, urgent=urgent))
        _in_flight.add(task)  # a reference until done; the writer logs a failed commit itself
        task.add_done_callback(_forget)
        return None

    Writer.submit = queue_metrics  # type: ignore[method-assign]


def fts_in_bulk() -> None:
    """Formerly a what-if; the server indexes full text once per batch itself (schema migration 3)."""

def _forget(task: asyncio.Future[Any]) -> None:
    _in_flight.discard(task)
    if not task.cancelled():
        task.exception()


if __name__ == "__main__":
    size = int(os.environ.get(SSL_BUFFER_ENV, "0") or 0)
    if size > 0:
        asyncio.sslproto.SSLProtocol.max_size = size
    if os.environ.get(METRICS_NOWAIT_ENV) == "1":
        metrics_without_waiting()
    if os.environ.get(FTS_BULK_ENV) == "1":
        fts_in_bulk()
    raise SystemExit(main())
