"""dvic-central with a what-if change applied at start-up, to measure a proposed fix.

    DVIC_BENCH_SSL_READ_BUFFER=16384 python3 -m bench.whatif_server ...

- DVIC_BENCH_SSL_READ_BUFFER=BYTES: asyncio allocates a read buffer of `SSLProtocol.max_size`
  (256 KiB on Python 3.11) for every TLS connection and fills it with zeros, so each idle node
  websocket costs about a quarter of a megabyte. This sets another size (the server itself sets
  a smaller one, see central/cli.py; 262144 measures the default).

- DVIC_BENCH_MEMPROBE=DIR: SIGUSR2 writes a memory probe into DIR (bench/memprobe.py).

The server code itself (central/) is not touched; without the variable this is dvic-central.
Used by the `--whatif-ssl-buffer` option of bench.fleet, bench.ingest and bench.keepalive.
Earlier what-ifs (metrics not awaited, the FTS index filled per batch) became the server's own
behaviour and were removed.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import os

from central.cli import main

from .memprobe import install_from_env

SSL_BUFFER_ENV = "DVIC_BENCH_SSL_READ_BUFFER"


if __name__ == "__main__":
    size = int(os.environ.get(SSL_BUFFER_ENV, "0") or 0)
    if size > 0:
        asyncio.sslproto.SSLProtocol.max_size = size
    install_from_env()
    raise SystemExit(main())
