"""Command-line pieces every benchmark shares: the work directory and the JSON output option."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", type=Path,
                        help="where the server's data dir, credentials and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (database, logs) afterwards")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")


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


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return number
