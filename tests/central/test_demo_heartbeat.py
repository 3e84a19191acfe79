"""A demo's last_heartbeat (docs/protocol.md, the `demo` message): kept in memory, shown in the node detail."""

from __future__ import annotations

import time

from tests.support.nodes import greeted
from tests.support.server import CentralServer
from tests.support.wait import wait_for

TOKEN = "0123456789abcdef"


def demo(state: str, now: float, last_heartbeat: float | None = None) -> dict:
    msg = {"type": "demo", "token": TOKEN, "name": "robot-arm", "pid": 4242, "state": state, "started_at": now,
           "exited_at": None, "header": {"exe": "/usr/bin/robot"}}
    if last_heartbeat is not None:
        msg["last_heartbeat"] = last_heartbeat
    return msg


def shown(server: CentralServer) -> dict:
    (row,) = server.node("pi-beat")["demos_list"]
    return row


def table_row(server: CentralServer) -> tuple:
    return server.query("SELECT state, updated_at FROM demos WHERE token = ?", (TOKEN,))[0]


async def test_last_heartbeat_is_shown_kept_and_costs_no_table_write(central_server: CentralServer) -> None:
    server = central_server
    bundle = server.enroll("pi-beat")
    now = time.time()
    async with greeted(bundle) as node:
        await node.send(demo("started", now))
        wait_for(lambda: server.node("pi-beat")["demos"]["total"] == 1, 10, "the demo")
        assert shown(server)["last_heartbeat"] is None
        await node.send(demo("alive", now, now + 1.5))
        wait_for(lambda: shown(server)["last_heartbeat"] == now + 1.5, 10, "the first heartbeat")
        row = wait_for(lambda: (r := table_row(server)) and r[0] == "alive" and r, 10, "the state change stored")
        await node.send(demo("alive", now, now + 3.5))  # only the heartbeat moved
        wait_for(lambda: shown(server)["last_heartbeat"] == now + 3.5, 10, "the next heartbeat")
        assert table_row(server) == row  # not written: the table does not keep heartbeats
        await node.send(demo("alive", now))  # a message without it (an older daemon) keeps the value
        await node.send(demo("exited", now, None) | {"exited_at": now + 5})
        wait_for(lambda: shown(server)["state"] == "exited", 10, "the exit")
        assert shown(server)["last_heartbeat"] == now + 3.5
        assert table_row(server)[0] == "exited"
        await node.send(demo("alive", now, "soon"))  # not a number: refused like any bad field
        assert await node.closed() == 4001
