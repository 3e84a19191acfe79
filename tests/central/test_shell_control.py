"""Malformed shell control frames (security review L2): ignored, and never a leaked shell slot."""

from __future__ import annotations

import json

import aiohttp
import pytest

from central.shells import MAX_SESSIONS_PER_NODE, parse_resize
from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for

MALFORMED = [
    '{"type":"resize","cols":1e999,"rows":24}',  # int(inf): OverflowError
    "[" * 100_000,  # RecursionError in the decoder
    '{"type":"resize","cols":' + "9" * 5000 + ',"rows":24}',  # more digits than int() converts
    '{"type":"resize","cols":NaN,"rows":24}',
    '{"type":"resize","cols":[80],"rows":{"r":24}}',
    '{"type":"resize","cols":"80","rows":"24"}',
    '{"cols":80,"rows":24}',
]


@pytest.mark.parametrize(("text", "size"), [
    ('{"type":"resize","cols":120,"rows":40}', (120, 40)),
    ('{"type":"resize","cols":80.0,"rows":24}', (80, 24)),
    ('{"type":"resize","cols":0,"rows":24}', None),
    ('{"type":"resize","cols":80,"rows":1001}', None),
    ('{"type":"resize","cols":true,"rows":24}', None),
    *((text, None) for text in MALFORMED),
])
def test_parse_resize(text: str, size: tuple[int, int] | None) -> None:
    assert parse_resize(text) == size


async def test_malformed_resize_frames_leave_no_shell_open(central_server: CentralServer) -> None:
    """The review's l2.py, for every kind of malformed frame: each shell goes on after it, ends when
    the client leaves (shell_close to the node, an end in the history), and more shells than a node
    may hold at once can be opened one after the other."""
    server = central_server
    bundle = server.enroll("pi-sh")
    url = f"{server.url}/api/v1/nodes/pi-sh/shell"
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    assert len(MALFORMED) > MAX_SESSIONS_PER_NODE
    async with greeted(bundle) as node, aiohttp.ClientSession() as http:
        for text in MALFORMED:
            ws = await http.ws_connect(url, headers=auth, ssl=server.ssl_context)
            opened = await node.recv()
            assert opened["type"] == "shell_open", opened
            sid = opened["id"]
            await node.send({"type": "shell_opened", "id": sid, "pid": 7})
            assert json.loads((await ws.receive(timeout=5)).data) == {"type": "opened", "session": sid}
            await ws.send_str(text)
            # The bad frame was ignored: the session still relays a good resize.
            await ws.send_str(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
            assert await node.recv() == {"type": "shell_resize", "id": sid, "cols": 100, "rows": 30}
            await ws.close()
            assert await node.recv() == {"type": "shell_close", "id": sid}

    def ended() -> list[dict]:
        sessions = server.api("GET", "/api/v1/sessions?node=pi-sh")[1]["sessions"]
        return sessions if all(s["ended_at"] is not None for s in sessions) else []

    sessions = wait_for(ended, what="every session's end in the history")
    assert len(sessions) == len(MALFORMED)
    assert {s["message"] for s in sessions} == {"client closed the session"}
    assert "Traceback" not in server.log()
