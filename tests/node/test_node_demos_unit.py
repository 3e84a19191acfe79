"""Supervised demos, piece by piece: the shim run alone (as the daemon starts it), the manifest and entry
checks, the member rules, the restart delays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dvic_node
import pytest
from daemon_support import interpreters
from dvic_log._reader import Follower

from tests.support.daemon import NODE_SCRIPT


def run_shim(tmp_path: Path, argv: list[str], python: str = sys.executable, **extra: object) -> tuple[int, dict]:
    """The shim exactly as the daemon starts it: `python3 -I -S -c SHIM_LAUNCHER dvic_node.py SPEC`."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    spec = {"name": "shimmed", "version": "1.0.0", "release": "1.0.0-abcdef12", "argv": argv, "cwd": str(tmp_path),
            "env": {"PATH": os.environ["PATH"]}, "user": "root", "log_dir": str(logs), "log_max_bytes": 0,
            "status": str(tmp_path / "proc.json"), "lock": str(tmp_path / "run.lock")}
    spec.update(extra)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([python, "-I", "-S", "-c", dvic_node.SHIM_LAUNCHER, str(NODE_SCRIPT),
                           str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads((tmp_path / "proc.json").read_text())


def read_all(path: str) -> list[tuple[str, dict]]:
    with Follower(path, include_previous=True) as f:
        return [(e.kind, e.data) for e in f.poll()]


@pytest.mark.parametrize("python", interpreters())
def test_the_shim_alone_writes_a_dvic_log_file_and_records_the_exit(tmp_path: Path, python: str) -> None:
    code, proc = run_shim(tmp_path, ["sh", "-c", "echo out; echo err >&2; printf 'no newline'; exit 4"], python)
    assert code == 4
    assert proc["exit"]["code"] == 4 and proc["exit"]["signal"] is None and proc["error"] is None
    entries = read_all(proc["log"])
    header = entries[0][1]
    assert entries[0][0] == "header" and header["pid"] == proc["pid"] and header["name"] == "shimmed"
    assert header["pid_start"] == proc["pid_start"] and header["argv"][0] == "sh"
    records = [(d["level"], d["msg"]) for kind, d in entries[1:]]
    assert ("INFO", "out") in records and ("ERROR", "err") in records and ("INFO", "no newline") in records
    assert records[-1] == ("ERROR", "sh exited with status 4")


def test_the_shim_rotates_its_file_as_dvic_log_does(tmp_path: Path) -> None:
    lines = 400  # about 40 KB of records against a 4 KiB cap: many rotations, the reader keeps up with none
    code, proc = run_shim(tmp_path, ["sh", "-c", f"for i in $(seq {lines}); do echo line $i of the demo; done"],
                          log_max_bytes=4096)
    assert code == 0
    assert os.path.getsize(proc["log"]) <= 4096 and os.path.exists(proc["log"] + ".1")
    live = json.loads(Path(proc["log"]).read_text().splitlines()[0])
    assert live["rotated"] > 5 and live["pid"] == proc["pid"]
    previous = json.loads(Path(proc["log"] + ".1").read_text().splitlines()[0])
    assert previous["token"] == live["token"] and previous["rotated"] == live["rotated"] - 1
    msgs = [d["msg"] for kind, d in read_all(proc["log"]) if kind == "record"]
    assert msgs[-1] == "sh exited with status 0" and msgs[-2] == f"line {lines} of the demo"


def test_the_shim_says_why_a_demo_cannot_start(tmp_path: Path) -> None:
    code, proc = run_shim(tmp_path, ["./no-such-program"])
    assert code == dvic_node.SHIM_EXIT_CANNOT_START
    assert proc["error"] == "cannot run ./no-such-program: No such file or directory"
    code, proc = run_shim(tmp_path, ["true"], cwd=str(tmp_path / "missing"))
    assert proc["error"].startswith("cannot enter the directory") and "No such file" in proc["error"]
    entries = read_all(proc["log"])
    assert entries[-1][1]["level"] == "CRITICAL" and entries[-1][1]["msg"] == proc["error"]


def test_a_second_shim_for_the_same_demo_starts_nothing(tmp_path: Path) -> None:
    import fcntl

    (tmp_path / "spec.json").write_text(json.dumps({
        "name": "x", "version": "1", "release": "r", "argv": ["touch", str(tmp_path / "ran")], "cwd": str(tmp_path),
        "env": {"PATH": os.environ["PATH"]}, "log_dir": str(tmp_path), "status": str(tmp_path / "proc.json"),
        "lock": str(tmp_path / "run.lock")}))
    with open(tmp_path / "run.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running shim holds it
        done = subprocess.run([sys.executable, "-I", "-S", "-c", dvic_node.SHIM_LAUNCHER, str(NODE_SCRIPT),
                               str(tmp_path / "spec.json")], capture_output=True, timeout=60)
    assert done.returncode == dvic_node.SHIM_EXIT_BUSY
    assert not (tmp_path / "ran").exists() and not (tmp_path / "proc.json").exists()


def test_restart_delays_start_at_once_then_double_to_a_minute() -> None:
    assert [dvic_node.restart_delay(step, False) for step in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert dvic_node.restart_delay(0, True) == 60


@pytest.mark.parametrize(("name", "why"), [
    ("/abs", "absolute path"), ("a/../../b", "'..' component"), ("../x", "'..' component"),
    ("x" * 300, "longer than 255 bytes"), ("a\x00b", "NUL"),
])
def test_member_paths_that_could_leave_the_release_are_refused(name: str, why: str) -> None:
    with pytest.raises(dvic_node.BadArchive, match=why):
        dvic_node.member_path(name)


def test_member_paths_are_normalised() -> None:
    assert dvic_node.member_path("./a//b/./c") == "a/b/c"
    assert dvic_node.member_path("./") is None


MANIFEST = {"name": "robot-arm", "version": "1.4.0", "run": ["./run.sh"]}


@pytest.mark.parametrize(("change", "why"), [
    ({"run": []}, "run: expected a command line or a list"),
    ({"run": "  "}, "run: expected"),
    ({"restart": "sometimes"}, "restart: expected one of always, on-failure, never"),
    ({"workdir": "../up"}, "workdir: '../up' must stay inside the release"),
    ({"workdir": "/srv"}, "workdir: '/srv' must stay inside the release"),
    ({"env": {"BAD NAME": "x"}}, "env: expected a table"),
    ({"env": {"A": 1}}, "env: expected a table"),
    ({"start_timeout_s": 0}, "start_timeout_s: expected a number of seconds from 1 to 3600"),
    ({"heartbeat_s": True}, "heartbeat_s: expected a number"),
    ({"keep": ["../data"]}, "keep: '../data' must stay inside the release"),
    ({"user": "a b"}, "user: expected a user name"),
])
def test_manifest_errors_name_the_key(change: dict, why: str) -> None:
    with pytest.raises(dvic_node.InstallError, match="manifest: " + why.replace("(", r"\(").replace(")", r"\)")):
        dvic_node.DemoSpec(dict(MANIFEST, **change))


def test_a_manifest_with_defaults() -> None:
    spec = dvic_node.DemoSpec(dict(MANIFEST, run="python3 app.py --fast", keep=["data/", "scores.json"]))
    assert spec.argv == ["/bin/sh", "-c", "python3 app.py --fast"]
    assert (spec.restart, spec.start_timeout_s, spec.heartbeat_s, spec.stop_grace_s, spec.workdir) == \
        ("always", 30.0, None, 10.0, "")
    assert spec.keep == [("data", True), ("scores.json", False)]


ENTRY = {"name": "robot-arm", "version": "1.4.0", "sha256": "a" * 64, "size": 1234,
         "url": "/api/v1/node/releases/" + "a" * 64, "manifest": MANIFEST, "rollout": "dep-1"}


@pytest.mark.parametrize(("change", "why"), [
    ({"name": "../etc"}, "name: invalid value"), ({"version": "1.x"}, "version: invalid value"),
    ({"sha256": "A" * 64}, "sha256: invalid value"), ({"size": 0}, "size: expected a number of bytes"),
    ({"url": ""}, "url: expected"), ({"max_members": 0}, "max_members: expected a positive integer"),
    ({"manifest": dict(MANIFEST, version="1.5.0")}, "manifest: its name and version"),
])
def test_desired_entries_are_checked(change: dict, why: str) -> None:
    with pytest.raises(dvic_node.InstallError, match=why):
        dvic_node.parse_desired(dict(ENTRY, **change))


def test_a_release_url_must_be_on_the_server() -> None:
    bundle = {"ws_url": "wss://central.example:8443/api/v1/node/ws"}
    assert dvic_node.release_url(bundle, "/api/v1/node/releases/x") == \
        "https://central.example:8443/api/v1/node/releases/x"
    with pytest.raises(dvic_node.InstallError, match="is not on the server"):
        dvic_node.release_url(bundle, "https://elsewhere.example/x")
