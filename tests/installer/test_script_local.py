"""The install script's own behaviour, run locally as root with sh (no SSH): checks, refusals, rollback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import dvic_node
import pytest

from installer.paths import DEFAULT_TARGET_PATH, NodeLayout
from installer.remote import parse_output
from installer.render import render_script, render_unit

from .conftest import MINIMAL_UNIT, stop_daemon, tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the install script runs as root")


# Only the files and the process matter here: a daemon that just stays up.
SLEEPER = "import time\nwhile True:\n    time.sleep(1)\n"


def _run(script: str, mode: str, tmp_path: Path) -> tuple[int, dict[str, str], tuple[str, str] | None]:
    path = tmp_path / f"install-{mode}.sh"
    path.write_text(script)
    stage_dir = tmp_path / "tmpdir"  # the script stages under $TMPDIR: keep ours apart from other runs
    stage_dir.mkdir(exist_ok=True)
    proc = subprocess.run(["sh", str(path), mode], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TMPDIR": str(stage_dir)})
    facts, error = parse_output(proc.stdout)
    return proc.returncode, facts, error


def _install(layout: NodeLayout, unit: str = MINIMAL_UNIT, **extra: object) -> str:
    values: dict[str, object] = dict(
        layout=layout, init="none", target_path=DEFAULT_TARGET_PATH,
        daemon_text=SLEEPER,
        unit_text=render_unit(unit, "/usr/bin/python3", layout),
        bundle={"format": "dvic-node-bundle/1", "node_id": "n-1", "name": "t", "ws_url": "wss://127.0.0.1:1/x",
                "keepalive_url": "https://127.0.0.1:1/api/v1/keepalive", "ca_pem": "x", "cert_pem": "x",
                "key_pem": "x", "token": "x"},
    )
    values.update(extra)
    return render_script("install", **values)  # type: ignore[arg-type]


def test_check_reports_facts_on_a_clean_machine(tmp_path: Path) -> None:
    layout = NodeLayout(str(tmp_path / "root"))
    rc, facts, error = _run(render_script("check", layout=layout, init="none", target_path=DEFAULT_TARGET_PATH),
                            "check", tmp_path)
    assert (rc, error) == (0, None)
    assert facts["installed"] == "no" and facts["service"] == "inactive" and facts["init"] == "none"
    assert facts["python"].startswith("/") and facts["python_version"].startswith("3.")
    assert not (tmp_path / "root").exists()  # check changes nothing


def test_systemd_mode_needs_a_running_systemd(tmp_path: Path) -> None:
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd is running here")
    script = render_script("check", layout=NodeLayout(), init="systemd", target_path=DEFAULT_TARGET_PATH)
    rc, _, error = _run(script, "check", tmp_path)
    assert rc != 0 and error is not None and error[0] == "no_systemd"


def test_a_unit_rejected_by_systemd_analyze_installs_nothing(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    root = tmp_path / "root"
    layout = NodeLayout(str(root))
    rc, facts, error = _run(_install(layout, MINIMAL_UNIT.replace("[Service]", "[Service]\nType=bogus")),
                            "install", tmp_path)
    assert rc != 0 and error is not None and error[0] == "bad_unit"
    assert "bogus" in error[1]
    assert not root.exists()

    rc, facts, error = _run(_install(layout), "install", tmp_path)
    try:
        assert (rc, error) == (0, None)
        assert facts["unit_verify"] == "ok" and facts["installed"] == "ok"
    finally:
        stop_daemon(root)


def test_uninstall_refuses_another_identity(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = NodeLayout(str(root))
    rc, _, error = _run(_install(layout), "install", tmp_path)
    stop_daemon(root)
    assert (rc, error) == (0, None)
    before = tree(root)
    script = render_script("uninstall", layout=layout, init="none", target_path=DEFAULT_TARGET_PATH,
                           expect_node_id="someone-else")
    rc, _, error = _run(script, "uninstall", tmp_path)
    assert rc != 0 and error is not None and error[0] == "wrong_node"
    assert tree(root) == before
    assert json.loads((root / "etc/dvic-node/bundle.json").read_text())["node_id"] == "n-1"

    script = render_script("uninstall", layout=layout, init="none", target_path=DEFAULT_TARGET_PATH,
                           expect_node_id="n-1")
    rc, facts, error = _run(script, "uninstall", tmp_path)
    assert (rc, error, facts.get("uninstalled")) == (0, None, "ok")
    assert not (root / "etc/dvic-node").exists() and not (root / "opt/dvic-node").exists()


def test_keeping_a_bundle_that_vanished_fails_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    script = _install(NodeLayout(str(root)), keep_bundle=True, expect_node_id="n-1", bundle=None)
    rc, _, error = _run(script, "install", tmp_path)
    assert rc != 0 and error is not None and error[0] == "bundle_changed"
    assert not root.exists()


def test_install_leaves_no_script_or_stage_behind(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rc, _, error = _run(_install(NodeLayout(str(root))), "install", tmp_path)
    stop_daemon(root)
    assert (rc, error) == (0, None)
    assert list((tmp_path / "tmpdir").iterdir()) == []  # the stage is gone
    modes = {p: oct(os.stat(root / p).st_mode & 0o777) for p in (
        "etc/dvic-node/bundle.json", "etc/dvic-node", "opt/dvic-node/dvic_node.py", "var/lib/dvic-node")}
    assert modes == {"etc/dvic-node/bundle.json": "0o600", "etc/dvic-node": "0o700",
                     "opt/dvic-node/dvic_node.py": "0o644", "var/lib/dvic-node": "0o700"}


PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


@pytest.mark.skipif(not PY38.exists(), reason="no Python 3.8 here")
def test_the_daemon_must_parse_with_the_targets_python(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = NodeLayout(str(root))
    script = render_script("check", layout=layout, init="none", python=str(PY38), target_path=DEFAULT_TARGET_PATH)
    rc, facts, error = _run(script, "check", tmp_path)
    assert (rc, error, facts["python_version"]) == (0, None, "3.8.18")

    newer_syntax = "match 1:\n    case 1:\n        pass\n"  # Python 3.10+
    script = _install(layout, python=str(PY38), daemon_text=newer_syntax,
                      unit_text=render_unit(MINIMAL_UNIT, str(PY38), layout))
    rc, _, error = _run(script, "install", tmp_path)
    assert rc != 0 and error is not None and error[0] == "bad_daemon" and "3.8.18" in error[1]
    assert not root.exists()


def _bytecode_hash(python: str, daemon: Path) -> tuple[int, bytes, bytes]:
    """(flags, stored source hash, hash of the file now) of the .pyc `python` loads for `daemon`."""
    code = ("import importlib.util as u, sys; p = sys.argv[1]; data = open(u.cache_from_source(p), 'rb').read(16); "
            "print(int.from_bytes(data[4:8], 'little'), data[8:16].hex(), u.source_hash(open(p, 'rb').read()).hex())")
    out = subprocess.run([python, "-c", code, str(daemon)], capture_output=True, text=True, timeout=60, check=True)
    flags, stored, now = out.stdout.split()
    return int(flags), bytes.fromhex(stored), bytes.fromhex(now)


def test_the_daemon_starts_from_the_bytecode_compiled_at_install_and_at_rollback(tmp_path: Path) -> None:
    root = tmp_path / "root"
    layout = NodeLayout(str(root))
    daemon = root / "opt/dvic-node/dvic_node.py"
    try:
        rc, facts, error = _run(_install(layout), "install", tmp_path)
        assert (rc, error, facts["bytecode"]) == (0, None, "compiled")
        flags, stored, now = _bytecode_hash(facts["python"], daemon)
        assert flags == 0b11 and stored == now  # checked-hash: a later change of the file is noticed
        pid = (root / "var/lib/dvic-node/dvic-node.pid").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[:4] == [facts["python"], "-c", dvic_node.LAUNCHER, str(daemon)]  # as the unit starts it

        # an upgrade whose daemon dies: the old file is back, and so is its bytecode
        rc, facts, error = _run(_install(layout, daemon_text="raise SystemExit(2)\n", keep_bundle=True,
                                         expect_node_id="n-1"), "install", tmp_path)
        assert rc != 0 and error is not None and error[0] == "start_failed"
        assert daemon.read_text() == SLEEPER
        assert _bytecode_hash(facts["python"], daemon)[1:] == (now, now)
    finally:
        stop_daemon(root)
