"""The installer's calls to the real server, on the client library (installer/api.py): the one TLS
policy (a pinned CA, never the system's trust store), and the enroll / look up / revoke semantics
the flow relies on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from installer.api import CentralClient
from installer.models import ServerSpec
from installer.steps import central_error
from tests.support.server import CentralServer
from tui.api.errors import ApiError

REPO = Path(__file__).resolve().parents[2]


def test_without_a_ca_the_installer_refuses_instead_of_trusting_the_system_store(
    central_server: CentralServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DVIC_CA"}
    env.update(PYTHONPATH=str(REPO), DVIC_SERVER=central_server.url, DVIC_TOKEN=central_server.admin_token)
    out = tmp_path / "board.h"
    done = subprocess.run([sys.executable, "-m", "installer", "add-node", "--kind", "esp32", "--name", "board-1",
                           "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert done.returncode != 0
    assert "no CA to pin" in done.stderr and "--ca FILE" in done.stderr, done.stderr
    assert not out.exists()
    assert central_server.api("GET", "/api/v1/nodes/board-1")[0] == 404  # nothing was enrolled


@pytest.mark.parametrize(("url", "ca", "code", "hint"), [
    ("https://127.0.0.1:9", "", "no_ca", "--ca FILE"),
    ("http://192.0.2.1:8080", "", "insecure_url", "https://"),
    ("ftp://127.0.0.1", "", "bad_url", "https://"),
    ("https://127.0.0.1:9", "/nonexistent/ca.pem", "bad_ca", "readable PEM"),
])
def test_an_unusable_server_setting_stops_before_any_connection(url: str, ca: str, code: str, hint: str) -> None:
    with pytest.raises(ApiError) as refused:
        CentralClient(ServerSpec(url, "t0k", ca))
    assert (refused.value.status, refused.value.code) == (0, code)
    assert hint in central_error("connect", refused.value).hint


async def test_a_server_that_fails_the_pinned_ca_is_said_with_the_ca_hint(
    central_server: CentralServer, tmp_path: Path
) -> None:
    other = CentralServer(tmp_path / "other").start()
    try:
        async with CentralClient(ServerSpec(central_server.url, central_server.admin_token,
                                            str(other.ca_path))) as api:
            with pytest.raises(ApiError) as refused:
                await api.require_role("operator")
    finally:
        other.stop()
    assert refused.value.code == "tls"
    assert "ca.pem" in central_error("connect", refused.value).hint


async def test_enroll_look_up_and_revoke_on_the_real_server(central_server: CentralServer) -> None:
    spec = ServerSpec(central_server.url, central_server.admin_token, str(central_server.ca_path))
    async with CentralClient(spec) as api:
        assert await api.require_role("admin") == "admin (admin)"
        bundle = await api.enroll("pi-inst", "raspberry", "lab")
        assert bundle["name"] == "pi-inst" and bundle["token"]
        with pytest.raises(ApiError) as taken:
            await api.enroll("pi-inst", "raspberry", "lab")
        assert taken.value.status == 409 and taken.value.message.startswith("enrolling 'pi-inst' failed: HTTP 409 (")
        node = await api.get_node("pi-inst")
        assert node is not None and node["id"] == bundle["node_id"]
        assert await api.get_node("no-such-node") is None
        assert await api.revoke(bundle["node_id"]) is True
        assert await api.revoke("no-such-node") is False
        with pytest.raises(ApiError) as late:
            await api.wait_online(bundle["node_id"], within=0.2, poll=0.05)
        assert late.value.code == "timeout" and "not online after" in late.value.message
