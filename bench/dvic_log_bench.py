"""Benchmark: records/s written by dvic_log versus the standard logging.FileHandler.

Both write through a logging.Logger, one write(2) per record (FileHandler flushes after every
record), into files in a temporary directory. Prints records/s for each and the ratio, then the
throughput of the `run` wrapper; `python3 bench/dvic_log_bench.py --help` lists the knobs. Not
part of the test run.
"""

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib" / "python"))

import dvic_log  # noqa: E402  (imported from the source tree above)

# A comparable text line for FileHandler: time, level, logger and message.
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def timed_threads(threads: int, per_thread: int, emit: Callable[[int], None]) -> float:
    """Seconds for `threads` threads each calling emit(i) per_thread times, all let go at once.
    (bench.dvic_log_langs and bench.dvic_log_js_csharp time the libraries with it too.)"""
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for i in range(per_thread):
            emit(i)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - started


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def _through_logger(name: str, handler: logging.Handler, threads: int, per_thread: int, message: str) -> float:
    logger = _logger(name, handler)
    try:
        return timed_threads(threads, per_thread, lambda i: logger.info(message, i))
    finally:
        handler.close()


def bench_file_handler(directory: str, threads: int, per_thread: int, message: str) -> float:
    handler = logging.FileHandler(os.path.join(directory, "plain.log"))
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    return _through_logger("bench.plain", handler, threads, per_thread, message)


def bench_dvic_handler(directory: str, threads: int, per_thread: int, message: str) -> float:
    return _through_logger("bench.dvic", dvic_log.DvicLogHandler("bench", directory=directory), threads, per_thread,
                           message)


def bench_dvic_direct(directory: str, threads: int, per_thread: int, message: str) -> float:
    with dvic_log.open_log("bench-direct", directory=directory) as log:
        return timed_threads(threads, per_thread, lambda i: log.info(message % i))


Bench = Callable[[str, int, int, str], float]


def best_rates(benches: list[Bench], threads: int, per_thread: int, message: str, repeat: int) -> list[float]:
    """Best records/s of each bench over `repeat` rounds, each run in a fresh directory.

    Rounds interleave the benches (A B C, A B C ...) so that load from other processes on the
    machine weighs on all of them alike.
    """
    best = [0.0] * len(benches)
    for _ in range(repeat):
        for k, bench in enumerate(benches):
            directory = tempfile.mkdtemp(prefix="dvic_log_bench_")
            try:
                best[k] = max(best[k], threads * per_thread / bench(directory, threads, per_thread, message))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return best


def bench_wrapper(lines: int, repeat: int) -> tuple[float, float]:
    """(lines/s through `python3 -m dvic_log run`, lines/s of the same child writing to a file).

    The child prints `lines` lines as fast as it can; the first figure is end to end (child,
    pipe, wrapper, log file), the second the child alone with its stdout on a plain file.
    """
    child = [
        sys.executable,
        "-c",
        f"import sys\nfor i in range({lines}): print('sensor reading', i, 'x' * 40)",
    ]
    lib = str(Path(__file__).resolve().parents[1] / "lib" / "python")
    best_wrapped = best_plain = 0.0
    for _ in range(repeat):
        directory = tempfile.mkdtemp(prefix="dvic_log_bench_")
        try:
            env = dict(os.environ, PYTHONPATH=lib, DVIC_LOG_DIR=directory)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dvic_log", "run", "-q", "--", *child], env=env, check=True)
            best_wrapped = max(best_wrapped, lines / (time.perf_counter() - started))
            with open(os.path.join(directory, "plain.out"), "wb") as out:
                started = time.perf_counter()
                subprocess.run(child, stdout=out, check=True)
                best_plain = max(best_plain, lines / (time.perf_counter() - started))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return best_wrapped, best_plain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per run (default 100000)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4], help="thread counts (default 1 4)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure; the best is shown (default 3)"
    )
    parser.add_argument("--size", type=int, default=60, help="approximate message length (default 60)")
    parser.add_argument(
        "--wrapper-lines", type=int, default=200_000, help="lines for the run-wrapper figure (0: skip)"
    )
    args = parser.parse_args()
    message = "sensor reading %d " + "x" * max(0, args.size - 18)

    print(f"dvic_log {dvic_log.__version__}, Python {sys.version.split()[0]}, {args.records} records per run")
    print(
        f"{'threads':>7} {'FileHandler rec/s':>18} {'DvicLogHandler rec/s':>21} {'ratio':>6} "
        f"{'LogFile (direct) rec/s':>23} {'ratio':>6}"
    )
    for threads in args.threads:
        per_thread = max(1, args.records // threads)
        plain, handler, direct = best_rates(
            [bench_file_handler, bench_dvic_handler, bench_dvic_direct],
            threads,
            per_thread,
            message,
            args.repeat,
        )
        print(
            f"{threads:>7} {plain:>18,.0f} {handler:>21,.0f} {handler / plain:>6.2f} "
            f"{direct:>23,.0f} {direct / plain:>6.2f}"
        )
    print("ratio = dvic_log records/s / FileHandler records/s (higher is better for dvic_log)")
    if args.wrapper_lines:
        wrapped, plain_child = bench_wrapper(args.wrapper_lines, args.repeat)
        print(
            f"run wrapper: {wrapped:,.0f} lines/s end to end, the child alone {plain_child:,.0f} lines/s "
            f"(ratio {wrapped / plain_child:.2f}; {args.wrapper_lines} lines, process start-up included)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
