"""The conformance suite's machinery (README.md): find and build drivers, run them, read their files.

Kept apart from the tests so that `python -m tests.conformance.regen` can write the golden
vectors with exactly the reading and normalising the tests compare against.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DRIVERS_DIR = HERE / "drivers"
VECTORS = REPO / "tests" / "vectors"
SCRIPT_PATH = VECTORS / "dvic_log_conformance.json"
EXPECTED_PATH = VECTORS / "dvic_log_conformance_expected.json"

sys.path.insert(0, str(REPO / "lib" / "python"))
from dvic_log._format import (  # noqa: E402
    TRUNCATION_MARK,
    encode_line,
    fit_record,
    heartbeat_line,
    make_header,
    make_record,
    record_line,
)
from dvic_log._reader import Follower  # noqa: E402

LIVE_NAME = re.compile(r"^dvic_log_[0-9a-f]{16}$")
RECORD_FIELDS = ("level", "msg", "logger", "exc", "heartbeat")
HEADER_FIELDS = ("dvic_log", "name", "rotated")
# The writer keeps this much room for the '"rotated":N' field of later headers (lib/python/dvic_log/_writer.py).
ROTATED_FIELD_SLACK = 24
DRIVER_TIMEOUT_S = 120


def load_script() -> dict[str, Any]:
    return json.loads(SCRIPT_PATH.read_text(encoding="utf-8"))


# ----- drivers ----------------------------------------------------------------------------------

@dataclass
class Driver:
    """One library's driver, as described by drivers/<name>.json."""

    name: str
    capabilities: frozenset[str]
    tools: list[str]
    build: list[list[str]]
    command: list[str]
    env: dict[str, str]
    build_dir: Path = field(default_factory=Path)

    @classmethod
    def load(cls, path: Path) -> Driver:
        spec = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            name=spec["name"], capabilities=frozenset(spec.get("capabilities", ())), tools=list(spec.get("tools", ())),
            build=[list(cmd) for cmd in spec.get("build", ())], command=list(spec["command"]),
            env=dict(spec.get("env", {})),
        )

    def missing_tools(self) -> list[str]:
        return [tool for tool in self.tools if shutil.which(tool) is None]

    def fill(self, text: str) -> str:
        for key, value in (("{repo}", REPO), ("{here}", DRIVERS_DIR), ("{build}", self.build_dir),
                           ("{python}", sys.executable)):
            text = text.replace(key, str(value))
        return text

    def prepare(self, scratch: Path) -> None:
        """Run the build commands once; raises AssertionError with their output when one fails."""
        self.build_dir = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        for cmd in self.build:
            args = [self.fill(a) for a in cmd]
            done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"building the {self.name} driver failed: {args}\n{done.stdout}\n{done.stderr}"

    def expected_skips(self, ops: list[dict[str, Any]]) -> list[int]:
        return [i for i, op in enumerate(ops) if op.get("requires") and op["requires"] not in self.capabilities]


def all_drivers() -> list[Driver]:
    return [Driver.load(p) for p in sorted(DRIVERS_DIR.glob("*.json"))]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    summary: dict[str, Any] | None


def run_driver(driver: Driver, ops: list[dict[str, Any]], settings: dict[str, Any], log_dir: Path, *,
               fsize_limit: int | None = None, as_nobody: bool = False) -> Run:
    """Run the driver on a script of `ops` with DVIC_LOG_DIR=log_dir (which need not exist)."""
    scratch = Path(tempfile.mkdtemp(prefix="dvic-conformance-"))
    try:
        os.chmod(scratch, 0o755)  # readable by the driver also when it runs as nobody
        script = scratch / "script.json"
        script.write_text(json.dumps({"version": 1, "settings": settings, "ops": ops}), encoding="utf-8")
        os.chmod(script, 0o644)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_LOG_")}
        env.update({k: driver.fill(v) for k, v in driver.env.items()})
        env.update({"DVIC_LOG_DIR": str(log_dir), "DVIC_LOG_MAX_BYTES": str(settings["max_bytes"]),
                    "DVIC_LOG_KEEP_DAYS": "0", "PYTHONDONTWRITEBYTECODE": "1"})
        cmd = [driver.fill(a) for a in driver.command] + [str(script)]
        if as_nobody:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=DRIVER_TIMEOUT_S,
                              preexec_fn=_limit_file_size(fsize_limit) if fsize_limit else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stdout = done.stdout.decode("utf-8", "replace")
    summary = None
    lines = [line for line in stdout.splitlines() if line.strip()]
    if len(lines) == 1:
        try:
            summary = json.loads(lines[0])
        except ValueError:
            summary = None
    return Run(done.returncode, stdout, done.stderr.decode("utf-8", "replace"), summary)


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # As a full disk would: writes past `limit` bytes fail with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


