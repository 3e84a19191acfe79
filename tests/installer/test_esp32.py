"""`dvic add-node --kind esp32`: a C header whose token and CA really work against dvic-central."""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support.server import CentralServer
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]


def _dvic(args: list[str], server: CentralServer) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVIC_SERVER": server.url, "DVIC_TOKEN": server.admin_token,
           "DVIC_CA": str(server.ca_path)}
    return subprocess.run([sys.executable, "-m", "installer", *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=REPO)


def _define(header: str, name: str) -> str:
    match = re.search(rf'^#define {name} "(.*)"$', header, re.M)
    assert match, name
    return match.group(1)


def _ca_from_header(header: str) -> str:
    body = header.split("DVIC_CA_PEM[] =", 1)[1].split(";", 1)[0]
    return "".join(re.findall(r'"(.*?)"', body)).replace("\\012", "\n")


def test_esp32_header_works_against_the_server(central_server: CentralServer, tmp_path: Path) -> None:
    out = tmp_path / "dvic_node_config.h"
    done = _dvic(["add-node", "--kind", "esp32", "--name", "board-7", "--group", "hall", "--out", str(out)],
                 central_server)
    assert done.returncode == 0, done.stderr
    assert "board-7" in done.stdout and "enroll" in done.stdout and "write" in done.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    header = out.read_text()
    node = central_server.node("board-7")
    assert node["kind"] == "esp32" and node["group"] == "hall"
    assert _define(header, "DVIC_NODE_ID") == node["id"]

    # What the board would do: POST a keep-alive with the token, trusting only the header's CA.
    ctx = ssl.create_default_context(cadata=_ca_from_header(header))
    req = urllib.request.Request(_define(header, "DVIC_KEEPALIVE_URL"), method="POST",
                                 data=json.dumps({"uptime": 12, "rssi": -60}).encode(),
                                 headers={"Authorization": "Bearer " + _define(header, "DVIC_NODE_TOKEN"),
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        assert json.loads(resp.read())["node_id"] == node["id"]
    wait_for(lambda: central_server.node("board-7")["state"] == "online", timeout=10, what="board online")


def test_esp32_never_overwrites_and_enrolls_nothing_on_a_bad_path(
    central_server: CentralServer, tmp_path: Path
) -> None:
    out = tmp_path / "existing.h"
    out.write_text("// my own work\n")
    done = _dvic(["add-node", "--kind", "esp32", "--name", "board-8", "--out", str(out)], central_server)
    assert done.returncode == 1 and "already exists" in done.stderr and "--force" in done.stderr
    assert out.read_text() == "// my own work\n"
    done = _dvic(["add-node", "--kind", "esp32", "--name", "board-8", "--out", str(tmp_path / "no/dir/x.h")],
                 central_server)
    assert done.returncode == 1 and "cannot write" in done.stderr
    status, _ = central_server.api("GET", "/api/v1/nodes/board-8")
    assert status == 404
