"""The server's side of the supervised-demo messages, with a scripted node over a real mutual-TLS
websocket: what `demos_desired` holds, an old daemon's `unsupported`, a node that never answers, and
malformed `demo_install` / `demo_status` frames."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dvic_core.constants import CLOSE_MALFORMED
from tests.support.fake_node import FakeNode
from tests.support.releases import archive, publish
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    tmp = tmp_path_factory.mktemp("demos-protocol")
    srv = CentralServer(tmp / "central", extra_args=("--demo-install-timeout", "2", "--max-release-members", "500",
                                                     "--max-release-unpacked", "64M")).start()
    data = archive(tmp / "arm.tar.gz", {"name": "arm", "version": "1.0.0", "run": ["./arm"], "heartbeat_s": 5},
                   {"arm": b"#!/bin/sh\n"}).read_bytes()
    status, body = publish(srv, data)
    assert status == 201, body
    srv.release = body  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def deployment(server: CentralServer, dep_id: str) -> dict[str, Any]:
    return server.api("GET", f"/api/v1/deployments/{dep_id}")[1]


async def desired_after_welcome(node: FakeNode) -> dict[str, Any]:
    await node.connect()
    await node.hello()
    push = await node.recv()
    assert push["type"] == "demos_desired", push
    return push


async def test_the_push_names_the_release_and_an_old_daemon_says_unsupported(server: CentralServer) -> None:
    bundle = server.enroll("old-daemon")
    _, dep = server.api("POST", "/api/v1/deployments", {"demo": "arm", "version": "1.0.0", "node": "old-daemon"})
    assert dep["nodes"][0]["state"] == "offline"
    async with FakeNode(bundle) as node:
        push = await desired_after_welcome(node)
        release = server.release  # type: ignore[attr-defined]
        assert push["demos"] == [{
            "name": "arm", "version": "1.0.0", "sha256": release["sha256"], "size": release["size"],
            "url": f"/api/v1/node/releases/{release['sha256']}", "manifest": release["manifest"],
            "rollout": dep["id"], "max_unpacked_bytes": 64 * 1024 * 1024, "max_members": 500}]
        await node.send({"type": "unsupported", "id": push["id"], "what": "demos_desired"})

        async def failed() -> dict[str, Any] | None:
            row = deployment(server, dep["id"])["nodes"][0]
            return row if row["state"] == "failed" else None

        row = await async_wait_for(failed, 10, "the row failed")
        assert row["message"] == "the node's daemon does not support supervised demos: update it (dvic update)"
        assert deployment(server, dep["id"])["state"] == "failed"


async def test_a_node_that_never_answers_is_lost_and_a_later_report_replaces_lost(server: CentralServer) -> None:
    bundle = server.enroll("mute")
    _, dep = server.api("POST", "/api/v1/deployments", {"demo": "arm", "version": "1.0.0", "node": "mute"})
    async with FakeNode(bundle) as node:
        await desired_after_welcome(node)
        started = time.monotonic()

        async def lost() -> dict[str, Any] | None:
            row = deployment(server, dep["id"])["nodes"][0]
            return row if row["state"] == "lost" else None

        row = await async_wait_for(lost, 15, "the row lost")
        assert row["message"] == "no answer to the push for 2 s" and time.monotonic() - started >= 1.5
        assert deployment(server, dep["id"])["state"] == "failed"
        # the node knows better: its report replaces `lost`
        await node.send({"type": "demo_install", "demo": "arm", "version": "1.0.0", "rollout": dep["id"],
                         "state": "healthy", "message": "version 1.0.0 is installed"})

        async def healthy() -> bool:
            return deployment(server, dep["id"])["nodes"][0]["state"] == "healthy"

        await async_wait_for(healthy, 10, "the row healthy")
        await node.send({"type": "demo_status", "demo": "arm", "version": "1.0.0", "state": "healthy", "pid": 42,
                         "restarts": 2, "since": time.time() - 5, "last_exit": {"code": 3, "signal": None, "at": 1.0},
                         "last_heartbeat": time.time(), "message": ""})

        async def shown() -> dict[str, Any] | None:
            rows = server.api("GET", "/api/v1/demos/status?demo=arm")[1]["status"]
            row = next((r for r in rows if r["node_name"] == "mute"), None)
            return row if row and row["state"] == "healthy" else None

        row = await async_wait_for(shown, 10, "the status shown")
        assert (row["version"], row["restarts"], row["pid"], row["last_exit"]["code"]) == ("1.0.0", 2, 42, 3)
        assert 4 <= row["uptime"] < 60
        # a demo the daemon has no release of any more reports no version
        await node.send({"type": "demo_status", "demo": "gone", "version": None, "state": "stopped", "pid": None,
                         "restarts": 0, "since": None, "last_exit": None, "last_heartbeat": None, "message": "removed"})

        async def stopped() -> dict[str, Any] | None:
            rows = server.api("GET", "/api/v1/demos/status?demo=gone")[1]["status"]
            return rows[0] if rows else None

        row = await async_wait_for(stopped, 10, "the stopped demo shown")
        assert (row["version"], row["state"], row["uptime"]) == ("", "stopped", None)


@pytest.mark.parametrize("frame", [
    {"type": "demo_install", "demo": "../etc", "version": "1", "rollout": None, "state": "healthy"},
    {"type": "demo_install", "demo": "arm", "version": "1", "rollout": None, "state": "exploded"},
    {"type": "demo_install", "demo": "arm", "version": "1", "rollout": None, "state": "downloading", "bytes": -1},
    {"type": "demo_status", "demo": "arm", "version": "1", "state": "healthy", "restarts": "many"},
    {"type": "demo_status", "demo": "arm", "version": "1", "state": "healthy", "last_exit": [1]},
])
async def test_malformed_demo_frames_are_protocol_errors(server: CentralServer, frame: dict[str, Any]) -> None:
    bundle = server.enroll(f"bad-{uuid.uuid4().hex[:8]}")
    async with FakeNode(bundle) as node:
        await node.connect()
        await node.hello()
        await node.send(frame)
        while True:
            msg = await node.recv()
            if msg["type"] == "error":
                break
        assert msg["code"] == "bad_message"
        assert await node.closed() == CLOSE_MALFORMED
