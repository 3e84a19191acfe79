"""An operator on one replica drives a node connected to another (issue 18 step 5), end to end: two
real `dvic-central` processes (r1, r2) on one real PostgreSQL and one data dir
(tests/support/replicas.py), the real daemon connected to r1, the operator's API calls, websockets
and `dvic` commands on r2; and either replica killed -9 while a shell runs through the other."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.cli import DvicRunner, PtyProcess, clean_env
from tests.support.daemon import DaemonProcess, enrolled_daemon, wait_connected
from tests.support.operator_ws import echo_server, echoed, finished, read_until, session, ws_text
from tests.support.postgres import PostgresUnavailable, shared_cluster
from tests.support.procs import live_members, stat_fields
from tests.support.replicas import Replicas, balanced, behind, toward_fields
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for, wait_for


def database() -> str:
    try:
        return shared_cluster().fresh_database()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def connected_on(server: CentralServer, node: str) -> bool:
    """`server` sees the node connected (the daemon dials r1 only: on r2 that is r1's session)."""
    return bool(server.node(node).get("connected"))


@dataclass
class TwoReplicas:
    """r1 and r2, allowing tunnels to an echo port, and a real daemon connected to r1 (seen from r2)."""
    r1: CentralServer
    r2: CentralServer
    name: str
    daemon: DaemonProcess
    echo_port: int


@contextlib.contextmanager
def node_on_r1(tmp: Path, name: str) -> Iterator[TwoReplicas]:
    echo = echo_server()
    try:
        port = echo.server_address[1]
        with Replicas(tmp / "data", database(), count=2, interval=1, offline_after=5,
                      extra_args=("--tunnel-port", str(port))) as (r1, r2):
            node_id, daemon = enrolled_daemon(r1, tmp / name, name=name, bundle_overrides=toward_fields(r1))
            with daemon:
                wait_connected(r1, node_id, daemon)
                wait_for(lambda: connected_on(r2, name), 30, "r2 to see the node on r1", interval=0.1)
                yield TwoReplicas(r1, r2, name, daemon, port)
    finally:
        echo.shutdown()
        echo.server_close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoReplicas]:
    with node_on_r1(tmp_path_factory.mktemp("routing-e2e"), "routed") as p:
        yield p


@pytest.fixture
def fresh_pair(tmp_path: Path) -> Iterator[TwoReplicas]:
    """For the tests that kill a replica."""
    with node_on_r1(tmp_path, "routed-kill") as p:
        yield p


def run_on(server: CentralServer, node: str, **command: Any) -> dict[str, Any]:
    status, cmd = server.api("POST", "/api/v1/commands", {"nodes": [node], "timeout": 20, **command})
    assert status == 201, cmd
    run: dict[str, Any] = finished(server, cmd["id"])["runs"][0]
    return run


