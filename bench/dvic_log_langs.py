"""Benchmark: lines/s of each dvic_log library writing 100-byte messages, and the ESP32 core's enqueue.

    python3 -m bench.dvic_log_langs [--records N] [--threads 1,4]

Python (LogFile.write and the logging bridge) and C (lib/c/dvic_log.h, -O2) write N records of a
100-byte message into a temporary directory with the default 8 MiB cap (so rotations are
included); the ESP32 core (lib/esp32/dvic_board_log.h, host build, -O2) times its enqueue call.
Figures go to docs/performance.md ("dvic_log libraries"). Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib" / "python"))

import dvic_log  # noqa: E402  (the source tree's)

from .dvic_log_bench import timed_threads  # noqa: E402

MESSAGE = ("bench record with a plain ASCII message of exactly one hundred bytes: " + "x" * 100)[:100]


def python_rate(directory: str, records: int, threads: int, through_logging: bool) -> float:
    if through_logging:
        handler = dvic_log.DvicLogHandler("bench-py", directory=directory)
        logger = logging.getLogger("bench-py-logging")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        emit = lambda: logger.info(MESSAGE)  # noqa: E731
    else:
        log = dvic_log.open_log("bench-py", directory=directory)
        emit = lambda: log.write("INFO", MESSAGE)  # noqa: E731
    per_thread = records // threads
    return per_thread * threads / timed_threads(threads, per_thread, lambda _: emit())


def build(source: Path, out: Path, include: Path) -> None:
    subprocess.run(["gcc", "-std=c99", "-O2", "-pthread", f"-I{include}", str(source), "-o", str(out)], check=True)


def c_rate(binary: Path, directory: str, records: int, threads: int) -> float:
    done = subprocess.run([str(binary), str(records), str(threads)], capture_output=True, text=True, check=True,
                          env=dict(os.environ, DVIC_LOG_DIR=directory, DVIC_LOG_KEEP_DAYS="0"))
    result = json.loads(done.stdout)
    return result["records"] / result["seconds"]


def esp32_enqueue_ns(binary: Path, records: int) -> float:
    done = subprocess.run([str(binary), str(64 * 1024)], input=f"bench {records}\n", capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)["ns_per_log"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--threads", default="1,4", help="thread counts, comma-separated")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dvic-log-langs-"))
    try:
        c_bin, board_bin = scratch / "c_bench", scratch / "board_host"
        build(REPO / "bench" / "dvic_log_c_bench.c", c_bin, REPO / "lib" / "c")
        subprocess.run(["gcc", "-std=c99", "-O2", f"-I{REPO / 'lib' / 'esp32'}", str(REPO / "tests/esp32/board_host.c"),
                        "-o", str(board_bin)], check=True)
        print(f"{'library':<28} {'threads':>7} {'lines/s':>12}")
        for threads in [int(t) for t in args.threads.split(",")]:
            rows = [
                ("python LogFile.write", lambda d, t=threads: python_rate(d, args.records // 4, t, False)),
                ("python logging (get_logger)", lambda d, t=threads: python_rate(d, args.records // 4, t, True)),
                ("c dvic_log_write", lambda d, t=threads: c_rate(c_bin, d, args.records, t)),
            ]
            for name, bench in rows:
                directory = tempfile.mkdtemp(dir=scratch)
                print(f"{name:<28} {threads:>7} {bench(directory):>12,.0f}")
                shutil.rmtree(directory)
        print(f"esp32 core: {esp32_enqueue_ns(board_bin, 1_000_000):.0f} ns per dvic_board_log() call (host, -O2)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