# ----- reading the files ------------------------------------------------------------------------

@dataclass
class FileGroup:
    """Everything one writer stream (one token) left: its headers and records, as the reader sees them."""

    key: str
    token: str
    path: Path
    headers: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # parsed, with ts
    raw_lines: list[bytes] = field(default_factory=list)  # every line of .1 then live, without its newline
    first_header_len: int = 0  # bytes of the stream's first header line, newline included


def read_groups(log_dir: Path, driver_pid: int, tokens: Iterable[str] | None = None) -> dict[str, FileGroup]:
    """Read every live file of log_dir (or those of `tokens`) with the reference reader, .1 first."""
    groups: dict[str, FileGroup] = {}
    for path in sorted(log_dir.iterdir()):
        if not LIVE_NAME.match(path.name) or (tokens is not None and path.name[9:] not in tokens):
            continue
        with Follower(str(path), include_previous=True) as follower:
            entries = follower.poll() + follower.flush_partial()
        headers = [e.data for e in entries if e.kind == "header"]
        assert headers, f"{path}: no header"
        key = headers[-1]["name"] + ("" if headers[-1]["pid"] == driver_pid else "#child")
        assert key not in groups, f"two files for {key}: {groups[key].path} and {path}"
        group = FileGroup(key, path.name[9:], path, headers)
        for entry in entries:
            assert entry.kind in ("header", "record", "heartbeat"), f"{path}: unexpected {entry.kind} {entry.data}"
            if entry.kind != "header":
                group.records.append(entry.data)
        previous = Path(str(path) + ".1")
        for part in ([previous] if previous.exists() else []) + [path]:
            data = part.read_bytes()
            assert data.endswith(b"\n"), f"{part} ends inside a line"
            lines = data[:-1].split(b"\n")
            group.raw_lines += lines
            if not group.first_header_len:
                # The room for records was set by the stream's first header, the one without "rotated".
                rotated = json.loads(lines[0]).get("rotated", 0)
                group.first_header_len = len(lines[0]) + 1 - (len(f',"rotated":{rotated}') if rotated else 0)
        groups[key] = group
    return groups


def normalise_record(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: record[k] for k in RECORD_FIELDS if k in record}
    if isinstance(out.get("msg"), str) and out["msg"].endswith(TRUNCATION_MARK):
        del out["msg"]
        out["msg_truncated"] = True
    return out


def normalise_header(header: dict[str, Any]) -> dict[str, Any]:
    return {k: header[k] for k in HEADER_FIELDS if k in header}


def records_by_op(ops: list[dict[str, Any]], skipped: Iterable[int]) -> list[tuple[str, int, int]]:
    """(file key, op index, number of records) of every op that writes, in order."""
    skipped = set(skipped)
    names: dict[str, str] = {}
    out = []
    for index, op in enumerate(ops):
        if index in skipped:
            continue
        kind = op["op"]
        if kind == "open":
            names[op["log"]] = op["name"]
            continue
        name = names.get(op.get("log", ""), "?")
        count = {"write": 1, "write_many": op.get("count", 0), "heartbeat": 1, "fork": op.get("count", 0),
                 "threads": op.get("threads", 0) * op.get("count", 0)}.get(kind, 0)
        if count:
            out.append((name + ("#child" if kind == "fork" else ""), index, count))
    return out


