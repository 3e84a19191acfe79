"""The real server's TLS listener (central/tlsconn.py under central/listener.py GuardedSite), on
uvloop and on asyncio's loop: large bodies both ways, file downloads (asyncio's sendfile fallback
writes through the TLS layer), and a client certificate from another CA refused without noise."""

from __future__ import annotations

import hashlib
import random
import ssl
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from central.release import MAX_DAEMON_BYTES
from tests.support.nodes import greeted
from tests.support.pki import make_pki
from tests.support.releases import archive, publish
from tests.support.server import CentralServer

MANIFEST = {"name": "big-demo", "version": "1.0.0", "run": ["python3", "app.py"]}


def daemon_release(version: str, size: int) -> bytes:
    """A daemon file the release endpoint accepts (a VERSION line), `size` bytes of varied text."""
    head = f'VERSION = "{version}"\n'.encode()
    rng = random.Random(size)
    body = b"".join(b"# %032x\n" % rng.getrandbits(128) for _ in range((size - len(head)) // 35))
    return head + body + b"#" * (size - len(head) - len(body) - 1) + b"\n"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_16_mib_upload_and_a_2_mib_file_download_arrive_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 loop: str):
    monkeypatch.setenv("DVIC_EVENT_LOOP", loop)
    blob = random.Random(7).randbytes(16 * 1024 * 1024)  # incompressible: the archive stays ~16 MiB
    data = archive(tmp_path / "big.tar.gz", MANIFEST, {"app.py": b"print('hi')\n", "blob.bin": blob}).read_bytes()
    daemon = daemon_release("70.0", MAX_DAEMON_BYTES)
    with CentralServer(tmp_path / "central") as server:
        status, body = publish(server, data)
        assert status == 201, body
        assert (body["sha256"], body["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
        request = urllib.request.Request(server.url + "/api/v1/release", data=daemon, method="POST",
                                         headers={"Authorization": f"Bearer {server.admin_token}"})
        with urllib.request.urlopen(request, context=server.ssl_context, timeout=60) as resp:
            assert resp.status == 201
        # A FileResponse: on asyncio's loop, loop.sendfile's fallback writes through this transport.
        with urllib.request.urlopen(server.url + "/api/v1/release/daemon", context=server.ssl_context,
                                    timeout=60) as resp:
            assert hashlib.sha256(resp.read()).digest() == hashlib.sha256(daemon).digest()
        assert "Traceback" not in server.log()


async def test_a_client_certificate_from_another_ca_is_refused_without_noise(tmp_path: Path):
    pki = make_pki(tmp_path)
    (tmp_path / "rogue.crt").write_text(pki.rogue_node_cert_pem)
    (tmp_path / "rogue.key").write_text(pki.rogue_node_key_pem)
    with CentralServer(tmp_path / "central") as server:
        rogue = ssl.create_default_context(cafile=str(server.ca_path))
        rogue.load_cert_chain(tmp_path / "rogue.crt", tmp_path / "rogue.key")
        for _ in range(3):
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.ClientError):
                    ws = await http.ws_connect(server.url + "/api/v1/node/ws", ssl=rogue)
                    await ws.receive(timeout=10)
        # The server serves on: an enrolled node gets in, an operator's request is answered.
        async with greeted(server.enroll("after-rogue")) as node:
            assert node.ws is not None and not node.ws.closed
        assert server.api("GET", "/api/v1/health", token="")[0] == 200
        log = server.log()
        assert "Traceback" not in log and " ERROR " not in log and "ssl" not in log.lower(), log
