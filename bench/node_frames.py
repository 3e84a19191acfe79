"""Node frame validation: the server's cost to decode and check the frames a fleet sends most.

    python3 -m bench.node_frames [--lines 100] [--rounds 100] [--json FILE]

Every node frame is decoded and checked on the server's one event loop (2,000 nodes x 5 lines/s
is 10,000 lines/s), by `central.messages.parse_node_message`: strict JSON, then the message
type's compiled schema (dvic_core/schema.py). Each frame is timed in many short rounds and the
best round is kept: on a shared machine that is the figure other work disturbs least (the median
is printed beside it). "checks" is the schema's part, the frame's time less its JSON decoding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from central.messages import parse_node_message
from central.strictjson import loads
from dvic_core.messages import MESSAGES

from .common import positive_int
from .report import Report


def log_line(seq: int) -> dict[str, Any]:
    """A line as the daemon sends it: a demo's line of about 100 characters."""
    return {"seq": seq, "ts": 1764000000.5 + seq / 1000, "source": "demo", "unit": "robot-arm",
            "demo": "a1b2c3d4e5f60718", "level": "INFO",
            "msg": f"calibrated joint {seq % 6} in {seq % 97} ms; position ok, torque within limits, temp 41.5C",
            "truncated": False}


def frames(lines: int) -> dict[str, str]:
    """The frames timed, by name: a big and a one-line log batch, a metrics sample, command output."""
    return {
        f"logs x{lines}": json.dumps({"type": "logs", "lines": [log_line(i + 1) for i in range(lines)]}),
        "logs x1": json.dumps({"type": "logs", "lines": [log_line(1)]}),
        "metrics": json.dumps({
            "type": "metrics", "ts": 1764000000.123, "cpu": {"total": 12.5, "per_core": [10.0, 15.0]},
            "load": [0.5, 0.4, 0.3], "mem": {"total": 4096000000, "available": 2048000000, "percent": 50.0},
            "disks": [{"mount": "/", "total": 32000000000, "used": 8000000000, "percent": 25.0}],
            "uptime": 12345.0, "procs": 143}),
        "exec_output": json.dumps({"type": "exec_output", "id": "0" * 36, "stream": "stdout", "data": "x" * 200}),
    }


def rounds(call: Callable[[], object], count: int, number: int) -> list[float]:
    """Seconds per call, one figure per round of `number` calls."""
    return [timeit.timeit(call, number=number) / number for _ in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=positive_int, default=100, help="lines in the big log batch (100)")
    parser.add_argument("--rounds", type=positive_int, default=100, help="timed rounds per frame (100)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    report = Report("node frame validation", params={"lines": args.lines, "rounds": args.rounds})
    for name, text in frames(args.lines).items():
        parse_node_message(text)  # a refused frame fails here, not inside the timing
        lines = len(json.loads(text).get("lines", [])) or 1
        number = max(1, 2000 // lines)
        total = rounds(lambda: parse_node_message(text), args.rounds, number)  # noqa: B023 (used at once)
        decode = rounds(lambda: loads(text), args.rounds, number)  # noqa: B023
        report.add(f"{name}: a frame", min(total) * 1e6, f"us (median {statistics.median(total) * 1e6:.1f})")
        report.add(f"{name}: checks", (min(total) - min(decode)) * 1e6, "us")
        if lines > 1:
            report.add(f"{name}: a line", min(total) / lines * 1e6, "us")
    checked = MESSAGES["logs"].schema.parser()
    batch = json.loads(frames(args.lines)[f"logs x{args.lines}"])
    only = rounds(lambda: checked(batch, "", None), args.rounds, max(1, 2000 // args.lines))
    report.add(f"logs x{args.lines}: the schema alone", min(only) * 1e6, "us")
    report.emit(args.json)


if __name__ == "__main__":
    main()