def test_a_command_on_r2_runs_on_the_node_of_r1_with_its_output_and_exit_code(pair: TwoReplicas) -> None:
    run = run_on(pair.r2, pair.name, argv=["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (run["state"], run["code"]) == ("exited", 3), run
    assert {(o["stream"], o["data"]) for o in run["output"]} == {("stdout", "out\n"), ("stderr", "err\n")}


def test_a_command_on_r2_is_cancelled_on_the_node(pair: TwoReplicas) -> None:
    r2 = pair.r2
    status, cmd = r2.api("POST", "/api/v1/commands", {"nodes": [pair.name], "timeout": 60, "shell": "sleep 30"})
    assert status == 201, cmd
    wait_for(lambda: r2.api("GET", f"/api/v1/commands/{cmd['id']}")[1]["runs"][0]["state"] == "running",
             15, "the command running")
    assert r2.api("POST", f"/api/v1/commands/{cmd['id']}/cancel")[0] == 200
    assert finished(r2, cmd["id"])["runs"][0]["state"] == "cancelled"


async def test_dvic_run_on_r2(pair: TwoReplicas, tmp_path: Path) -> None:
    dvic = DvicRunner(pair.r2, clean_env(tmp_path))
    out = await dvic("run", pair.name, "--", "sh", "-c", "echo from-the-node; exit 7")
    assert "from-the-node" in out.out and out.code == 7, out


async def test_a_shell_on_r2_round_trips_through_r1(pair: TwoReplicas) -> None:
    r2 = pair.r2
    async with session(r2) as http, http.ws_connect(
            f"{r2.url}/api/v1/nodes/{pair.name}/shell", params={"cols": "90", "rows": "25"}) as ws:
        opened = await ws_text(ws)
        assert opened["type"] == "opened", opened
        for key in b"unset HISTFILE; echo $((6*7)); stty size\n":  # typed: one message a keystroke
            await ws.send_bytes(bytes([key]))
        assert b"25 90" in await read_until(ws, b"42\r\n25 90")
        await ws.send_str(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        await ws.send_bytes(b"stty size; exit 5\n")
        assert b"40 120" in await read_until(ws, b"40 120")
        end = await ws_text(ws)
        assert (end["type"], end["code"]) == ("exit", 5), end
    # The record and its recording are on the operator's replica's side (shared data dir, one database).
    _, body = r2.api("GET", f"/api/v1/sessions?node={pair.name}")
    sid = body["sessions"][0]["id"]
    status, _ = r2.api("GET", f"/api/v1/sessions/{sid}/recording")
    assert status == 200


async def test_a_tunnel_on_r2_carries_bytes_both_ways(pair: TwoReplicas) -> None:
    r2 = pair.r2
    async with session(r2) as http, http.ws_connect(
            f"{r2.url}/api/v1/nodes/{pair.name}/tunnel",
            params={"host": "127.0.0.1", "port": str(pair.echo_port)}) as ws:
        assert (await ws_text(ws))["type"] == "opened"
        payload = bytes(range(256)) * 800  # 200 KiB: several NOTIFYs of base64 each way
        assert await echoed(ws, payload) == payload
        await ws.send_bytes(b"quit")
        end = await ws_text(ws)
        assert end["type"] == "closed" and f"127.0.0.1:{pair.echo_port}" in end["message"], end


def test_an_action_on_r2_gets_the_nodes_answer(pair: TwoReplicas) -> None:
    r2 = pair.r2
    status, action = r2.api("POST", f"/api/v1/nodes/{pair.name}/actions", {"action": "restart_demo", "demo": "ghost"})
    assert status == 201, action

    def final() -> dict[str, Any] | None:
        got = r2.api("GET", f"/api/v1/actions/{action['id']}")[1]
        return got if got["state"] in ("done", "failed") else None

    got: dict[str, Any] = wait_for(final, 20, "the action's final state", interval=0.1)
    assert got["state"] == "failed" and "'ghost' is not configured on this node" in got["message"], got


def test_a_reboot_asked_on_r2_is_done_when_the_node_comes_back_on_r1(pair: TwoReplicas, tmp_path: Path) -> None:
    """Its hello reaches r1; r2, which tracks the action, learns the new session from shared presence."""
    r1, r2 = pair.r1, pair.r2
    node_id, daemon = enrolled_daemon(r1, tmp_path / "rebooting", name="routed-reboot",
                                      bundle_overrides=toward_fields(r1), env={"DVIC_NODE_TEST_BOOT_TIME": "1000.0"},
                                      extra=("--reboot-command", "kill -TERM $PPID"))  # the daemon stops itself
    with daemon:
        wait_connected(r1, node_id, daemon)
        wait_for(lambda: connected_on(r2, "routed-reboot"), 30, "r2 to see the node")
        status, action = r2.api("POST", "/api/v1/nodes/routed-reboot/actions", {"action": "reboot"})
        assert status == 201, action

        def state() -> str:
            return str(r2.api("GET", f"/api/v1/actions/{action['id']}")[1]["state"])

        wait_for(lambda: state() == "in_progress", 20, "the reboot in progress")
        assert daemon.proc is not None
        daemon.proc.wait(timeout=30)
        daemon.proc = None
        daemon.env["DVIC_NODE_TEST_BOOT_TIME"] = "2000.0"  # booted again
        daemon.start()
        wait_for(lambda: state() == "done", 30, "the reboot done on r2")
    final = r2.api("GET", f"/api/v1/actions/{action['id']}")[1]
    assert "came back" in final["message"], final


async def test_bad_input_unknown_node_and_offline_everywhere(pair: TwoReplicas) -> None:
    r2 = pair.r2
    status, body = r2.api("POST", "/api/v1/commands", {"nodes": ["no-such-node"], "argv": ["true"]})
    assert (status, body["error"]["code"]) == (404, "no_such_node"), body
    pair.r1.enroll("never-connected")
    wait_for(lambda: r2.api("GET", "/api/v1/nodes/never-connected")[0] == 200, 15, "r2 to know the new node")
    run = run_on(r2, "never-connected", argv=["true"])
    assert (run["state"], run["message"]) == ("offline", "node never-connected is new"), run
    async with session(r2) as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{r2.url}/api/v1/nodes/never-connected/shell")
    assert refused.value.status == 409


def shell_pid_of(output: bytes) -> int:
    match = re.search(rb"[\r\n]pid=(\d+)\r\n", output)  # not the echoed input (pid=$$)
    assert match, output[-500:]
    return int(match.group(1))


def daemon_children(daemon: DaemonProcess) -> list[int]:
    assert daemon.proc is not None
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == daemon.proc.pid:
                out.append(int(entry.name))
    return out


async def open_shell_and_pid(http: aiohttp.ClientSession, server: CentralServer,
                             node: str) -> tuple[aiohttp.ClientWebSocketResponse, int]:
    ws = await http.ws_connect(f"{server.url}/api/v1/nodes/{node}/shell")
    opened = await ws_text(ws)
    assert opened["type"] == "opened", opened
    await ws.send_bytes(b'unset HISTFILE; echo "pid=$$"\n')
    seen = b""
    while not re.search(rb"pid=\d+\r\n", seen):  # the echoed input reads pid=$$
        seen += await read_until(ws, b"\n", 15)
    return ws, shell_pid_of(seen)


async def test_r1_killed_while_a_shell_runs_through_it_ends_the_session_on_r2(
        fresh_pair: TwoReplicas, tmp_path: Path) -> None:
    p = fresh_pair
    env = clean_env(tmp_path)
    term = PtyProcess(DvicRunner(p.r2, env).argv(("shell", p.name), None), env)  # the operator's terminal, on r2
    try:
        term.type(b'unset HISTFILE; echo "pid=$$"\r')
        def said_pid() -> bool:
            term.read_some()
            return re.search(rb"[\r\n]pid=\d+\r\n", term.output) is not None

        await async_wait_for(said_pid, 30, "the node's shell to say its pid")
        shell_pid = shell_pid_of(term.output)
        assert shell_pid in daemon_children(p.daemon)
        started = time.monotonic()
        p.r1.kill()  # -9: no goodbye on the bus
        await term.expect(b"the replica relaying this session (r1) stopped", timeout=30)
        took = time.monotonic() - started
        assert await term.wait() != 0
    finally:
        term.close()
    assert took < 15, took
    # The node's side: its connection to r1 is gone, so the daemon hung the shell up.
    await async_wait_for(lambda: not live_members(shell_pid, "session"), 15, "the node's shell to end")
    assert p.daemon.running() and daemon_children(p.daemon) == []
    # r1 gone is a clear error on r2, not a hang, whether or not r2 still shows the node connected.
    status, cmd = p.r2.api("POST", "/api/v1/commands", {"nodes": [p.name], "argv": ["true"]})
    assert status == 201, cmd
    run = finished(p.r2, cmd["id"])["runs"][0]
    # Shared presence keeps the node online until it reconnects (no false offline): no session
    # anywhere; or, if r2 has not yet heard that r1 is gone, r1 does not answer; or, the daemon
    # dialling r1 only, offline once offline_after (5 s here) passed since r1 last heard it.
    assert (run["state"], run["message"]) in (
        ("offline", f"node {p.name} is online but has no connection to any server right now: try again shortly"),
        ("offline", f"node {p.name} is offline"),
        ("lost", f"replica r1, which holds node {p.name}, did not answer within 2 s (stopped or too busy): "
                 "try again")), run


async def test_r2_killed_while_its_shell_runs_through_r1_closes_the_shell_on_the_node(
        fresh_pair: TwoReplicas) -> None:
    p = fresh_pair
    async with session(p.r2) as http:
        ws, shell_pid = await open_shell_and_pid(http, p.r2, p.name)
        assert shell_pid in daemon_children(p.daemon)
        p.r2.kill()
        with contextlib.suppress(Exception):
            await ws.close()
    await async_wait_for(lambda: not live_members(shell_pid, "session"), 20,
                         "r1 to close the shell of the replica that stopped")
    assert p.daemon.running() and connected_on(p.r1, p.name) and daemon_children(p.daemon) == []


async def test_behind_a_balancer_the_operator_on_r2_reaches_the_node_again_once_it_moved_there(
        tmp_path: Path) -> None:
    """The daemon dials the balancer (r1 first); r1 dies under the operator's shell on r2: the
    shell ends with the message, the node reconnects to r2, and a new shell there is local."""
    with Replicas(tmp_path / "data", database(), count=2, interval=1, offline_after=5) as (r1, r2), \
            balanced([r1, r2]) as balancer:
        node_id, daemon = enrolled_daemon(r1, tmp_path / "lb-node", name="lb-node", bundle_overrides=behind(balancer))
        with daemon:
            wait_connected(r1, node_id, daemon)
            wait_for(lambda: connected_on(r2, "lb-node"), 30, "r2 to see the node")
            async with session(r2) as http:
                ws, shell_pid = await open_shell_and_pid(http, r2, "lb-node")
                r1.kill()
                end = await ws_text(ws, timeout=30)
                await ws.close()
                assert end["type"] == "exit" and end["message"] == "the replica relaying this session (r1) stopped", end
                await async_wait_for(lambda: not live_members(shell_pid, "session"), 15, "the old shell to end")
                wait_connected(r2, node_id, daemon)  # through the balancer, to the replica left
                ws, _ = await open_shell_and_pid(http, r2, "lb-node")
                await ws.send_bytes(b"echo $((6*7)); exit 3\n")
                await read_until(ws, b"42")
                end = await ws_text(ws)
                assert (end["type"], end["code"]) == ("exit", 3), end
                await ws.close()


async def test_the_per_node_limits_count_the_sessions_of_every_replica(pair: TwoReplicas) -> None:
    """Every session to a node goes through the replica holding it (r1), which counts them all: two
    shells opened on r1 and two on r2 fill the node's four, whichever replica asks for a fifth; the
    same for tunnels (eight) and running commands (eight). (The daemon has limits of its own, 4
    shells, 16 tunnels, 8 commands, with messages of its own: the server's come first.)"""
    r1, r2, name = pair.r1, pair.r2, pair.name
    tunnel = f"/api/v1/nodes/{name}/tunnel?host=127.0.0.1&port={pair.echo_port}"
    async with contextlib.AsyncExitStack() as stack:
        for server in (r1,) * 4 + (r2,) * 4:
            http = await stack.enter_async_context(session(server))
            ws = await stack.enter_async_context(http.ws_connect(server.url + tunnel))
            assert (await ws_text(ws))["type"] == "opened"
        async with session(r2) as http, http.ws_connect(r2.url + tunnel) as ws:
            refused = await ws_text(ws)
            assert f"node '{name}' already has 8 tunnels open" in refused.get("message", ""), refused
        async with session(r1) as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(r1.url + tunnel)
            assert caught.value.status == 429

    async with contextlib.AsyncExitStack() as stack:
        for server in (r1, r1, r2, r2):
            http = await stack.enter_async_context(session(server))
            ws = await stack.enter_async_context(http.ws_connect(f"{server.url}/api/v1/nodes/{name}/shell"))
            assert (await ws_text(ws))["type"] == "opened"
        async with session(r2) as http, http.ws_connect(f"{r2.url}/api/v1/nodes/{name}/shell") as ws:
            refused = await ws_text(ws)
            assert f"node '{name}' already has 4 shells open" in refused.get("message", ""), refused
        async with session(r1) as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(f"{r1.url}/api/v1/nodes/{name}/shell")
            assert caught.value.status == 429

    started = []
    for server in (r1,) * 4 + (r2,) * 4:
        status, cmd = server.api("POST", "/api/v1/commands", {"nodes": [name], "timeout": 60, "shell": "sleep 30"})
        assert status == 201, cmd
        started.append((server, cmd["id"]))
    try:
        for server, cid in started:
            wait_for(lambda s=server, c=cid: s.api("GET", f"/api/v1/commands/{c}")[1]["runs"][0]["state"] == "running",
                     20, "the command running")
        for server in (r2, r1):
            status, cmd = server.api("POST", "/api/v1/commands", {"nodes": [name], "timeout": 20, "shell": "true"})
            run = finished(server, cmd["id"])["runs"][0]
            assert (run["state"], run["message"]) == ("refused", f"node {name} already runs 8 commands"), run
    finally:
        for server, cid in started:
            server.api("POST", f"/api/v1/commands/{cid}/cancel")
        for server, cid in started:
            finished(server, cid)
