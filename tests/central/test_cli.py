"""`dvic-central` as an operator uses it: first start, enrolling with and without a running server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.server import REPO, CentralServer


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "central.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_first_start_creates_a_private_data_dir(central_server: CentralServer):
    data = central_server.data_dir
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ("admin.token", "ca.key", "server.key"):
        assert (data / name).stat().st_mode & 0o777 == 0o600, name
    assert (data / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    if not central_server.database:
        conn = sqlite3.connect(data / "dvic.sqlite3")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "admin.token" in central_server.log() and central_server.admin_token not in central_server.log()


def test_node_add_through_the_running_server_writes_a_private_bundle(central_server: CentralServer, tmp_path):
    out = tmp_path / "pi.json"
    result = run_cli("--data-dir", str(central_server.data_dir), "node", "add", "pi-cli", "--kind", "raspberry",
                     "--group", "hall-c", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    bundle = json.loads(out.read_text())
    assert bundle["format"] == "dvic-node-bundle/1" and bundle["group"] == "hall-c"
    assert bundle["ws_url"] == central_server.url.replace("https://", "wss://") + "/api/v1/node/ws"
    assert central_server.node("pi-cli")["kind"] == "raspberry"
    # The server keeps the certificate but never the private key or the clear token.
    dump = (repr(central_server.query("SELECT * FROM nodes")).replace("\\n", "\n") if central_server.database
            else "\n".join(sqlite3.connect(central_server.data_dir / "dvic.sqlite3").iterdump()))
    assert "PRIVATE KEY" not in dump and bundle["token"] not in dump
    assert bundle["cert_pem"].strip() in dump
    result = run_cli("--data-dir", str(central_server.data_dir), "node", "add", "pi-cli", "--out",
                     str(tmp_path / "again.json"))
    assert result.returncode != 0 and "already exists" in result.stderr
    assert not (tmp_path / "again.json").exists()
    result = run_cli("--data-dir", str(central_server.data_dir), "node", "remove", "pi-cli")
    assert result.returncode == 0 and "revoked" in result.stdout


def test_node_add_with_the_server_stopped(tmp_path: Path):
    data = tmp_path / "central"
    database = postgres.shared_cluster().fresh_database() if postgres.wanted() else None
    on = ("--database", database) if database else ()
    result = run_cli("--data-dir", str(data), "node", "add", "pi-off", "--out", str(tmp_path / "b.json"))
    assert result.returncode != 0 and "--server-url" in result.stderr
    result = run_cli("--data-dir", str(data), "node", "add", "pi-off", "--server-url", "https://10.1.2.3:8443",
                     "--out", str(tmp_path / "b.json"), *on)
    assert result.returncode == 0, result.stderr
    bundle = json.loads((tmp_path / "b.json").read_text())
    assert bundle["keepalive_url"] == "https://10.1.2.3:8443/api/v1/keepalive"
    server = CentralServer(data, database=database).start()
    try:
        assert server.node("pi-off")["state"] == "new"
    finally:
        server.stop()


def test_plain_http_is_refused_off_loopback(tmp_path: Path):
    result = run_cli("--data-dir", str(tmp_path / "d"), "serve", "--listen", "0.0.0.0:0", "--insecure-http")
    assert result.returncode != 0 and "loopback" in result.stderr


@pytest.mark.parametrize("option, value", [("--interval", "nan"), ("--interval", "inf"), ("--interval", "0"),
                                           ("--offline-after", "nan"), ("--offline-after", "-5")])
def test_serve_refuses_an_interval_that_is_not_a_positive_number_of_seconds(tmp_path: Path, option: str,
                                                                              value: str):
    # `--interval nan` used to start a server whose welcome frame told nodes `"interval": NaN`
    # (not JSON) and whose bundles said `"interval": null`.
    result = subprocess.run([sys.executable, "-m", "central.cli", "--data-dir", str(tmp_path / "d"), "serve",
                             "--listen", "127.0.0.1:0", option, value], cwd=REPO, capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2 and option in result.stderr and "positive number of seconds" in result.stderr


def test_plain_http_on_loopback_lets_nodes_use_their_token(tmp_path: Path):
    server = CentralServer(tmp_path / "central", extra_args=("--insecure-http",)).start()
    try:
        assert server.url.startswith("http://")
        # urllib with an SSL context on an http URL ignores it: same helper works.
        bundle = server.enroll("pi-dev")
        assert bundle["ws_url"].startswith("ws://")
    finally:
        server.stop()
