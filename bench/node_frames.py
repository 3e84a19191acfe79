"""Node frame validation cost: parse + validate time of the frames a fleet sends most.

    python3 -m bench.node_frames [--lines 100] [--repeat 7] [--number 2000]

The node websocket validates every frame on the server's one event loop (2,000 nodes x 5 lines/s
is 10,000 lines/s), so this is the per-frame price of `central.messages.parse_node_message`.
Prints the best of --repeat runs (microseconds per frame; per line for log batches), the figure
least disturbed by other work on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any

from central.messages import parse_node_message
from central.strictjson import loads


def log_line(seq: int) -> dict[str, Any]:
    """A line as the daemon sends it: a demo's line of about 100 characters."""
    return {"seq": seq, "ts": 1764000000.5 + seq / 1000, "source": "demo", "unit": "robot-arm",
            "demo": "a1b2c3d4e5f60718", "level": "INFO",
            "msg": f"calibrated joint {seq % 6} in {seq % 97} ms; position ok, torque within limits, temp 41.5C",
            "truncated": False}


def frames(lines: int) -> dict[str, str]:
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


def best(call: Any, repeat: int, number: int) -> float:
    """Best seconds per call."""
    return min(timeit.repeat(call, repeat=repeat, number=number)) / number


def measure(text: str, repeat: int, number: int) -> tuple[float, float]:
    """(seconds to parse and validate `text`, seconds of that spent decoding the JSON)."""
    parse_node_message(text)  # fails here, not inside the timing, if the frame is refused
    return (best(lambda: parse_node_message(text), repeat, number),
            best(lambda: loads(text), repeat, number))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100, help="lines in the big log batch (100)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000, help="calls per run (divided by lines for batches)")
    args = parser.parse_args(argv)
    for name, text in frames(args.lines).items():
        lines = args.lines if name == f"logs x{args.lines}" else 1
        seconds, decoding = measure(text, args.repeat, max(1, args.number // lines))
        checks = seconds - decoding
        per_line = f"  ({seconds / lines * 1e6:.2f} us a line, checks {checks / lines * 1e6:.2f})" if lines > 1 else ""
        print(f"{name:<12} {seconds * 1e6:9.1f} us a frame, of which JSON {decoding * 1e6:7.1f}{per_line}")


if __name__ == "__main__":
    main()
