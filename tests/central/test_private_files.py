"""Secret files (bundles, keys, tokens) are written 0600 and never through a file someone planted."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from central.pki import write_private
from tests.central.test_cli import run_cli
from tests.support.server import CentralServer


def test_node_add_out_does_not_follow_a_symlink_planted_at_the_old_temp_name(
    central_server: CentralServer, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"  # any world-writable directory, like /tmp
    shared.mkdir()
    shared.chmod(0o1777)
    loot = shared / "loot"
    loot.touch(mode=0o666)
    (shared / "bundle.json.tmp").symlink_to(loot)  # the name the writer used to open, following links
    out = shared / "bundle.json"
    result = run_cli("--data-dir", str(central_server.data_dir), "node", "add", "victim", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert loot.read_bytes() == b""  # the key did not land in the planted file
    assert not out.is_symlink() and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in json.loads(out.read_text())["key_pem"]
    assert sorted(p.name for p in shared.iterdir()) == ["bundle.json", "bundle.json.tmp", "loot"]


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    target = tmp_path / "secret.key"
    target.symlink_to(elsewhere)
    write_private(target, b"secret")
    assert not target.is_symlink() and target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert elsewhere.read_bytes() == b"untouched"


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "in-the-way"
    target.mkdir()
    (target / "keep").touch()  # a non-empty directory: the final rename fails
    with pytest.raises(OSError):
        write_private(target, b"secret")
    assert sorted(os.listdir(tmp_path)) == ["in-the-way"]
