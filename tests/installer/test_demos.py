"""Demo actions and the shell user: option parsing, the generated start/stop commands run for real, the unit line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from installer import ServerSpec, parse_add_node_body
from installer.cli import main as cli_main
from installer.demos import (
    Demo,
    DemoError,
    check_demos,
    check_shell_user,
    demos_json,
    parse_demo,
    parse_demo_cmd,
)
from installer.paths import DEFAULT_UNIT_TEMPLATE, NodeLayout
from installer.render import RenderError, render_unit
from tests.support.procs import group_alive, live_members
from tests.support.wait import wait_for

from .conftest import MINIMAL_UNIT

SERVER = ServerSpec("https://127.0.0.1:1", "t")


def test_parse_demo_options() -> None:
    assert parse_demo("arm=robot-arm.service") == Demo("arm", unit="robot-arm.service")
    assert parse_demo("arm=robot-arm") == Demo("arm", unit="robot-arm.service")
    assert parse_demo("cam=getty@tty1.service").unit == "getty@tty1.service"
    assert parse_demo_cmd("kiosk=/opt/kiosk/run --full  ") == Demo("kiosk", command="/opt/kiosk/run --full")
    # '=' inside the command belongs to the command
    assert parse_demo_cmd("k=env A=1 run").command == "env A=1 run"


@pytest.mark.parametrize(("parse", "value", "words"), [
    (parse_demo, "arm", "NAME=UNIT"),
    (parse_demo, "=x.service", "NAME=UNIT"),
    (parse_demo, "arm=", "NAME=UNIT"),
    (parse_demo, "arm=bad unit.service", "not a systemd unit"),
    (parse_demo, "arm=x.service; reboot", "not a systemd unit"),
    (parse_demo, "../etc=x.service", "must be 1-64"),
    (parse_demo, "a b=x.service", "must be 1-64"),
    (parse_demo_cmd, "k", "NAME=COMMAND"),
    (parse_demo_cmd, "k=  ", "NAME=COMMAND"),
    (parse_demo_cmd, "k=run\nreboot", "one line"),
    (parse_demo_cmd, "k=" + "x" * 4001, "longer than 4000"),
])
def test_bad_demo_options_say_what_is_wrong(parse: object, value: str, words: str) -> None:
    with pytest.raises(DemoError, match=words):
        parse(value)  # type: ignore[operator]


def test_demo_lists_and_shell_users() -> None:
    with pytest.raises(DemoError, match="given twice"):
        check_demos([Demo("a", unit="a.service"), Demo("a", command="run")])
    with pytest.raises(DemoError, match="either a unit or a command"):
        check_demos([Demo("a", unit="a.service", command="run")])
    assert check_shell_user("") == "" and check_shell_user("pi") == "pi" and check_shell_user("dvic-it") == "dvic-it"
    for bad in ("Root", "a b", "x;reboot", "-x", "a" * 40):
        with pytest.raises(DemoError, match="--shell-user"):
            check_shell_user(bad)
    assert demos_json([Demo("arm", unit="arm.service")], "/var/lib/dvic-node") == {"arm": {"unit": "arm.service"}}
    entry = demos_json([Demo("k", command="run")], "/var/lib/dvic-node/")["k"]
    assert set(entry) == {"start", "stop"}  # restart: the daemon runs stop, then start
    assert "/var/lib/dvic-node/demos/k.pid" in entry["start"] and "/var/lib/dvic-node/demos/k.pid" in entry["stop"]


def test_shell_user_goes_on_the_unit_exec_line() -> None:
    layout = NodeLayout()
    template = DEFAULT_UNIT_TEMPLATE.read_text() if DEFAULT_UNIT_TEMPLATE.exists() else MINIMAL_UNIT
    unit = render_unit(template, "/usr/bin/python3", layout, "pi")
    exec_lines = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_lines) == 1
    assert exec_lines[0].startswith("ExecStart=/usr/bin/python3 ")  # the daemon's launcher may come first
    assert exec_lines[0].endswith(f" {layout.daemon} --config {layout.bundle} --state-dir {layout.state_dir} "
                                  "--shell-user pi")
    assert "--shell-user" not in render_unit(template, "/usr/bin/python3", layout)
    with pytest.raises(RenderError, match="exactly one ExecStart"):
        render_unit(template + "\nExecStart=/bin/true\n", "/usr/bin/python3", layout, "pi")
    with pytest.raises(DemoError):
        render_unit(template, "/usr/bin/python3", layout, "pi; reboot")


def test_add_node_body_demos() -> None:
    base = {"host": "10.0.0.5", "user": "root", "password": "pw"}
    req = parse_add_node_body({**base, "shell_user": "pi", "demos": [
        {"name": "arm", "unit": "arm.service"}, {"name": "kiosk", "command": "/opt/kiosk/run"}]}, SERVER)
    assert req.shell_user == "pi"
    assert req.demos == [Demo("arm", unit="arm.service"), Demo("kiosk", command="/opt/kiosk/run")]
    assert parse_add_node_body(base, SERVER).demos is None  # absent: the node keeps its demos.json
    assert parse_add_node_body({**base, "demos": []}, SERVER).demos == []  # empty list: clears it
    for demos, words in ((["arm"], r"demos\[0\]"), ({"arm": "x"}, "a list"),
                         ([{"name": "a", "unit": "a.service", "x": "1"}], r"demos\[0\]"),
                         ([{"name": "a", "unit": "a b"}], "not a systemd unit"),
                         ([{"name": "a", "unit": "a.service"}, {"name": "a", "command": "x"}], "twice")):
        with pytest.raises(ValueError, match=words):
            parse_add_node_body({**base, "demos": demos}, SERVER)
    with pytest.raises(ValueError, match="shell_user"):
        parse_add_node_body({**base, "shell_user": "x y"}, SERVER)


def test_cli_refuses_bad_demo_options_before_asking_anything(capsys: pytest.CaptureFixture[str]) -> None:
    # Exit 2 and the reason, before the password is read (stdin is not even consulted).
    code = cli_main(["add-node", "10.0.0.5", "--user", "root", "--password-stdin", "--server", "https://x",
                     "--token", "t", "--demo", "arm=not a unit"])
    assert code == 2 and "not a systemd unit" in capsys.readouterr().err
    code = cli_main(["add-node", "10.0.0.5", "--user", "root", "--password-stdin", "--server", "https://x",
                     "--token", "t", "--shell-user", "Bad User"])
    assert code == 2 and "--shell-user" in capsys.readouterr().err


# The generated commands, run the way the daemon's ActionRunner runs them: /bin/sh -c in a new
# session, output piped and read to the end (a start that kept the pipe open would hang here).
def _act(command: str) -> tuple[int, str]:
    proc = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True, timeout=15, text=True)
    return proc.returncode, proc.stdout.strip()


def test_command_demo_starts_stops_and_restarts_as_a_group(tmp_path: Path) -> None:
    state = tmp_path / "state"
    marker = tmp_path / "marker.txt"
    # Both kinds of quote in the command: it must reach the demo's shell unchanged.
    command = f"echo \"quoted 'ok'\" >{marker}; echo to-out; sleep 300 & exec sleep 301"
    entry = json.loads(json.dumps(demos_json([Demo("kiosk", command=command)], str(state))))["kiosk"]
    pidfile = state / "demos/kiosk.pid"
    pgid = 0
    try:
        code, out = _act(entry["start"])
        assert code == 0 and "kiosk started" in out, out
        pgid = int(pidfile.read_text().split()[0])
        wait_for(lambda: len(live_members(pgid)) == 2, 10, "both processes of the demo")
        wait_for(lambda: marker.exists() and "to-out" in (state / "demos/kiosk.out").read_text(), 10,
                 "the demo's output")
        assert marker.read_text() == "quoted 'ok'\n"

        code, out = _act(entry["start"])  # a second start is a no-op that says so
        assert code == 0 and f"kiosk is already running (process group {pgid})" in out
        assert int(pidfile.read_text().split()[0]) == pgid

        code, out = _act(entry["stop"])  # the whole group stops, not just its leader
        assert (code, out) == (0, "kiosk stopped")
        assert not group_alive(pgid) and not pidfile.exists()
        code, out = _act(entry["stop"])
        assert (code, out) == (0, "kiosk is not running")

        # restart as the daemon does it without a restart command: stop, then start
        for verb in ("stop", "start"):
            code, out = _act(entry[verb])
            assert code == 0, out
        pgid = int(pidfile.read_text().split()[0])
        assert group_alive(pgid)
    finally:
        if pgid and group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_a_demo_that_ends_at_once_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "state"
    entry = demos_json([Demo("bad", command="sleep 0.1; echo no such thing >&2; exit 3"),
                        Demo("oneshot", command="true")], str(state))
    code, out = _act(entry["bad"]["start"])
    assert code == 1 and out == "bad exited at once with status 3: no such thing"
    assert not (state / "demos/bad.pid").exists()
    code, out = _act(entry["oneshot"]["start"])
    assert code == 0 and out.startswith("oneshot exited at once with status 0")


def test_a_stale_pid_file_never_signals_another_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    entry = demos_json([Demo("kiosk", command="exec sleep 300")], str(state))["kiosk"]
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        # A pid file from an earlier boot naming a group that now belongs to someone else.
        (state / "demos").mkdir(parents=True)
        (state / "demos/kiosk.pid").write_text(f"{bystander.pid} 00000000-0000-0000-0000-000000000000\n")
        code, out = _act(entry["stop"])
        assert (code, out) == (0, "kiosk is not running")
        assert bystander.poll() is None
        (state / "demos/kiosk.pid").write_text("garbage\n")
        assert _act(entry["stop"]) == (0, "kiosk is not running")
    finally:
        bystander.kill()
        bystander.wait(timeout=5)
