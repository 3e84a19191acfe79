"""`dvic add-node --demo-cmd --shell-user` end to end: the real server and daemon run the generated demo actions."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import CentralServer
from tests.support.wait import wait_for

from .conftest import PASSWORD, USER, Central, daemon_pid, stop_daemon
from .sshd import Sshd
from .test_e2e_cli import _dvic, dvic_env


def _action(server: CentralServer, node: str, kind: str, demo: str) -> dict[str, Any]:
    """Ask for a tracked action and wait until it ends (done or failed)."""
    status, action = server.api("POST", f"/api/v1/nodes/{node}/actions", {"action": kind, "demo": demo})
    assert status == 201, action

    def final() -> dict[str, Any] | None:
        _, body = server.api("GET", f"/api/v1/actions?node={node}")
        found = next(a for a in body["actions"] if a["id"] == action["id"])
        return found if found["state"] in ("done", "failed") else None

    return wait_for(final, timeout=20, what=f"{kind} {demo} to end")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group exists (not yet reaped ones too)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_demo_cmd_start_stop_through_the_real_daemon(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path, prefix: Path
) -> None:
    marker = tmp_path / "kiosk-ran"
    node = central.name
    args = ["add-node", "127.0.0.1", "--name", node, "--user", USER, "--port", str(target_sshd.port),
            "--password-stdin", "--expect-host-key", target_sshd.fingerprint, "--no-systemd",
            "--prefix", str(prefix), "--shell-user", "nobody",
            "--demo", "arm=robot-arm", "--demo-cmd", f"kiosk=echo \"it's on\" >{marker}; exec sleep 300"]
    pidfile = prefix / "var/lib/dvic-node/demos/kiosk.pid"
    try:
        added = _dvic(args, dvic_env(central, unit_template, tmp_path), PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        assert "demos.json written (2 demos)" in added.stdout
        pid = daemon_pid(prefix)
        assert pid is not None
        assert b"--shell-user\0nobody" in Path(f"/proc/{pid}/cmdline").read_bytes()

        started = _action(central.server, node, "start_demo", "kiosk")
        assert started["state"] == "done", started
        pgid = int(pidfile.read_text().split()[0])
        wait_for(marker.exists, timeout=10, what="the demo to run")
        assert marker.read_text() == "it's on\n" and _group_alive(pgid)

        restarted = _action(central.server, node, "restart_demo", "kiosk")  # stop, then start
        assert restarted["state"] == "done", restarted
        new_pgid = int(pidfile.read_text().split()[0])
        assert new_pgid != pgid and _group_alive(new_pgid)
        wait_for(lambda: not _group_alive(pgid), timeout=10, what="the old demo to be gone")

        stopped = _action(central.server, node, "stop_demo", "kiosk")
        assert stopped["state"] == "done", stopped
        assert not _group_alive(new_pgid) and not pidfile.exists()
    finally:
        if pidfile.exists() and _group_alive(leftover := int(pidfile.read_text().split()[0])):
            os.killpg(leftover, signal.SIGKILL)
        stop_daemon(prefix)
