"""A non-editable install (a wheel in a fresh venv, away from the checkout) does the whole job.

`dvic-central up` from that venv runs the server (which publishes the daemon it ships as its
release) and this machine's daemon; `dvic add-node` from it installs the shipped daemon and unit on
a real sshd target, and the node comes online. Slow by nature: one wheel and one venv per session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import CentralServer
from tests.support.wait import wait_for

from .conftest import PASSWORD, USER, daemon_pid, stop_daemon
from .sshd import Sshd

REPO = Path(__file__).resolve().parents[2]
# What the distribution is built from (pyproject.toml's packages): a copy, so the build leaves no
# build/ or egg-info in the checkout and cannot pick up anything else lying in it.
DIST_SOURCES = ("pyproject.toml", "README.md", "central", "dvic_core", "tui", "installer", "node_script")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _outside_env() -> dict[str, str]:
    """The environment of a user of the installed package: nothing points back at the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("dist-src")
    for name in DIST_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheels")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
         cwd=src, timeout=300)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its dependencies (from pip's configured index and cache)."""
    root = tmp_path_factory.mktemp("wheel-venv") / "venv"
    _run([sys.executable, "-m", "venv", str(root)], timeout=120)
    _run([str(root / "bin/python"), "-m", "pip", "install", "--quiet", str(wheel)], timeout=600,
         env=_outside_env())
    return root


def test_the_wheel_ships_the_node_files_and_the_commands_run(wheel: Path, venv: Path, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"node_script/dvic_node.py", "node_script/dvic-node.service", "tui/console/app.tcss"} <= names
    env = _outside_env()
    where = _run([str(venv / "bin/python"), "-c",
                  "import node_script, installer.paths as p; print(node_script.DAEMON); print(p.unit_template())"],
                 cwd=tmp_path, env=env).stdout.split()
    site = str(venv / "lib")
    assert all(path.startswith(site) and Path(path).is_file() for path in where), where
    assert Path(where[0]).read_bytes() == (REPO / "node_script/dvic_node.py").read_bytes()
    for command in ("dvic", "dvic-central"):
        shown = _run([str(venv / "bin" / command), "--help"], cwd=tmp_path, env=env, timeout=60)
        assert "usage:" in shown.stdout


def _api(data_dir: Path, path: str) -> dict:
    status, body = CentralServer.running_in(data_dir).api("GET", path)
    assert status == 200, body
    return body


def _node_online(data_dir: Path, name: str) -> dict | None:
    nodes = [n for n in _api(data_dir, "/api/v1/nodes")["nodes"] if n["name"] == name]
    return nodes[0] if nodes and nodes[0]["state"] == "online" else None


@pytest.fixture
def stack(venv: Path, tmp_path: Path) -> Iterator[Path]:
    """`dvic-central up --no-console` from the venv, with a relative data dir, run outside the checkout."""
    proc = subprocess.Popen(
        [str(venv / "bin/dvic-central"), "--data-dir", "dvic-data", "up", "--listen", "127.0.0.1:0", "--no-console"],
        cwd=tmp_path, env=_outside_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    data_dir = tmp_path / "dvic-data"
    try:
        wait_for(lambda: proc.poll() is not None or (data_dir / "local-node.json").exists(), timeout=60,
                 what="the server up and this machine enrolled")
        assert proc.poll() is None, proc.communicate()[0]
        yield data_dir
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: `up` stops the server and daemon it started
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out)


def test_a_wheel_install_runs_the_stack_and_adds_a_node(
    venv: Path, stack: Path, target_sshd: Sshd, tmp_path: Path
) -> None:
    data_dir = stack
    local = json.loads((data_dir / "local-node.json").read_text())["name"]
    wait_for(lambda: _node_online(data_dir, local), timeout=60, what="this machine's daemon (shipped) online")
    shipped = (REPO / "node_script/dvic_node.py").read_text()
    release = _api(data_dir, "/api/v1/release")
    assert release["version"] and f'VERSION = "{release["version"]}"' in shipped  # published from the wheel

    prefix = tmp_path / "target-root"
    prefix.mkdir()
    info = json.loads((data_dir / "listen.json").read_text())
    env = {**_outside_env(), "DVIC_SERVER": info["url"], "DVIC_CA": str(data_dir / "ca.pem"),
           "DVIC_TOKEN": (data_dir / "admin.token").read_text().strip(),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    for override in ("DVIC_NODE_DAEMON", "DVIC_NODE_UNIT_TEMPLATE"):  # the shipped files, not a test's
        env.pop(override, None)
    try:
        added = subprocess.run(
            [str(venv / "bin/dvic"), "add-node", "127.0.0.1", "--name", "from-wheel", "--user", USER,
             "--port", str(target_sshd.port), "--password-stdin", "--expect-host-key", target_sshd.fingerprint,
             "--no-systemd", "--prefix", str(prefix)],
            input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
        )
        assert added.returncode == 0, added.stdout + added.stderr
        assert "is online" in added.stdout
        assert _node_online(data_dir, "from-wheel")
        assert (prefix / "opt/dvic-node/dvic_node.py").read_text() == shipped
        assert daemon_pid(prefix) is not None
    finally:
        stop_daemon(prefix)
