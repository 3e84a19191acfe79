"""Publishing demo releases to the real server: streamed, checked, immutable, listed, retained, audited."""

from __future__ import annotations

import hashlib
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.releases import add_member, archive, publish
from tests.support.server import CentralServer

MANIFEST = {"name": "robot-arm", "version": "1.0.0", "run": ["python3", "app.py"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    srv = CentralServer(tmp_path_factory.mktemp("catalog") / "central", extra_args=(
        "--max-release-bytes", "256K", "--max-release-members", "50", "--max-release-unpacked", "1M",
        "--keep-releases", "2")).start()
    for role in ("viewer", "operator"):
        _, body = srv.api("POST", "/api/v1/operators", {"name": f"cat-{role}", "role": role})
        setattr(srv, role, body["token"])
    yield srv
    srv.stop()


def release(tmp: Path, version: str, name: str = "robot-arm", body: bytes = b"print('hi')\n", **extra: Any) -> bytes:
    path = archive(tmp / f"{name}-{version}.tar.gz", {**MANIFEST, "name": name, "version": version, **extra},
                   {"app.py": body})
    return path.read_bytes()


def audit_rows(server: CentralServer, action: str) -> list[dict[str, Any]]:
    status, body = server.api("GET", "/api/v1/audit?limit=200")
    assert status == 200, body
    return [r for r in body["entries"] if r["action"] == action]


def test_publish_stores_the_archive_content_addressed(server: CentralServer, tmp_path: Path) -> None:
    data = release(tmp_path, "1.0.0")
    status, body = publish(server, data, token=server.operator)  # type: ignore[attr-defined]
    assert status == 201, body
    sha = hashlib.sha256(data).hexdigest()
    assert (body["name"], body["version"], body["sha256"], body["size"], body["created"]) == \
           ("robot-arm", "1.0.0", sha, len(data), True)
    assert body["manifest"]["restart"] == "always"  # defaults filled in: what nodes get
    assert (server.data_dir / "releases" / "sha256" / sha).read_bytes() == data
    assert not list((server.data_dir / "releases" / "uploads").iterdir())
    # the same bytes again: nothing new, 200
    status, again = publish(server, data, token=server.operator)  # type: ignore[attr-defined]
    assert (status, again["created"]) == (200, False)
    rows = audit_rows(server, "demo_publish")
    assert rows[0]["target"] == "robot-arm 1.0.0" and rows[0]["detail"]["sha256"] == sha


def test_releases_are_immutable(server: CentralServer, tmp_path: Path) -> None:
    publish(server, release(tmp_path, "1.1.0"))
    status, body = publish(server, release(tmp_path, "1.1.0", body=b"print('other')\n"))
    assert status == 409 and body["error"]["code"] == "release_exists"
    assert "releases are immutable, publish a new version" in body["error"]["message"]


def test_name_and_version_given_override_the_manifest(server: CentralServer, tmp_path: Path) -> None:
    status, body = publish(server, release(tmp_path, "1.0.0", name="spare"), name="lamp", version="3.0.0")
    assert status == 201, body
    assert (body["name"], body["version"], body["manifest"]["name"], body["manifest"]["version"]) == \
           ("lamp", "3.0.0", "lamp", "3.0.0")


def test_bad_manifests_and_archives_say_what_to_change(server: CentralServer, tmp_path: Path) -> None:
    status, body = publish(server, release(tmp_path, "1.2.0", restart="sometimes"))
    assert status == 400 and body["error"]["code"] == "bad_manifest"
    assert body["error"]["message"].startswith("dvic-demo.toml:4: restart: expected one of always, on-failure")
    evil = archive(tmp_path / "evil.tar.gz", {**MANIFEST, "version": "1.3.0"}, {"app.py": b"1"},
                   extra=lambda t: add_member(t, "x", tarfile.SYMTYPE, "../../../etc/shadow"))
    status, body = publish(server, evil.read_bytes())
    assert status == 400 and body["error"] == {
        "code": "bad_archive", "message": "bad archive member 'x': a symlink to '../../../etc/shadow', outside the release"}
    status, body = publish(server, b"garbage")
    assert status == 400 and "not a gzip-compressed tar archive" in body["error"]["message"]
    status, body = publish(server, b"")
    assert status == 400 and body["error"]["code"] == "bad_archive"
    status, body = publish(server, release(tmp_path, "1.0.0"), name="bad/name")
    assert status == 400 and body["error"]["code"] == "bad_demo"
    # nothing half-kept
    assert not list((server.data_dir / "releases" / "uploads").iterdir())
    refused = [r for r in audit_rows(server, "demo_publish") if r["status"] >= 400]
    assert {r["detail"]["error"] for r in refused} >= {"bad_manifest", "bad_archive"}


def test_limits_stop_large_releases_and_bombs(server: CentralServer, tmp_path: Path) -> None:
    big = archive(tmp_path / "big.tar.gz", {**MANIFEST, "version": "2.0.0"},
                  {"noise.bin": random.Random(1).randbytes(300_000)})  # gzip cannot shrink it
    assert big.stat().st_size > 256 * 1024
    status, body = publish(server, big.read_bytes())  # refused on its Content-Length
    assert status == 413 and "--max-release-bytes" in body["error"]["message"]
    status, body = publish(server, big.read_bytes(), chunked=True)  # refused while streaming
    assert status == 413 and "--max-release-bytes" in body["error"]["message"]
    assert not list((server.data_dir / "releases" / "uploads").iterdir())
    bomb = archive(tmp_path / "bomb.tar.gz", {**MANIFEST, "version": "2.0.1"}, {"zeros": bytes(3 * 1024 * 1024)})
    status, body = publish(server, bomb.read_bytes())
    assert status == 400 and "unpacks to more than 1048576 bytes (an archive bomb?)" in body["error"]["message"]
    many = archive(tmp_path / "many.tar.gz", {**MANIFEST, "version": "2.0.2"}, {f"f{i}": b"" for i in range(60)})
    status, body = publish(server, many.read_bytes())
    assert status == 400 and "more than 50 members" in body["error"]["message"]


def test_list_releases_and_retention(server: CentralServer, tmp_path: Path) -> None:
    for version in ("0.1.0", "0.2.0", "0.10.0", "0.11.0"):
        status, _ = publish(server, release(tmp_path, version, name="kiosk", body=version.encode()))
        assert status == 201
    status, body = server.api("GET", "/api/v1/demos/kiosk/releases", token=server.viewer)  # type: ignore[attr-defined]
    assert status == 200
    # --keep-releases 2: nothing deploys kiosk, so only the two newest stay (files too)
    assert [r["version"] for r in body["releases"]] == ["0.10.0", "0.11.0"]
    kept = {r["sha256"] for r in body["releases"]}
    files = {p.name for p in (server.data_dir / "releases" / "sha256").iterdir()}
    assert kept <= files
    status, body = server.api("GET", "/api/v1/demos", token=server.viewer)  # type: ignore[attr-defined]
    kiosk = next(d for d in body["demos"] if d["name"] == "kiosk")
    assert (kiosk["releases"], kiosk["latest"]) == (2, "0.11.0")
    status, body = server.api("GET", "/api/v1/demos/nothing/releases")
    assert status == 404 and body["error"]["code"] == "no_such_demo"


def test_viewers_cannot_publish(server: CentralServer, tmp_path: Path) -> None:
    status, body = publish(server, release(tmp_path, "9.0.0"), token=server.viewer)  # type: ignore[attr-defined]
    assert status == 403 and body["error"]["code"] == "forbidden"
