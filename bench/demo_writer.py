"""A benchmark demo: one process that logs through dvic_log at a steady rate, driven over stdin/stdout.

    python3 bench/demo_writer.py --name NAME [--rate LINES_PER_S] [--count N] [--stamp]

Run with lib/python on PYTHONPATH and DVIC_LOG_DIR set. It opens its dvic_log file, prints
`{"event": "ready", "token", "pid", "path"}`, waits for a line on stdin ("go"), writes --count
lines at --rate (line i is due at start + i / rate, so a slow moment is caught up, never
skipped), prints `{"event": "done", "written", "first", "last", "behind_max"}`, then stays
alive (an idle demo) until stdin reaches its end. --count 0 makes an idle demo with only its
header. --stamp ends each message with ` sent=<unix time>` taken just before its write, which
bench/subscriber.py turns into a latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import dvic_log

FILLER = "sensor=arm-2 reading=0.4172 state=tracking queue=3"  # a realistic line length (~100 bytes)


def message(name: str, index: int, stamp: bool) -> str:
    text = f"bench {name} {index:08d} {FILLER}"
    # time.time() last: the stamp is taken as close to the write as Python allows
    return f"{text} sent={time.time():.6f}" if stamp else text


def emit(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def write_lines(log: dvic_log.LogFile, name: str, count: int, rate: float, stamp: bool) -> dict[str, object]:
    start = time.monotonic()
    first = last = 0.0
    behind_max = 0.0
    for i in range(count):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)  # pacing the demo's output at --rate
        else:
            behind_max = max(behind_max, now - due)
        log.info(message(name, i, stamp))
        last = time.time()
        if i == 0:
            first = last
    return {"event": "done", "written": count, "first": first, "last": last, "behind_max": behind_max}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the demo name in the file's header")
    p.add_argument("--rate", type=float, default=100.0, help="lines per second (> 0)")
    p.add_argument("--count", type=int, default=0, help="lines to write after 'go' (0: an idle demo)")
    p.add_argument("--stamp", action="store_true", help="end each message with ' sent=<unix time>'")
    args = p.parse_args(argv)
    if not args.rate > 0:
        p.error(f"--rate must be > 0, got {args.rate}")
    if args.count < 0:
        p.error(f"--count must be >= 0, got {args.count}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = dvic_log.open_log(args.name)
    emit({"event": "ready", "token": log.token, "pid": os.getpid(), "path": log.path})
    if not sys.stdin.readline():  # the benchmark went away before saying go
        return 1
    emit(write_lines(log, args.name, args.count, args.rate, args.stamp))
    sys.stdin.read()  # idle until the benchmark closes our stdin
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
