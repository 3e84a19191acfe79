"""Glances, run headless beside the daemon, collecting the metrics the daemon reports at the same interval.

Glances (https://nicolargo.github.io/glances/) is the peer operators use for machine metrics. It
is optional: `glances_command()` returns None when it is not installed, and the footprint
benchmark then skips the comparison column.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.procs import stop_process

# The daemon's metrics (protocol `metrics`): CPU total and per core, load, memory, swap, disk per
# file system, temperatures, uptime, process count, network I/O. These are the Glances plugins
# that collect the same; every other plugin is disabled so Glances does no extra work.
PLUGINS = "cpu,percpu,load,mem,memswap,fs,sensors,uptime,network,processcount"


def glances_command(interval: float, executable: str | None = None) -> list[str] | None:
    """The headless Glances command line, or None when Glances is not installed."""
    exe = executable or shutil.which("glances")
    if exe is None:
        return None
    # --stdout-csv prints one row per refresh and keeps running (4.5's --stdout-json stops after one).
    return [exe, "--disable-plugin", "all", "--enable-plugin", PLUGINS, "--stdout-csv", PLUGINS,
            "-t", f"{interval:g}", "--disable-check-update", "--disable-webui"]


def glances_version(executable: str) -> str:
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.split()[-1] if first else "unknown"


def count_samples(csv_path: Path) -> int:
    """Refreshes Glances printed so far: CSV rows after the header line."""
    try:
        with open(csv_path, encoding="utf-8", errors="replace") as fh:
            rows = sum(1 for line in fh if line.strip())
    except FileNotFoundError:
        return 0
    return max(0, rows - 1)


class GlancesRun:
    """Glances in the background, its CSV rows in a file and its diagnostics in another."""

    def __init__(self, command: list[str], out_dir: Path) -> None:
        self.command = command
        self.csv_path = out_dir / "glances.csv"
        self.err_path = out_dir / "glances.err"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("glances is not running")
        return self.proc.pid

    def start(self) -> GlancesRun:
        with open(self.csv_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        return self

    def samples(self) -> int:
        return count_samples(self.csv_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def error_tail(self) -> str:
        if not self.err_path.exists():
            return ""
        return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-10:])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
        self.proc = None
