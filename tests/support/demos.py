"""Supervised demos run in sessions of their own and outlive their daemon by design: the one way
a test or a benchmark ends the demos (and their shims) its daemons started."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from .procs import pids_where, stat_fields


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose command line holds `tag` (this test's demo processes)."""
    def alive(pid: int) -> bool:
        fields = stat_fields(pid)
        return fields is not None and fields[0] != "Z"

    marked = pids_where(lambda cmd: tag.encode() in cmd.split(b"\0"))
    return sorted(pid for pid in marked if alive(pid))


def kill_demos(state: Path, tag: str = "") -> None:
    """End every shim and demo the daemon with this state directory started, and with `tag`, every
    live process whose command line holds it (a demo whose proc.json was never written)."""
    for proc_json in state.glob("demos/*/proc.json"):
        try:
            proc = json.loads(proc_json.read_text())
        except (OSError, ValueError):
            continue
        # The demo leads its own process group; the shim is one process.
        for pid, group in ((proc.get("pid"), True), (proc.get("shim_pid"), False)):
            if isinstance(pid, int) and pid > 0:
                _kill(pid, group)
    if tag:
        for pid in tagged_pids(tag):
            _kill(pid, group=False)


def _kill(pid: int, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except OSError:
        pass  # already gone
