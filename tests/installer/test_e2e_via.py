"""`dvic add-node --via NODE` end to end: the real server relays the SSH stream through a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from installer.paths import DEFAULT_DAEMON_SOURCE
from tests.support.server import CentralServer
from tests.support.wait import wait_for

from .conftest import PASSWORD, USER, daemon_pid, stop_daemon
from .sshd import Sshd

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture
def tunnel_server(tmp_path: Path, target_sshd: Sshd) -> Iterator[CentralServer]:
    server = CentralServer(tmp_path / "central", extra_args=("--tunnel-port", str(target_sshd.port))).start()
    yield server
    server.stop()


@pytest.fixture
def relay(tunnel_server: CentralServer, tmp_path: Path) -> Iterator[str]:
    """A node already in the fleet: the real daemon, running here."""
    bundle = tunnel_server.write_bundle(tunnel_server.enroll("relay"), tmp_path / "relay.json")
    proc = subprocess.Popen(
        [sys.executable, str(DEFAULT_DAEMON_SOURCE), "--config", str(bundle), "--state-dir",
         str(tmp_path / "relay-state"), "--log-dir", str(tmp_path / "relay-logs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: tunnel_server.node("relay")["state"] == "online", timeout=20, what="the relay online")
        yield "relay"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.timeout(120)
def test_add_node_via_a_fleet_node(
    tunnel_server: CentralServer, relay: str, target_sshd: Sshd, unit_template: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "target-root"
    prefix.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVIC_SERVER": tunnel_server.url,
           "DVIC_TOKEN": tunnel_server.admin_token, "DVIC_CA": str(tunnel_server.ca_path),
           "DVIC_NODE_UNIT_TEMPLATE": str(unit_template), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tui.cli", "add-node", "127.0.0.1", "--via", relay, "--name", "behind-relay",
             "--user", USER, "--port", str(target_sshd.port), "--password-stdin", "--expect-host-key",
             target_sshd.fingerprint, "--no-systemd", "--prefix", str(prefix)],
            input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=90)
        print(done.stdout, done.stderr)
        assert done.returncode == 0, done.stderr
        assert "through node relay" in done.stdout
        assert tunnel_server.node("behind-relay")["state"] == "online"
        assert daemon_pid(prefix) is not None
    finally:
        stop_daemon(prefix)


def test_a_port_the_server_does_not_allow_is_refused_with_the_servers_reason(
    tunnel_server: CentralServer, relay: str, target_sshd: Sshd, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVIC_SERVER": tunnel_server.url,
           "DVIC_TOKEN": tunnel_server.admin_token, "DVIC_CA": str(tunnel_server.ca_path),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    not_allowed = target_sshd.port + 1  # the server allows the target's port only
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "add-node", "127.0.0.1", "--via", relay, "--name", "never",
         "--user", USER, "--port", str(not_allowed), "--password-stdin", "--expect-host-key",
         target_sshd.fingerprint, "--no-systemd", "--prefix", str(tmp_path / "target-root")],
        input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=90)
    shown = done.stdout + done.stderr
    print(shown)
    assert done.returncode != 0, shown
    assert "port_not_allowed: tunnels may reach ports" in shown, shown
    assert f"--tunnel-port {not_allowed}" in shown and "Invalid response status" not in shown, shown
