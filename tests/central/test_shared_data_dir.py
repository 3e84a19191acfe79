"""Replicas sharing one data dir (issue 18): real `dvic-central serve --replica` processes on one real
PostgreSQL database and one data dir. First start initialises the data dir once (one CA, one
release key, one admin token) even when they start at the same instant; each replica announces
itself in its own listen file and leaves the others'; a replica starting leaves another's upload
in progress alone; each replica keeps its own server certificate."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.nodes import connected
from tests.support.postgres import Cluster
from tests.support.releases import archive, publish
from tests.support.replicas import Replicas, toward
from tests.support.server import REPO, CentralServer
from tests.support.wait import wait_for

ROUNDS = 3  # fresh data dir and database each: the race is won differently each time


def _pem_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _release_public(data_dir: Path) -> dict[str, Any]:
    key = serialization.load_pem_private_key((data_dir / "release.key").read_bytes(), password=None)
    numbers = key.public_key().public_numbers()  # type: ignore[union-attr]
    return {"n": format(numbers.n, "x"), "e": numbers.e}


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_replicas_starting_at_once_on_an_empty_data_dir_share_one_ca(
        tmp_path: Path, pg_cluster: Cluster, round_: int) -> None:
    data = tmp_path / "data"
    replicas = Replicas(data, pg_cluster.fresh_database(), count=3)
    try:
        servers = replicas.start_together()
        ca = _pem_cert(data / "ca.pem")
        for server in servers:
            # TLS checked against the ca.pem on disk, the admin token from disk accepted.
            status, health = server.api("GET", "/api/v1/health")
            assert status == 200, (server.name, health)
            bundle = server.enroll(f"pi-{server.name}")
            assert bundle["ca_pem"].encode() == (data / "ca.pem").read_bytes(), server.name
            x509.load_pem_x509_certificate(bundle["cert_pem"].encode()).verify_directly_issued_by(ca)
            assert bundle["release_key"] == _release_public(data), server.name
            # Its node is accepted (mutual TLS) by another replica, which checks it against its CA.
            other = servers[(servers.index(server) + 1) % len(servers)]
            async with connected(toward(bundle, other)) as node:
                assert node.welcome["type"] == "welcome"
        assert servers[0].query("SELECT name FROM operators") == [("admin",)]
    finally:
        replicas.stop()


def _replicas_one_after_the_other(tmp_path: Path, pg_cluster: Cluster) -> Replicas:
    return Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2)


def _listen(data: Path, name: str = "listen.json") -> dict[str, Any] | None:
    path = data / name
    return json.loads(path.read_text()) if path.exists() else None


def _dvic_central(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "central.cli", "--data-dir", str(data), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_replica_stopping_leaves_the_listen_file_of_another(tmp_path: Path, pg_cluster: Cluster) -> None:
    data = tmp_path / "data"
    with _replicas_one_after_the_other(tmp_path, pg_cluster) as (r1, r2):
        assert _listen(data)["pid"] == r2.pid  # the replica that started last
        r1_file = _listen(data, "listen-r1.json")
        r1.stop()
        assert _listen(data)["pid"] == r2.pid, "r1's stop removed r2's listen.json"
        assert r1_file is not None and r1_file["url"] == r1.url
        assert _listen(data, "listen-r1.json") is None
        assert _listen(data, "listen-r2.json")["url"] == r2.url
        listed = _dvic_central(data, "node", "list")
        assert listed.returncode == 0, listed.stderr
        r2.stop()
        assert _listen(data) is None and _listen(data, "listen-r2.json") is None


def test_node_add_finds_a_replica_still_running(tmp_path: Path, pg_cluster: Cluster) -> None:
    data = tmp_path / "data"
    with _replicas_one_after_the_other(tmp_path, pg_cluster) as (r1, r2):
        r2.stop()  # listen.json named r2: gone with it
        assert _listen(data) is None
        out = tmp_path / "pi.json"
        added = _dvic_central(data, "node", "add", "pi-7", "--out", str(out))
        assert added.returncode == 0, added.stderr
        assert json.loads(out.read_text())["server_url"] == r1.url  # through r1, not offline
        assert r1.node("pi-7")["name"] == "pi-7"


def test_a_single_server_announces_itself_in_listen_json_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with CentralServer(data) as server:
        assert _listen(data)["pid"] == server.pid
        assert not list(data.glob("listen-*.json"))
    assert _listen(data) is None


def _release(tmp: Path, version: str) -> bytes:
    manifest = {"name": "robot-arm", "version": version, "run": ["python3", "app.py"]}
    return archive(tmp / f"robot-arm-{version}.tar.gz", manifest, {"app.py": os.urandom(4096).hex().encode()}).read_bytes()


def _held_upload(server: CentralServer, data: bytes, go: threading.Event) -> tuple[int, Any]:
    """publish() that sends the first chunk, then waits for `go` before the rest."""
    def body() -> Iterator[bytes]:
        yield data[:1024]
        assert go.wait(120), "the test never let the upload finish"
        yield data[1024:]
    return publish(server, body(), chunked=False)  # type: ignore[arg-type]


def test_a_replica_starting_leaves_an_upload_in_progress_alone(tmp_path: Path, pg_cluster: Cluster) -> None:
    data = tmp_path / "data"
    replicas = _replicas_one_after_the_other(tmp_path, pg_cluster)
    r1, r2 = replicas.servers
    uploads = data / "releases" / "uploads"
    try:
        r1.start()
        (uploads / "left-by-a-kill.part").write_bytes(b"half a release")  # nobody receives it
        go = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            upload = pool.submit(_held_upload, r1, _release(tmp_path, "1.0.0"), go)
            try:
                wait_for(lambda: len(list(uploads.iterdir())) == 2, 30, "r1 to receive the upload")
                r2.start()
                assert not (uploads / "left-by-a-kill.part").exists(), "r2 kept a stale upload"
                assert len(list(uploads.iterdir())) == 1, "r2 removed r1's upload in progress"
            finally:
                go.set()
            status, body = upload.result(120)
        assert status == 201, body
        assert r1.api("GET", "/api/v1/demos/robot-arm/releases")[1]["releases"][0]["version"] == "1.0.0"
        assert not list(uploads.iterdir())
    finally:
        replicas.stop()


def _presented(server: CentralServer) -> x509.Certificate:
    port = int(server.url.rsplit(":", 1)[1])
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port)).encode())


def _names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_each_replica_keeps_its_own_server_certificate(tmp_path: Path, pg_cluster: Cluster) -> None:
    data, database = tmp_path / "data", pg_cluster.fresh_database()
    r1, r2 = (CentralServer(data, database=database, name=name,
                            extra_args=("--replica", name, "--public-host", f"{name}.lab.test"))
              for name in ("r1", "r2"))
    try:
        first = _presented(r1.start())
        r2.start()
        r1.stop()
        assert _presented(r1.start()) == first, "r1's certificate was reissued: r2's start rewrote it"
        for server in (r1, r2):
            presented = _presented(server)
            assert f"{server.name}.lab.test" in _names(presented)
            assert presented == _pem_cert(data / f"server-{server.name}.pem")
            presented.verify_directly_issued_by(_pem_cert(data / "ca.pem"))
        assert not (data / "server.pem").exists()
    finally:
        r1.stop()
        r2.stop()
