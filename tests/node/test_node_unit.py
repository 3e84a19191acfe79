"""The systemd unit template: every placeholder rendered, and systemd accepts the result."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import dvic_node
import pytest
from daemon_support import interpreters

from tests.support.daemon import NODE_SCRIPT

TEMPLATE = NODE_SCRIPT.parent / "dvic-node.service"
PLACEHOLDERS = {"@PYTHON@", "@DAEMON@", "@BUNDLE@", "@STATE_DIR@"}


def render(values: dict[str, str]) -> str:
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def test_template_uses_exactly_the_agreed_placeholders() -> None:
    assert set(re.findall(r"@[A-Z_]+@", TEMPLATE.read_text())) == PLACEHOLDERS
    text = render({"@PYTHON@": "/usr/bin/python3", "@DAEMON@": "/opt/dvic-node/dvic_node.py",
                   "@BUNDLE@": "/etc/dvic-node/bundle.json", "@STATE_DIR@": "/var/lib/dvic-node"})
    # started through the daemon's own launcher (from its bytecode), the daemon path its first argument
    assert f'ExecStart=/usr/bin/python3 -c "{dvic_node.LAUNCHER}" /opt/dvic-node/dvic_node.py ' \
           "--config /etc/dvic-node/bundle.json --state-dir /var/lib/dvic-node" in text
    assert "Restart=always" in text and "PrivateTmp=no" in text


def test_systemd_accepts_the_rendered_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed")
    daemon = tmp_path / "dvic_node.py"
    shutil.copy(NODE_SCRIPT, daemon)
    unit = tmp_path / "dvic-node.service"
    unit.write_text(render({"@PYTHON@": sys.executable, "@DAEMON@": str(daemon),
                            "@BUNDLE@": str(tmp_path / "bundle.json"), "@STATE_DIR@": str(tmp_path / "state")}))
    out = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines()
                if "dvic-node.service" in ln and "Failed to" not in ln and "dbus" not in ln.lower()]
    assert not problems, out.stdout + out.stderr


@pytest.mark.parametrize("python", interpreters())
def test_the_launcher_loads_the_compiled_bytecode_and_ignores_a_stale_one(python: str, tmp_path: Path) -> None:
    daemon = tmp_path / "dvic_node.py"
    shutil.copy(NODE_SCRIPT, daemon)
    compile_code = ("import sys; sys.path.insert(0, sys.argv[2]); import dvic_node; "
                    "sys.exit(dvic_node.compile_bytecode(sys.argv[1]) or 0)")
    # as the installer and a self-update do, with the daemon's own interpreter
    done = subprocess.run([python, "-c", compile_code, str(daemon), str(NODE_SCRIPT.parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr

    def launch() -> subprocess.CompletedProcess[str]:
        # -v: the import system says where each module's code came from
        return subprocess.run([python, "-v", "-c", dvic_node.LAUNCHER, str(daemon), "--help"], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    out = launch()
    assert out.returncode == 0 and "--config" in out.stdout, out.stderr[-2000:]
    pyc = re.escape(str(tmp_path / "__pycache__" / "dvic_node."))
    assert re.search(rf"code object from '?{pyc}", out.stderr), out.stderr[-2000:]

    # the file changes (an update, a rollback) but its .pyc is not rewritten: the source runs, not the old code
    daemon.write_text(daemon.read_text().replace("DVIC node daemon (runs", "DVIC node daemon, changed (runs"))
    out = launch()
    assert out.returncode == 0 and "changed (runs" in out.stdout, out.stderr[-2000:]
