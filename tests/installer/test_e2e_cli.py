"""`dvic add-node` end to end: the CLI, a real sshd, the real dvic-central and the real node daemon.

Also the password sentinel: after adding and removing a node, the password appears in no file,
log, database, process command line or environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.wait import wait_for

from .conftest import PASSWORD, USER, Central, daemon_pid, stop_daemon
from .sshd import Sshd

REPO = Path(__file__).resolve().parents[2]
_MAX_SCAN = 64 * 1024 * 1024


def _files_containing(secret: bytes, roots: list[Path]) -> list[str]:
    hits = []
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > _MAX_SCAN:
                        continue
                    with open(path, "rb") as fh:
                        if secret in fh.read():
                            hits.append(path)
                except OSError:
                    continue  # vanished or unreadable while walking: another test's file
    return hits


def _processes_containing(secret: bytes) -> list[str]:
    hits = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                if secret in (entry / part).read_bytes():
                    hits.append(f"{entry.name}/{part}")
            except OSError:
                continue
    return hits


def dvic_env(central: Central, unit_template: Path, tmp_path: Path) -> dict[str, str]:
    """`dvic`'s environment for the session's server (the admin's token: removing a node that
    connected is an admin's call), its own config dir, and the unit template."""
    return {"DVIC_SERVER": central.url, "DVIC_TOKEN": central.server.admin_token, "DVIC_CA": str(central.server.ca_path),
            "DVIC_NODE_UNIT_TEMPLATE": str(unit_template), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def _dvic(args: list[str], env_extra: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    # Through the real `dvic` entry point (tui/cli.py registers the installer's subcommands).
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("daemon", [
    "real",
    pytest.param("real-py3.8", marks=pytest.mark.skipif(not PY38.exists(), reason="no Python 3.8 here")),
])
def test_add_node_cli_real_server_then_no_trace_of_the_password(
    daemon: str, central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    prefix = tmp_path / "target-root"
    prefix.mkdir()
    env = dvic_env(central, unit_template, tmp_path)
    name = central.name
    ssh = ["--user", USER, "--port", str(target_sshd.port), "--password-stdin",
           "--expect-host-key", target_sshd.fingerprint, "--no-systemd", "--prefix", str(prefix)]
    python = ["--python", str(PY38)] if daemon == "real-py3.8" else []
    try:
        added = _dvic(["add-node", "127.0.0.1", "--name", name, "--group", "lab", *python, *ssh], env,
                      PASSWORD + "\n")
        print(added.stdout, added.stderr)  # the step timings, visible with pytest -s
        assert added.returncode == 0, added.stderr
        for step in ("connect", "check", "enroll", "render", "install", "online"):
            assert f"  {step}" in added.stdout
        assert "is online" in added.stdout
        node = central.node()
        assert node["state"] == "online" and node["group"] == "lab"
        assert (tmp_path / "config/dvic/known_hosts").exists()
        pid = daemon_pid(prefix)
        assert pid is not None

        # Again: repaired in place, same identity.
        if python:
            assert "Python 3.8.18" in added.stdout
        again = _dvic(["add-node", "127.0.0.1", *python, *ssh], env, PASSWORD + "\n")
        assert again.returncode == 0, again.stderr
        assert "same identity" in again.stdout
        assert central.node()["id"] == node["id"]
        assert len(central.nodes_named()) == 1

        removed = _dvic(["remove-node", name, "--uninstall", "--host", "127.0.0.1", *ssh], env, PASSWORD + "\n")
        assert removed.returncode == 0, removed.stderr
        assert central.node(node["id"])["revoked"] is True
        wait_for(lambda: daemon_pid(prefix) is None, timeout=10, what="the daemon to stop")
    finally:
        stop_daemon(prefix)

    if daemon != "real":
        return  # one scan is enough: it reads every file of /tmp
    secret = PASSWORD.encode()
    outputs = added.stdout + added.stderr + again.stdout + again.stderr + removed.stdout + removed.stderr
    assert PASSWORD not in outputs
    roots = [tmp_path_factory.getbasetemp(), Path("/home") / USER, Path("/tmp"), Path("/var/log"), REPO / ".dvic"]
    assert _files_containing(secret, roots) == []
    assert _processes_containing(secret) == []


def test_retry_after_a_failed_add_gets_the_same_name_again(
    central: Central, target_sshd: Sshd, unit_template: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "target-root"
    prefix.mkdir()
    dying = tmp_path / "dying.py"
    dying.write_text("raise SystemExit('no luck')\n")
    env = {**dvic_env(central, unit_template, tmp_path), "DVIC_NODE_DAEMON": str(dying)}
    args = ["add-node", "127.0.0.1", "--name", central.name, "--user", USER, "--port", str(target_sshd.port),
            "--password-stdin", "--expect-host-key", target_sshd.fingerprint, "--no-systemd", "--prefix",
            str(prefix)]
    first = _dvic(args, env, PASSWORD + "\n")
    assert first.returncode == 1 and "no luck" in first.stderr
    assert central.node()["revoked"] is True  # the unused enrollment is revoked
    first_id = central.node()["id"]
    second = _dvic(args, env, PASSWORD + "\n")
    # The revoked enrollment gave its name up: the retry enrolls again and fails for the real reason.
    assert second.returncode == 1 and "no luck" in second.stderr and "revoked node" not in second.stderr
    assert central.node(first_id)["name"].startswith(f"{central.name}~revoked-")
