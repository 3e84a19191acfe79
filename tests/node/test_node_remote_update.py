"""Self-update of the real daemon from the real server: rolled out, refused when unsafe, rolled back when broken."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dvic_node
import pytest

from tests.support.daemon import NODE_SCRIPT, enrolled_daemon, wait_connected
from tests.support.procs import pids_where
from tests.support.server import CentralServer
from tests.support.wait import wait_for

ORIGINAL = NODE_SCRIPT.read_bytes()


def variant(version: str, replace: tuple[bytes, bytes] | None = None) -> bytes:
    data = ORIGINAL.replace(b'VERSION = "0.1.0"', b'VERSION = "%s"' % version.encode(), 1)
    if replace:
        assert replace[0] in data
        data = data.replace(*replace, 1)
    return data


def bytecode_is_current(path: Path) -> bool:
    """True when the .pyc the launcher loads for `path` is a checked-hash one of its current content."""
    pyc = Path(importlib.util.cache_from_source(str(path)))
    if not pyc.exists():
        return False
    head = pyc.read_bytes()[:16]
    flags = int.from_bytes(head[4:8], "little")  # 0b11: hash-based and checked
    return flags == 0b11 and head[8:16] == importlib.util.source_hash(path.read_bytes())


def publish(server: CentralServer, data: bytes) -> dict[str, Any]:
    req = urllib.request.Request(server.url + "/api/v1/release", data=data, method="POST",
                                 headers={"Authorization": f"Bearer {server.admin_token}"})
    with urllib.request.urlopen(req, context=server.ssl_context, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    with CentralServer(tmp_path_factory.mktemp("update") / "central", interval=1.0) as srv:
        yield srv


class Node:
    """A daemon running from its own copy of dvic_node.py (the file an update replaces)."""

    def __init__(self, server: CentralServer, tmp: Path, name: str, source: bytes = ORIGINAL,
                 deadline: float = 60) -> None:
        self.server = server
        self.name = name
        self.file = tmp / "opt" / "dvic_node.py"
        self.file.parent.mkdir(parents=True)
        self.file.write_bytes(source)
        _, self.daemon = enrolled_daemon(server, tmp, name=name, script=self.file,
                                         extra=("--update-deadline", str(deadline)))
        self.state = self.daemon.state_dir

    def __enter__(self) -> Node:
        wait_connected(self.server, self.name, self.daemon.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()

    def update(self) -> dict[str, Any]:
        """POST /api/v1/update for this node; returns the action once final."""
        status, body = self.server.api("POST", "/api/v1/update", {"nodes": [self.name]})
        assert status == 201, body
        (action,) = body["actions"]

        def final() -> dict[str, Any] | None:
            _, acts = self.server.api("GET", f"/api/v1/actions?node={self.name}")
            found = next(a for a in acts["actions"] if a["id"] == action["id"])
            return found if found["state"] in ("done", "failed", "lost") else None

        return wait_for(final, 60, "the update to finish", interval=0.2)  # type: ignore[return-value]


def test_a_signed_newer_release_rolls_out(server: CentralServer, tmp_path: Path) -> None:
    publish(server, variant("0.2.0"))
    with Node(server, tmp_path, "up-good") as node:
        pid = node.daemon.proc.pid  # type: ignore[union-attr]
        action = node.update()
        assert action["state"] == "done" and "0.2.0" in action["message"], action
        assert server.node("up-good")["daemon_version"] == "0.2.0"
        assert node.file.read_bytes() == variant("0.2.0")
        assert (node.file.parent / "dvic_node.py.prev").read_bytes() == ORIGINAL
        assert bytecode_is_current(node.file)  # the restarted daemon started from the new bytecode
        assert node.daemon.proc.pid == pid and node.daemon.running()  # type: ignore[union-attr]  # re-executed
        wait_for(lambda: not (node.state / "update.json").exists(), 10, "the update confirmed")
        log = node.daemon.log()
        assert "verified" in log and "restarting into version 0.2.0" in log


def test_tampered_unsigned_and_older_releases_are_refused(server: CentralServer, tmp_path: Path) -> None:
    meta_path = server.data_dir / "daemon" / "release.json"
    file_path = server.data_dir / "daemon" / "dvic_node.py"
    publish(server, variant("0.3.0"))
    with Node(server, tmp_path / "a", "up-refuse") as node:
        file_path.write_bytes(variant("0.3.0") + b"# tampered\n")  # the announced sha256 no longer matches
        action = node.update()
        assert action["state"] == "failed" and "refused: sha256 mismatch" in action["message"], action

        meta = json.loads(meta_path.read_text())  # a matching hash, but a signature of other bytes
        meta["sha256"] = hashlib.sha256(file_path.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))
        action = node.update()
        assert action["state"] == "failed" and "refused: bad signature" in action["message"], action
        assert node.file.read_bytes() == ORIGINAL and not (node.file.parent / "dvic_node.py.prev").exists()
    publish(server, variant("0.3.1"))
    with Node(server, tmp_path / "b", "up-newer", source=variant("9.9.9")) as node:
        action = node.update()
        assert action["state"] == "failed" and "not newer than the running 9.9.9" in action["message"], action
        assert node.file.read_bytes() == variant("9.9.9")


@pytest.mark.slow
def test_a_release_that_cannot_connect_is_rolled_back(server: CentralServer, tmp_path: Path) -> None:
    # signed and newer, but it speaks a protocol the server refuses: it never gets a welcome
    publish(server, variant("0.4.0", (b"PROTOCOL = 1\n", b"PROTOCOL = 77\n")))
    with Node(server, tmp_path, "up-broken", deadline=3) as node:
        pid = node.daemon.proc.pid  # type: ignore[union-attr]
        action = node.update()
        assert action["state"] == "failed" and action["message"].startswith("rolled_back: version 0.4.0 was not "
                                                                            "welcomed"), action
        assert node.file.read_bytes() == ORIGINAL and bytecode_is_current(node.file)
        assert server.node("up-broken")["daemon_version"] == "0.1.0"
        assert node.daemon.proc.pid == pid and node.daemon.running()  # type: ignore[union-attr]
        wait_for(lambda: not (node.state / "update.json").exists(), 10, "the rollback reported")


def test_key_rotation_endorsements_lead_from_the_pinned_key_to_the_new_one(tmp_path: Path) -> None:
    with CentralServer(tmp_path / "central") as srv:
        pinned = srv.enroll("rot")["release_key"]
        publish(srv, variant("0.5.0"))
        assert srv.api("POST", "/api/v1/release/rotate-key")[0] == 201
        assert srv.api("POST", "/api/v1/release/rotate-key")[0] == 201
        _, info = srv.api("GET", "/api/v1/release")
        data = (srv.data_dir / "daemon" / "dvic_node.py").read_bytes()
        signature = json.loads((srv.data_dir / "daemon" / "release.json").read_text())["signature"]
        assert not dvic_node.rsa_verify_sha256(data, signature, pinned)  # signed by the newest key only
        chain = dvic_node.follow_endorsements(pinned, info["endorsements"])
        assert len(chain) == 3 and chain[-1] == info["release_key"]
        assert dvic_node.rsa_verify_sha256(data, signature, chain[-1])
        # an endorsement not signed by the key before it is not followed
        forged = [dict(info["endorsements"][1])]
        assert dvic_node.follow_endorsements(pinned, forged) == [pinned]
        assert not dvic_node.rsa_verify_sha256(data[:-1] + b"#", signature, chain[-1])


def daemons_running(path: Path) -> list[int]:
    """Pids of processes running the daemon file `path` (the watchdog's replacement is not our child)."""
    return pids_where(lambda cmd: str(path).encode() in cmd.split(b"\0"))


def test_a_release_that_dies_at_start_is_restored_by_the_watchdog(server: CentralServer, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)  # not under systemd: the watchdog restarts it itself
    publish(server, variant("0.6.0", (b"\nimport argparse\n", b"\nraise SystemExit('broken release')\nimport argparse\n")))
    with Node(server, tmp_path, "up-dies", deadline=60) as node:
        first = node.daemon.proc.pid  # type: ignore[union-attr]
        try:
            action = node.update()
            assert action["state"] == "failed", action
            assert "rolled_back: version 0.6.0 exited before it was welcomed" in action["message"], action
            assert node.file.read_bytes() == ORIGINAL and bytecode_is_current(node.file)
            assert node.daemon.proc.wait(timeout=10) != 0  # type: ignore[union-attr]  # the broken one
            assert "broken release" in node.daemon.log()
            (replacement,) = daemons_running(node.file)  # the watchdog became the restored daemon
            assert replacement != first and server.node("up-dies")["daemon_version"] == "0.1.0"
        finally:
            for pid in daemons_running(node.file):
                os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not daemons_running(node.file), 20, "the restored daemon stopped")


