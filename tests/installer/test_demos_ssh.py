"""add_node with demos and a shell user, over real SSH into a prefix (no systemd): files, flags, re-runs."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from installer import AddNodeRequest, InstallerError, add_node
from installer.demos import Demo, demos_json
from installer.paths import NodeLayout

from .conftest import Central, daemon_pid, tree

SHELL_USER = "nobody"  # present on every Debian system
DEMOS = [Demo("arm", unit="robot-arm.service"), Demo("kiosk", command="/opt/kiosk/run --full")]


def _daemon_argv(prefix: Path) -> list[str]:
    pid = daemon_pid(prefix)
    assert pid is not None, "the daemon is not running"
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def test_demos_and_shell_user_land_on_the_node(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path
) -> None:
    layout = NodeLayout(str(prefix))
    result = await add_node(make_request(demos=DEMOS, shell_user=SHELL_USER))
    assert "demos.json written (2 demos)" in result.steps[4].message

    demos = prefix / "var/lib/dvic-node/demos.json"
    assert stat.S_IMODE(demos.stat().st_mode) == 0o644
    assert json.loads(demos.read_text()) == demos_json(DEMOS, layout.state_dir)
    assert json.loads(demos.read_text())["arm"] == {"unit": "robot-arm.service"}

    unit = (prefix / "etc/systemd/system/dvic-node.service").read_text()
    (exec_line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_line.endswith(f"--state-dir {layout.state_dir} --shell-user {SHELL_USER}")
    # Without systemd the script starts the daemon with the same command line as the unit.
    argv = _daemon_argv(prefix)
    assert argv[-2:] == ["--shell-user", SHELL_USER] and layout.daemon in argv


async def test_rerun_keeps_demos_json_unless_demos_are_given(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path, tmp_path: Path
) -> None:
    await add_node(make_request(demos=DEMOS))
    demos = prefix / "var/lib/dvic-node/demos.json"
    edited = '{"by-hand": {"unit": "by-hand.service"}}\n'
    demos.write_text(edited)  # an operator's own edit

    second = await add_node(make_request())
    assert second.reused_identity and "demos.json kept" in second.steps[4].message
    assert demos.read_text() == edited
    assert "--shell-user" not in _daemon_argv(prefix)

    # A failed upgrade that brought new demos puts the operator's file back.
    dying = tmp_path / "dying.py"
    dying.write_text("raise SystemExit(2)\n")
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(daemon_source=dying, demos=[Demo("new", unit="new.service")]))
    assert err.value.code == "start_failed"
    assert demos.read_text() == edited and daemon_pid(prefix) is not None

    third = await add_node(make_request(demos=[Demo("new", unit="new.service")]))
    assert "demos.json written (1 demos)" in third.steps[4].message
    assert json.loads(demos.read_text()) == {"new": {"unit": "new.service"}}
    assert central.enrollments() == [201]


async def test_unknown_shell_user_fails_at_the_check_and_costs_nothing(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path
) -> None:
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(shell_user="dvic-no-such-user", demos=DEMOS))
    assert (err.value.step, err.value.code) == ("check", "no_shell_user")
    assert "dvic-no-such-user does not exist" in err.value.message and "adduser" in err.value.hint
    assert central.enrollments() == [] and tree(prefix) == []


async def test_bad_demo_in_a_request_is_refused_before_ssh(
    make_request: Callable[..., AddNodeRequest], central: Central, prefix: Path
) -> None:
    with pytest.raises(InstallerError) as err:
        await add_node(make_request(demos=[Demo("a", unit="a.service"), Demo("a", command="run")]))
    assert (err.value.step, err.value.code) == ("connect", "bad_request") and "twice" in err.value.message
    assert central.requests() == central.audit() == [] and tree(prefix) == []