def tag_records(groups: dict[str, FileGroup], ops: list[dict[str, Any]], skipped: Iterable[int]) -> dict[str, Any]:
    """The normalised view of a run: per file key its headers and its records, each tagged with its op.

    A threads op's records are sorted (threads interleave by design); everything else keeps file order.
    """
    view: dict[str, Any] = {}
    cursor: dict[str, int] = {}
    tagged: dict[str, list[dict[str, Any]]] = {key: [] for key in groups}
    for key, index, count in records_by_op(ops, skipped):
        records = groups[key].records if key in groups else []
        start = cursor.get(key, 0)
        block = [dict(normalise_record(r), op=index) for r in records[start:start + count]]
        if ops[index]["op"] == "threads":
            block.sort(key=lambda r: r.get("msg", ""))
        tagged.setdefault(key, []).extend(block)
        cursor[key] = start + count
    for key, group in groups.items():
        extra = [dict(normalise_record(r), op=None) for r in group.records[cursor.get(key, 0):]]
        view[key] = {"headers": [normalise_header(h) for h in group.headers], "records": tagged[key] + extra}
    return view


def expected_view(expected: dict[str, Any], skipped: Iterable[int]) -> dict[str, Any]:
    """The golden view without the records of skipped ops (and without files only they made)."""
    skipped = set(skipped)
    out = {}
    for key, data in expected["files"].items():
        records = [r for r in data["records"] if r["op"] not in skipped]
        if data["records"] and not records:
            continue
        out[key] = {"headers": data["headers"], "records": records}
    return out


# ----- checks shared by the tests and regen -----------------------------------------------------

def check_lines_are_python_bytes(group: FileGroup) -> None:
    """Every line is exactly the bytes the Python library writes for the same fields (escaping, key order, ts)."""
    for raw in group.raw_lines:
        obj = json.loads(raw.decode("utf-8"))
        if "dvic_log" in obj:
            fields = {k: obj[k] for k in ("token", "name", "pid", "pid_start", "exe", "argv", "user", "host", "start")}
            again = encode_line(make_header(**fields, rotated=obj.get("rotated", 0)))
        elif obj.get("heartbeat") == 1:
            again = heartbeat_line(obj["ts"])
        else:
            again = record_line(float(obj["ts"]), obj["level"], obj["msg"], obj.get("logger"), obj.get("exc"))
        assert again == raw + b"\n", f"{group.path}: line differs from the Python library's bytes:\n" \
                                     f"  file:   {raw[:300]!r}\n  python: {again[:300]!r}"


def check_truncation(group: FileGroup, ops: list[dict[str, Any]], max_bytes: int) -> int:
    """Records cut to fit the cap are cut exactly as the Python library cuts them. Returns how many were checked."""
    max_line = max_bytes - group.first_header_len - ROTATED_FIELD_SLACK
    originals = {}
    for op in ops:
        if op["op"] == "write" and op.get("repeat"):
            whole = op["msg"] * op["repeat"]
            originals[whole[:64]] = whole
    checked = 0
    for raw in group.raw_lines:
        obj = json.loads(raw.decode("utf-8"))
        if not (isinstance(obj.get("msg"), str) and obj["msg"].endswith(TRUNCATION_MARK)):
            continue
        original = originals.get(obj["msg"][:64])
        assert original is not None, f"{group.path}: a truncated record no op asked for: {obj['msg'][:80]!r}"
        want = fit_record(make_record(float(obj["ts"]), obj["level"], original, obj.get("logger"), obj.get("exc")),
                          max_line)
        assert raw + b"\n" == want, (f"{group.path}: the big record is not cut as Python cuts it "
                                     f"(file {len(raw) + 1} bytes, python {len(want)} bytes, max line {max_line})")
        checked += 1
    return checked


def check_header_facts(group: FileGroup, driver_pid: int) -> None:
    for header in group.headers:
        assert header["dvic_log"] == 1 and header["token"] == group.token, header
        if header["pid"] == driver_pid:
            assert not group.key.endswith("#child")
        assert isinstance(header["pid"], int) and header["pid"] > 0
        assert header["pid_start"] is None or isinstance(header["pid_start"], int)
        assert isinstance(header["exe"], str) and header["exe"], header
        assert isinstance(header["argv"], list) and all(isinstance(a, str) for a in header["argv"]), header
        assert header["host"] == socket.gethostname(), header
        assert header["user"] == pwd.getpwuid(os.geteuid()).pw_name, header
        assert isinstance(header["start"], float | int)
    starts = {h["start"] for h in group.headers}
    assert len(starts) == 1, f"{group.path}: rotation changed the header's start: {starts}"
