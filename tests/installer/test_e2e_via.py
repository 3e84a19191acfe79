"""`dvic add-node --via NODE` end to end: the real server relays the SSH stream through a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import online_daemon

from .conftest import PASSWORD, USER, Central, daemon_pid, stop_daemon
from .sshd import Sshd
from .test_e2e_cli import dvic_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def relay(central: Central, tmp_path: Path) -> Iterator[str]:
    """A node already in the fleet: the real daemon, running here. (The session's server lets
    tunnels reach the target's sshd: conftest.session_central.)"""
    name = f"{central.name}-relay"
    with online_daemon(central.server, tmp_path / "relay", name=name):
        yield name


def _add_via(relay: str, name: str, port: int, env: dict[str, str], prefix: Path,
             fingerprint: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "add-node", "127.0.0.1", "--via", relay, "--name", name, "--user", USER,
         "--port", str(port), "--password-stdin", "--expect-host-key", fingerprint, "--no-systemd",
         "--prefix", str(prefix)],
        input=PASSWORD + "\n", capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), **env},
        cwd=REPO, timeout=90)


@pytest.mark.timeout(120)
def test_add_node_via_a_fleet_node(
    central: Central, relay: str, target_sshd: Sshd, unit_template: Path, tmp_path: Path, prefix: Path
) -> None:
    try:
        done = _add_via(relay, central.name, target_sshd.port, dvic_env(central, unit_template, tmp_path), prefix,
                        target_sshd.fingerprint)
        print(done.stdout, done.stderr)
        assert done.returncode == 0, done.stderr
        assert f"through node {relay}" in done.stdout
        assert central.node()["state"] == "online"
        assert daemon_pid(prefix) is not None
    finally:
        stop_daemon(prefix)


def test_a_port_the_server_does_not_allow_is_refused_with_the_servers_reason(
    central: Central, relay: str, target_sshd: Sshd, closed_port: int, unit_template: Path, tmp_path: Path
) -> None:
    # The server allows the target's port and the closed one only.
    not_allowed = next(p for p in range(target_sshd.port + 1, 65536) if p != closed_port)
    done = _add_via(relay, central.name, not_allowed, dvic_env(central, unit_template, tmp_path),
                    tmp_path / "target-root", target_sshd.fingerprint)
    shown = done.stdout + done.stderr
    print(shown)
    assert done.returncode != 0, shown
    assert "port_not_allowed: tunnels may reach ports" in shown, shown
    assert f"--tunnel-port {not_allowed}" in shown and "Invalid response status" not in shown, shown
