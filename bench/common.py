"""What every benchmark shares: its command line (work dir, JSON output, common options), its main(),
and the real server it measures (tests/support/server.py, the launcher the tests use)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.support.server import CentralServer

from .report import Report

WHATIF_SERVER = "bench.whatif_server"  # dvic-central with a what-if applied at start-up
SSL_BUFFER_ENV = "DVIC_BENCH_SSL_READ_BUFFER"  # read by bench/whatif_server.py


def parser(module: str, doc: str | None, *, nodes: int = 0, nodes_are: str = "simulated nodes",
           interval: bool = False) -> argparse.ArgumentParser:
    """The parser of `python3 -m bench.MODULE`, its help the module's docstring; with `nodes`, its
    --nodes option (that default); with `interval`, --interval (each node's metrics, 5 s)."""
    p = argparse.ArgumentParser(prog=f"python3 -m bench.{module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if nodes:
        p.add_argument("--nodes", type=positive_int, default=nodes, help=f"{nodes_are} ({nodes})")
    if interval:
        p.add_argument("--interval", type=positive_float, default=5.0, help="metrics interval per node, seconds (5)")
    return p


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", type=Path,
                        help="where the server's data dir, credentials and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (database, logs) afterwards")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")


def add_procs(parser: argparse.ArgumentParser, default: int, what: str = "load-generator processes") -> None:
    parser.add_argument("--procs", type=positive_int, default=default, help=f"{what} ({default})")


def add_whatif_ssl_buffer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--whatif-ssl-buffer", type=non_negative_int, default=0, metavar="BYTES",
                        help="run the server with asyncio's per-connection TLS read buffer at BYTES instead of "
                             "256 KiB (a proposed fix, see bench/whatif_server.py); 0 = the server as is")


def bench_server(data_dir: Path, whatif_ssl_buffer: int = 0, report: Report | None = None,
                 **options: Any) -> CentralServer:
    """A CentralServer (not started) as shipped, or with the --whatif-ssl-buffer what-if applied (and
    said so in the report's parameters)."""
    if whatif_ssl_buffer:
        options.update(module=WHATIF_SERVER, env={**options.get("env", {}), SSL_BUFFER_ENV: str(whatif_ssl_buffer)})
        if report is not None:
            report.params["WHAT-IF asyncio TLS read buffer"] = whatif_ssl_buffer
    return CentralServer(data_dir, api_timeout=60.0, **options)


@contextlib.contextmanager
def work_dir(path: Path | None, keep: bool, prefix: str) -> Iterator[Path]:
    """A fresh directory for one run; removed at the end unless asked to keep it or it was given."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise SystemExit(f"--work-dir {path} is not empty: give a new or empty directory")
        yield path
        return
    made = Path(tempfile.mkdtemp(prefix=f"dvic-bench-{prefix}-"))
    try:
        yield made
    finally:
        if keep:
            print(f"work dir kept: {made}")
        else:
            shutil.rmtree(made, ignore_errors=True)


def run_bench(args: argparse.Namespace, name: str, measure: Callable[[argparse.Namespace, Path], Any], *,
              run: Callable[[Any], Report] | None = asyncio.run,
              fails: tuple[type[Exception], ...] = ()) -> int:
    """main() of bench.`name`: `measure(args, work)` in a fresh work dir, then its report printed (and
    written as JSON with --json). `run` drives a coroutine `measure` (None: a plain function); an
    exception in `fails` is a failed run: its message on stderr, exit status 1."""
    with work_dir(args.work_dir, args.keep, name) as work:
        try:
            report = run(measure(args, work)) if run is not None else measure(args, work)
        except fails as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
    report.emit(args.json)
    return 0


def query_db(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one query on a server's database, opened read-only (the server may be running)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return number
