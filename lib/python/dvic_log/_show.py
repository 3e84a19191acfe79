"""`python3 -m dvic_log cat` and `ls`: reading demo logs by hand, without jq."""

import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO

from ._reader import Entry, Follower, is_alive, live_files, read_header

#: Poll interval of `cat --follow`; a human reads along, so a quarter second is plenty.
FOLLOW_INTERVAL = 0.25


def _clock(ts: Optional[float]) -> str:
    if ts is None:
        return "-" * 23
    whole = int(ts)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole)) + ".%03d" % int(
        round((ts - whole) * 1000) % 1000
    )


def format_entry(entry: Entry, prefix: str = "") -> Optional[str]:
    """One entry as text lines: time, level, [logger], message; continuation lines indented."""
    data = entry.data
    if entry.kind in ("header", "heartbeat"):  # identity and liveness, not log lines
        return None
    if entry.kind == "gap":
        return "%s-- %d file(s) rotated away before they could be read --" % (prefix, data["files"])
    head = "%s%s %-8s " % (prefix, _clock(data.get("ts")), data["level"])
    indent = " " * len(head)  # continuation lines start under the message column
    logger = data.get("logger")
    if isinstance(logger, str) and logger:
        head += "[%s] " % logger
    lines = data["msg"].split("\n")
    exc = data.get("exc")
    if isinstance(exc, str) and exc:
        lines += exc.split("\n")
    return head + ("\n" + indent).join(lines)


def resolve(target: str, directory: str) -> str:
    """A path, or a token / demo name found in the log directory."""
    if os.path.exists(target):
        return target
    if os.sep in target:
        raise FileNotFoundError("no such file: %s" % target)
    by_token = os.path.join(directory, "dvic_log_" + target)
    if os.path.exists(by_token):
        return by_token
    named = [p for p in live_files(directory) if (read_header(p) or {}).get("name") == target]
    if not named:
        raise FileNotFoundError("no dvic_log file, token or demo name %r in %s" % (target, directory))
    return max(named, key=lambda p: os.stat(p).st_mtime)  # the latest run of that demo


def cat(paths: List[str], follow: bool, include_previous: bool, out: TextIO = sys.stdout) -> int:
    # With several files, each line says which one (by token) it comes from.
    pairs = [
        (
            Follower(p, include_previous=include_previous),
            "%s: " % os.path.basename(p)[9:] if len(paths) > 1 else "",
        )
        for p in paths
    ]
    try:
        while True:
            for follower, prefix in pairs:
                # A one-shot cat shows a torn last line too; a follower waits for its newline.
                for entry in follower.poll() + ([] if follow else follower.flush_partial()):
                    text = format_entry(entry, prefix)
                    if text is not None:
                        out.write(text + "\n")
            out.flush()
            if not follow:
                return 0
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return 0
    finally:
        for follower, _ in pairs:
            follower.close()


def _size(path: str) -> int:
    total = 0
    for p in (path, path + ".1"):
        try:
            total += os.stat(p).st_size
        except OSError:
            pass
    return total


def describe(directory: str) -> List[Dict[str, Any]]:
    """One dict per live file: token, name, pid, state, bytes (live + .1), last write, path."""
    rows = []
    for path in live_files(directory):
        header = read_header(path)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        rows.append(
            {
                "token": os.path.basename(path)[len("dvic_log_") :],
                "name": header.get("name") if header else None,
                "pid": header.get("pid") if header else None,
                "state": ("alive" if is_alive(header) else "exited") if header else "broken header",
                "bytes": _size(path),
                "last_write": round(mtime, 3),
                "path": path,
            }
        )
    return rows


def ls(directory: str, as_json: bool, out: TextIO = sys.stdout) -> int:
    rows = describe(directory)
    if as_json:
        import json

        out.write(json.dumps(rows) + "\n")
        return 0
    out.write(
        "%-16s  %-24s  %8s  %-13s  %10s  %s\n" % ("TOKEN", "NAME", "PID", "STATE", "BYTES", "LAST WRITE")
    )
    for row in sorted(rows, key=lambda r: r["last_write"]):
        out.write(
            "%-16s  %-24s  %8s  %-13s  %10d  %s\n"
            % (
                row["token"],
                (row["name"] or "?")[:24],
                row["pid"] if row["pid"] is not None else "?",
                row["state"],
                row["bytes"],
                _clock(row["last_write"])[:19],
            )
        )
    return 0
