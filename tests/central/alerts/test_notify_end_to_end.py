"""The whole path on the real server: a real daemon is killed, the engine raises node_offline, and
the dispatcher (the engine's sink) delivers it, signed, to a webhook added through the API; the
daemon's return delivers the resolution."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import online_daemon
from tests.support.receivers import HttpReceiver, Received
from tests.support.server import CentralServer
from tests.support.wait import wait_for

SECRET = "e2e-hmac-key"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CentralServer]:
    central = CentralServer(tmp_path / "central", interval=1.0, offline_after=2.0,
                            extra_args=("--alerts-interval", "0.5", "--notify-group-quiet", "0.3")).start()
    try:
        yield central
    finally:
        central.stop()


def about(received: Received, rule: str, subject: str, kind: str) -> bool:
    body = received.json()
    return body["kind"] == kind and any(a["rule"] == rule and a["subject"] == subject for a in body["alerts"])


def signed(received: Received) -> bool:
    timestamp = received.headers["X-DVIC-Timestamp"].encode()
    digest = hmac.new(SECRET.encode(), timestamp + b"." + received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers["X-DVIC-Signature"], "sha256=" + digest)


def test_a_killed_daemon_reaches_the_webhook_and_so_does_its_return(server: CentralServer, receiver: HttpReceiver,
                                                                     tmp_path: Path) -> None:
    status, channel = server.api("POST", "/api/v1/channels/ops", {"kind": "webhook", "url": receiver.url + "/ops",
                                                                  "secret": SECRET})
    assert status == 201, channel
    with online_daemon(server, tmp_path / "pi-dies") as (node_id, daemon):
        subject = f"node:{server.node(node_id)['name']}"
        daemon.kill()
        [fired] = wait_for(lambda: [r for r in receiver.accepted if about(r, "node_offline", subject, "firing")],
                           timeout=20, what="the node_offline notification at the webhook")
        assert signed(fired) and fired.json()["severity"] == "critical"
        daemon.start()
        [resolved] = wait_for(lambda: [r for r in receiver.accepted if about(r, "node_offline", subject, "resolved")],
                              timeout=30, what="the resolution at the webhook")
        assert signed(resolved) and resolved.json()["title"].startswith("RESOLVED (critical): ")
    status, page = server.api("GET", "/api/v1/notifications")
    assert status == 200 and {n["kind"] for n in page["notifications"] if n["state"] == "sent"} >= {"firing", "resolved"}
