"""dvic-central with one what-if change to the Python runtime, to measure a proposed fix.

    DVIC_BENCH_SSL_READ_BUFFER=16384 python3 -m bench.whatif_server --data-dir D serve ...

asyncio allocates a read buffer of `SSLProtocol.max_size` (256 KiB on Python 3.11) for every TLS
connection and fills it with zeros, so each idle node websocket costs the server about a quarter
of a megabyte. This runs the unchanged server with a smaller buffer. Used by `bench.fleet
--whatif-ssl-buffer`; the server code itself (central/) is not touched.
"""

from __future__ import annotations

import asyncio.sslproto
import os

from central.cli import main

ENV = "DVIC_BENCH_SSL_READ_BUFFER"

if __name__ == "__main__":
    size = int(os.environ.get(ENV, "0"))
    if size > 0:
        asyncio.sslproto.SSLProtocol.max_size = size
    raise SystemExit(main())
