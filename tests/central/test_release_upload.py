"""POST /api/v1/release: up to the release limit (2 MiB, not the API's 256 KiB), clear 400s for bad files."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from central.release import MAX_DAEMON_BYTES
from tests.support.server import CentralServer


def upload(server: CentralServer, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + "/api/v1/release", data=data, method="POST",
                                 headers={"Authorization": f"Bearer {server.admin_token}"})
    try:
        with urllib.request.urlopen(req, context=server.ssl_context, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def upload_chunked(server: CentralServer, chunks: Iterator[bytes]) -> tuple[int, dict]:
    """An upload without Content-Length: the limit must hold while reading, not only on the header."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=server.ssl_context, timeout=60)
    try:
        conn.request("POST", "/api/v1/release", body=chunks, encode_chunked=True,
                     headers={"Authorization": f"Bearer {server.admin_token}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def daemon_of_size(version: str, size: int) -> bytes:
    head = f'VERSION = "{version}"\n'.encode()
    line = b"# padding to make the file as large as a real daemon could be\n"
    body = head + line * ((size - len(head)) // len(line))
    return body + b"#" * (size - len(body) - 1) + b"\n"


def test_a_release_larger_than_the_api_body_limit_is_accepted_up_to_2_mib(central_server: CentralServer):
    server = central_server
    status, body = upload(server, daemon_of_size("60.0", 300 * 1024))
    assert (status, body["version"], body["size"]) == (201, "60.0", 300 * 1024)
    status, body = upload(server, daemon_of_size("60.1", MAX_DAEMON_BYTES))
    assert (status, body["size"]) == (201, MAX_DAEMON_BYTES)
    with urllib.request.urlopen(server.url + "/api/v1/release/daemon", context=server.ssl_context) as resp:
        assert resp.read() == daemon_of_size("60.1", MAX_DAEMON_BYTES)

    status, body = upload(server, daemon_of_size("61", MAX_DAEMON_BYTES + 1))
    assert status == 413 and body["error"]["code"] == "too_large"
    assert str(MAX_DAEMON_BYTES) in body["error"]["message"]
    oversized = daemon_of_size("62", MAX_DAEMON_BYTES + 64 * 1024)
    status, body = upload_chunked(server, (oversized[i:i + 65536] for i in range(0, len(oversized), 65536)))
    assert status == 413 and body["error"]["code"] == "too_large"
    assert server.api("GET", "/api/v1/release")[1]["version"] == "60.1"  # nothing else was published

    # The larger limit is this route's only: a JSON route still refuses a 300 KiB body.
    status, body = server.api("POST", "/api/v1/commands", {"nodes": ["x"], "argv": ["true"], "pad": "x" * 300_000})
    assert status == 413 and body["error"]["code"] == "too_large"


def test_a_file_the_compiler_gives_up_on_is_a_clear_400(central_server: CentralServer):
    server = central_server
    pathological = {
        "MemoryError": b'VERSION = "70"\nx = ' + b"-" * 200_000 + b"1\n",
        "RecursionError": b'VERSION = "70"\nx = 1' + b"+1" * 300_000 + b"\n",
        "null byte": b'VERSION = "70"\n\0\n',
    }
    for what, data in pathological.items():
        status, body = upload(server, data)
        assert status == 400 and body["error"]["code"] == "bad_release", (what, status, body)
        assert "not valid Python" in body["error"]["message"], what
    assert upload(server, b'VERSION = "70"\nx = 1\n')[0] == 201  # the server is fine afterwards
    assert "Traceback" not in server.log()
