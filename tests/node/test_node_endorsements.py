"""The daemon's fallback for release-key rotations: it fetches the endorsements from the real server
with its own credentials (GET /api/v1/node/release, client certificate) and follows them."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import dvic_node
import pytest
from daemon_support import interpreters

from tests.support.daemon import NODE_SCRIPT
from tests.support.server import CentralServer

# What the daemon's Updater runs when an update message carries no endorsements, in the daemon's
# interpreter (3.8 too), with the node's TLS context built from its bundle.
FETCH = """
import asyncio, json, sys, types
sys.path.insert(0, sys.argv[1])
import dvic_node
bundle = json.load(open(sys.argv[2]))
daemon = types.SimpleNamespace(bundle=bundle, opts=types.SimpleNamespace(state_dir=sys.argv[3]),
                               ssl_context=dvic_node.make_ssl_context(bundle, sys.argv[3] + "/tls"))
print(json.dumps(asyncio.run(dvic_node.Updater(daemon, sys.argv[2], 60.0)._fetch_endorsements())))
"""


@pytest.mark.parametrize("python", interpreters())
def test_the_fallback_fetches_endorsements_that_lead_to_the_current_key(
    python: str, central_server: CentralServer, tmp_path: Path
) -> None:
    server = central_server
    bundle = server.enroll("rotating")
    pinned = bundle["release_key"]
    for _ in range(2):
        assert server.api("POST", "/api/v1/release/rotate-key")[0] == 201
    _, info = server.api("GET", "/api/v1/release")
    bundle_path = server.write_bundle(bundle, tmp_path / "bundle.json")
    out = subprocess.run([python, "-c", FETCH, str(NODE_SCRIPT.parent), str(bundle_path), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    fetched = json.loads(out.stdout)
    assert fetched == info["endorsements"] and len(fetched) == 2
    assert dvic_node.follow_endorsements(pinned, fetched)[-1] == info["release_key"]


def _get(server: CentralServer, ctx: ssl.SSLContext, token: str = "") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(server.url + "/api/v1/node/release", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_only_an_enrolled_unrevoked_node_reads_the_node_release_route(
    central_server: CentralServer, tmp_path: Path
) -> None:
    server = central_server
    bundle = server.enroll("reader")
    node_ctx = dvic_node.make_ssl_context(bundle, str(tmp_path / "tls"))
    status, body = _get(server, node_ctx)
    assert status == 200 and body["release_key"] == bundle["release_key"]
    # Over TLS a node is its certificate: neither its token nor an operator's stands in for it.
    for token in (bundle["token"], server.admin_token):
        status, body = _get(server, server.ssl_context, token)
        assert status == 401 and body["error"]["code"] == "no_client_certificate"
    assert server.api("DELETE", "/api/v1/nodes/reader")[0] == 200
    status, body = _get(server, node_ctx)
    assert status == 403 and body["error"]["code"] == "revoked"
