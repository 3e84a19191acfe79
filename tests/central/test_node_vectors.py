"""Every valid node message of the shared vectors, sent to a real server by a node: taken, the
socket stays open (a declared type the server had no handler for would close it with 4003)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.nodes import greeted
from tests.support.server import CentralServer

VALID = json.loads((Path(__file__).parents[1] / "vectors" / "node_messages.json").read_text())["valid"]
LAST_SEQ = 10**6  # above every vector's seq: its ack answers everything sent before it


async def test_every_valid_vector_is_taken_and_the_socket_stays_open(tmp_path: Path) -> None:
    server = CentralServer(tmp_path / "central").start()
    try:
        bundle = server.enroll("pi-vectors")
        async with greeted(bundle) as node:
            for message in VALID:
                if message["type"] != "hello":
                    await node.send(message)
            await node.send({"type": "logs", "lines": [node.line("last", seq=LAST_SEQ)]})
            answers = []
            while not answers or answers[-1] != {"type": "ack", "seq": LAST_SEQ}:
                answers.append(await node.recv())
            assert all(a["type"] == "ack" for a in answers), answers
        assert "Traceback" not in server.log()
    finally:
        server.stop()
    assert {m["type"] for m in VALID} >= {"demo_install", "demo_status"}
