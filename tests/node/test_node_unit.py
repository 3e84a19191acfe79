"""The systemd unit template: every placeholder rendered, and systemd accepts the result."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import NODE_SCRIPT

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
    assert "ExecStart=/usr/bin/python3 /opt/dvic-node/dvic_node.py --config /etc/dvic-node/bundle.json " \
           "--state-dir /var/lib/dvic-node" in text
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
