"""A process that queues notifications the way the server does, then waits to be killed.

`python -m tests.central.alerts.notify_harness DATA_DIR WEBHOOK_URL COUNT`: opens the server's
database in DATA_DIR (migrating it), adds a webhook channel `hook` to WEBHOOK_URL, submits COUNT
notices to a real Dispatcher on central's writer, prints "submitted", and then only waits: the
test kills it with SIGKILL and starts a real server on the same data dir.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from central.alerts.channels.spec import parse_channel
from central.alerts.dispatcher import Dispatcher
from central.config import Notify

from .helpers import notice, open_database


async def main(data_dir: Path, url: str, count: int) -> None:
    database = await open_database(data_dir)
    sink = Dispatcher(database.writer, database.read_db,
                      Notify(group_window=0.5, group_quiet=0.2, backoff=1.0, backoff_max=1.0, timeout=2.0))
    await sink.start()
    await sink.add_channel(parse_channel("hook", "webhook", {"url": url}), "harness")
    await sink.submit([notice(f"pi-{i}", alert_id=i) for i in range(count)])
    print("submitted", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