async def test_an_endorsed_key_sent_with_the_update_is_followed_and_remembered(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from remote_support import ScriptedServer, scripted_daemon

    def public(key: rsa.RSAPrivateKey) -> dict[str, Any]:
        nums = key.public_key().public_numbers()
        return {"n": format(nums.n, "x"), "e": nums.e}

    def sign(key: rsa.RSAPrivateKey, data: bytes) -> str:
        return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()

    old, new, rogue = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))
    release = variant("0.2.0")
    endorse = [{"key": public(new), "signature": sign(old, dvic_node.key_statement(public(new)))}]
    forged = [{"key": public(new), "signature": sign(rogue, dvic_node.key_statement(public(new)))}]
    async with ScriptedServer() as srv:
        srv.release_key = public(old)
        srv.files["dvic_node.py"] = release
        daemon = scripted_daemon(srv, tmp_path, copy_script=True).start()
        try:
            await srv.connected()
            update = {"type": "update", "version": "0.2.0", "url": srv.file_url("dvic_node.py"),
                      "sha256": hashlib.sha256(release).hexdigest(), "signature": sign(new, release)}
            await srv.send({**update, "id": "u1", "endorsements": forged})
            refused = await srv.wait(lambda: [m for m in srv.of("u1", "update_state") if m["state"] == "refused"])
            assert "bad signature" in refused[0]["message"]
            await srv.send({**update, "id": "u2", "endorsements": endorse})
            await srv.wait(lambda: any(m["state"] == "restarting" for m in srv.of("u2", "update_state")))
            await srv.wait(lambda: srv.hellos[-1]["daemon_version"] == "0.2.0", 30, "the new version's hello")
            saved = json.loads((tmp_path / "state" / "release_key.json").read_text())
            assert saved == public(new)
            assert [m["state"] for m in srv.of("u2", "update_state")] == ["downloading", "verified", "restarting"]
        finally:
            await asyncio.to_thread(daemon.stop)
