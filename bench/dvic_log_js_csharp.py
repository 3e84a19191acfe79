"""Benchmark: lines/s of the JavaScript and C# dvic_log libraries writing 100-byte messages, beside Python's.

    python3 -m bench.dvic_log_js_csharp [--records N] [--threads 1,4] [--repeat 3]

Each library writes N records of the same 100-byte ASCII message into a fresh temporary
directory with the default 8 MiB cap (so rotations are included), from 1 and from 4 threads:
Python `LogFile.write` (lib/python), JavaScript `getLogger().info` (lib/js, worker threads sharing
the file; bench/dvic_log_js_bench.js) and C# `Logger.Info` (lib/csharp/DvicLog.cs built with
`mcs -optimize`, run by mono; bench/dvic_log_cs_bench.cs). The best of --repeat runs is shown.
Figures go to docs/performance.md ("JavaScript and C# libraries"). Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib" / "python"))

import dvic_log  # noqa: E402  (the source tree's)

from .dvic_log_bench import timed_threads  # noqa: E402

MESSAGE = ("bench record with a plain ASCII message of exactly one hundred bytes: " + "x" * 100)[:100]


def python_rate(directory: str, records: int, threads: int) -> float:
    log = dvic_log.open_log("bench-py", directory=directory)
    per_thread = records // threads
    seconds = timed_threads(threads, per_thread, lambda _: log.write("INFO", MESSAGE))
    log.close()
    return per_thread * threads / seconds


def program_rate(command: list[str], directory: str, records: int, threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_LOG_")}
    env.update(DVIC_LOG_DIR=directory, DVIC_LOG_KEEP_DAYS="0")
    done = subprocess.run([*command, str(records), str(threads)], capture_output=True, text=True, check=True,
                          env=env, timeout=600)  # fmt: skip
    result = json.loads(done.stdout)
    return result["records"] / result["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records per run (Python: a quarter)")
    parser.add_argument("--threads", default="1,4", help="thread counts, comma-separated (default 1,4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is shown (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dvic-log-js-cs-"))
    figures: dict[str, float] = {}
    try:
        libraries: list[tuple[str, Callable[[str, int], float]]] = [
            ("python LogFile.write", lambda d, t: python_rate(d, max(1, args.records // 4), t)),
        ]
        if shutil.which("node"):
            js = ["node", str(REPO / "bench" / "dvic_log_js_bench.js")]
            libraries.append(("javascript log.info", lambda d, t: program_rate(js, d, args.records, t)))
        else:
            print("node not found: no JavaScript figures")
        if shutil.which("mcs") and shutil.which("mono"):
            exe = scratch / "bench.exe"
            subprocess.run(["mcs", "-nologo", "-optimize", f"-out:{exe}", str(REPO / "lib" / "csharp" / "DvicLog.cs"),
                            str(REPO / "bench" / "dvic_log_cs_bench.cs")], check=True)  # fmt: skip
            libraries.append(("c# Logger.Info (mono)", lambda d, t: program_rate(["mono", str(exe)], d, args.records, t)))
        else:
            print("mcs/mono not found: no C# figures")
        print(f"{'library':<28} {'threads':>7} {'lines/s':>12}")
        for threads in [int(t) for t in args.threads.split(",")]:
            for name, bench in libraries:
                best = 0.0
                for _ in range(args.repeat):
                    directory = tempfile.mkdtemp(dir=scratch)
                    best = max(best, bench(directory, threads))
                    shutil.rmtree(directory)
                figures[f"{name}, {threads} thread(s)"] = best
                print(f"{name:<28} {threads:>7} {best:>12,.0f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
