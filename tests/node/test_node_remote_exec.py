"""Remote commands on the real daemon: streaming, exit status, timeout, cancel, limits, at most once."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from remote_support import ScriptedNode, ScriptedServer, scripted_node

from tests.support.daemon import PY38


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ScriptedNode]:
    async with scripted_node(tmp_path) as node:
        yield node


def rid() -> str:
    return str(uuid.uuid4())


async def run(srv: ScriptedServer, timeout: float = 30, **request: object) -> tuple[str, dict]:
    r = rid()
    await srv.send({"type": "exec", "id": r, "argv": None, "shell": None, "timeout": timeout,
                    "cap": 1048576, **request})
    return r, await srv.reply(r, "exec_exit", timeout=timeout + 15)


async def test_argv_and_shell_stream_output_and_exit_codes(node: ScriptedNode) -> None:
    srv, _ = node
    r, exit_ = await run(srv, argv=["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert exit_["reason"] == "exited" and exit_["code"] == 3 and exit_["signal"] is None
    assert srv.output(r, "stdout") == "out\n" and srv.output(r, "stderr") == "err\n"
    started = srv.of(r, "exec_started")[0]
    assert started["pid"] > 1 and srv.replies.index(started) < srv.replies.index(exit_)

    # a shell string, invalid UTF-8 replaced, not a single argument split
    r, exit_ = await run(srv, shell="printf 'caf\\303\\251 \\377 ok'; printf '%s' \"$0\"")
    assert exit_["code"] == 0
    assert srv.output(r) == "café \ufffd ok/bin/sh"

    # 200 KiB of output: in order, in frames of at most 48 KiB of payload
    r, exit_ = await run(srv, argv=["python3", "-c", "import sys; sys.stdout.write(''.join("
                                    "'%07d\\n' % i for i in range(25600)))"])
    chunks = [m["data"] for m in srv.of(r, "exec_output")]
    assert exit_["code"] == 0 and not exit_["truncated"]
    assert "".join(chunks) == "".join(f"{i:07d}\n" for i in range(25600))
    assert max(len(c.encode()) for c in chunks) <= 48 * 1024

    r, exit_ = await run(srv, argv=["/no/such/program"])
    assert exit_["reason"] == "failed" and "cannot run /no/such/program" in exit_["message"]


async def test_output_cap_says_truncated_and_the_command_still_finishes(
        node: ScriptedNode) -> None:
    srv, _ = node
    r, exit_ = await run(srv, shell="head -c 300000 /dev/zero | tr '\\0' x; echo; echo done >&2", cap=1000)
    assert exit_["code"] == 0 and exit_["truncated"] is True and "truncated at 1000 bytes" in exit_["message"]
    assert len(srv.output(r).encode()) == 1000


async def test_timeout_terms_then_kills_the_process_group(node: ScriptedNode) -> None:
    srv, _ = node
    # the group includes a child: both go
    r, exit_ = await run(srv, timeout=0.5, shell="sleep 60 & echo $!; wait")
    assert exit_["reason"] == "timeout" and exit_["signal"] == 15 and exit_["code"] is None
    child = int(srv.output(r).split()[0])
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


@pytest.mark.slow
async def test_a_command_ignoring_sigterm_is_killed_5_s_later(node: ScriptedNode) -> None:
    srv, _ = node
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    _, exit_ = await run(srv, timeout=0.5, shell="trap '' TERM; echo ready; sleep 30 & wait; sleep 30")
    assert exit_["reason"] == "timeout" and exit_["signal"] == 9
    assert 5.0 <= loop.time() - t0 < 15


async def test_cancel_stops_a_running_command(node: ScriptedNode) -> None:
    srv, _ = node
    r = rid()
    await srv.send({"type": "exec", "id": r, "argv": ["sleep", "60"], "shell": None, "timeout": 60, "cap": 1000})
    await srv.reply(r, "exec_started")
    await srv.send({"type": "cancel", "id": r})
    exit_ = await srv.reply(r, "exec_exit")
    assert exit_["reason"] == "cancelled" and exit_["signal"] == 15
    await srv.send({"type": "cancel", "id": rid()})  # unknown id: nothing happens, nothing breaks
    _, exit_ = await run(srv, argv=["true"])
    assert exit_["code"] == 0


async def test_a_cancel_arriving_with_its_exec_stops_the_command(node: ScriptedNode, tmp_path: Path) -> None:
    """The cancel is read before the command's process exists (both in one TCP segment): it is not
    forgotten (the command used to run to its end): the command never starts."""
    srv, daemon = node
    marker = tmp_path / "ran"
    r = rid()
    await srv.send_together([
        {"type": "exec", "id": r, "argv": None, "shell": f"touch {marker}; sleep 30", "timeout": 60, "cap": 100},
        {"type": "cancel", "id": r}])
    exit_ = await srv.reply(r, "exec_exit", timeout=10)
    assert (exit_["reason"], exit_["message"]) == ("cancelled", "cancelled before it started"), exit_
    assert not srv.of(r, "exec_started") and not marker.exists()
    await srv.send({"type": "exec", "id": r, "argv": ["true"], "shell": None, "timeout": 10, "cap": 100})
    await srv.wait(lambda: len(srv.of(r, "exec_exit")) == 2, what="the second answer")
    assert srv.of(r, "exec_exit")[1]["reason"] == "duplicate"  # at most once: its id was recorded
    assert "cancelled before it started" in daemon.log()


async def test_a_background_child_holding_the_pipes_does_not_hold_up_the_end(node: ScriptedNode,
                                                                              tmp_path: Path) -> None:
    """The command's end is its process's exit; its pipes get 2 s more (newer Pythons' Process.wait()
    waits for the pipes too: the run lasted as long as the background child). The command exits when
    the test writes to its FIFO, after exec_started: the daemon is waiting for it by then."""
    srv, _ = node
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    r = rid()
    await srv.send({"type": "exec", "id": r, "argv": None, "shell": f"sleep 30 & echo $!; read line < {fifo}",
                    "timeout": 60, "cap": 100})
    await srv.reply(r, "exec_started")
    child = int(await srv.wait(lambda: srv.output(r).strip()))
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.to_thread(fifo.write_text, "go\n")
        exit_ = await srv.reply(r, "exec_exit", timeout=15)
        assert (exit_["reason"], exit_["code"]) == ("exited", 0) and loop.time() - t0 < 10, exit_
        assert Path(f"/proc/{child}").exists()  # left running, as documented
    finally:
        os.kill(child, signal.SIGKILL)


async def test_at_most_once_across_reconnects_and_restarts(node: ScriptedNode,
                                                           tmp_path: Path) -> None:
    srv, daemon = node
    marker = tmp_path / "ran"
    request = {"type": "exec", "id": rid(), "argv": None, "shell": f"echo x >> {marker}", "timeout": 10, "cap": 100}
    await srv.send(request)
    assert (await srv.reply(request["id"], "exec_exit"))["code"] == 0
    await srv.send(request)  # replayed on the same connection
    await srv.wait(lambda: len(srv.of(request["id"], "exec_exit")) == 2, what="the second answer")
    assert srv.of(request["id"], "exec_exit")[1]["reason"] == "duplicate"
    await asyncio.to_thread(daemon.stop)
    daemon.start()
    await srv.connected(2)
    await srv.send(request)  # replayed after a restart
    await srv.wait(lambda: len(srv.of(request["id"], "exec_exit")) == 3, what="the third answer")
    assert srv.of(request["id"], "exec_exit")[2]["reason"] == "duplicate"
    assert marker.read_text() == "x\n"
    assert request["id"] in (tmp_path / "state" / "exec_ids").read_text().split()


async def test_output_waits_for_the_next_connection(node: ScriptedNode) -> None:
    srv, _ = node
    r = rid()
    await srv.send({"type": "exec", "id": r, "argv": None, "shell": "sleep 1; echo after", "timeout": 30, "cap": 100})
    await srv.reply(r, "exec_started")
    await srv.drop()
    await srv.connected(2)
    exit_ = await srv.reply(r, "exec_exit")
    assert exit_["code"] == 0 and srv.output(r) == "after\n"


async def test_at_most_8_commands_at_once(node: ScriptedNode) -> None:
    srv, _ = node
    ids = [rid() for _ in range(9)]
    for r in ids:
        await srv.send({"type": "exec", "id": r, "argv": ["sleep", "30"], "shell": None, "timeout": 30, "cap": 10})
    refused = await srv.reply(ids[8], "exec_exit")
    assert refused["reason"] == "refused" and "8 commands" in refused["message"]
    for r in ids[:8]:
        await srv.reply(r, "exec_started")
        await srv.send({"type": "cancel", "id": r})
    for r in ids[:8]:
        assert (await srv.reply(r, "exec_exit"))["reason"] == "cancelled"


async def test_a_chatty_command_does_not_block_other_requests(node: ScriptedNode) -> None:
    srv, _ = node
    chatty = rid()
    await srv.send({"type": "exec", "id": chatty, "argv": ["yes", "a long line of output from a chatty command"],
                    "shell": None, "timeout": 60, "cap": 1 << 40})
    await srv.reply(chatty, "exec_started")
    await srv.wait(lambda: len(srv.of(chatty, "exec_output")) > 20, what="chatty output")
    _, exit_ = await run(srv, argv=["echo", "still answering"])
    assert exit_["code"] == 0
    await srv.send({"type": "cancel", "id": chatty})
    assert (await srv.reply(chatty, "exec_exit"))["reason"] == "cancelled"


async def test_bad_requests_get_a_specific_answer_and_lose_nothing(
        node: ScriptedNode) -> None:
    srv, daemon = node
    cases = {
        "exactly one of argv and shell": {"argv": ["true"], "shell": "true"},
        "argv: expected a non-empty list of strings": {"argv": ["ls", 3]},
        "shell: expected a non-empty command string": {"shell": ""},
        "timeout: expected seconds": {"argv": ["true"], "timeout": -1},
        "cap: expected an integer": {"argv": ["true"], "cap": "lots"},
    }
    for expected, fields in cases.items():
        r = rid()
        await srv.send({"type": "exec", "id": r, "timeout": 10, **fields})
        exit_ = await srv.reply(r, "exec_exit")
        assert exit_["reason"] == "failed" and expected in exit_["message"], (expected, exit_)
    await srv.send({"type": "exec", "id": "not a valid id!", "argv": ["true"]})  # no id to answer: logged
    await srv.send({"type": "frobnicate", "id": "x1"})
    assert (await srv.reply("x1", "unsupported"))["what"] == "frobnicate"
    _, exit_ = await run(srv, argv=["true"])
    assert exit_["code"] == 0 and daemon.running()
    assert "bad exec request" in daemon.log()


@pytest.mark.skipif(not PY38.exists(), reason="python3.8 not installed")
async def test_remote_control_on_the_oldest_supported_python(tmp_path: Path) -> None:
    async with scripted_node(tmp_path, python=PY38) as (srv, _):
        r, exit_ = await run(srv, shell="echo $((6*7)); sleep 0.1; echo err >&2; exit 2")
        assert (exit_["code"], srv.output(r, "stdout"), srv.output(r, "stderr")) == (2, "42\n", "err\n")
        _, exit_ = await run(srv, timeout=0.5, argv=["sleep", "30"])
        assert exit_["reason"] == "timeout"
        shell = rid()
        await srv.send({"type": "shell_open", "id": shell, "cols": 77, "rows": 21, "term": "xterm"})
        await srv.reply(shell, "shell_opened")
        await srv.shell_input(shell, "unset HISTFILE; stty size; exit 4\n")
        assert (await srv.reply(shell, "shell_exit"))["code"] == 4
        assert "21 77" in srv.shell_text(shell)
        await srv.send({"type": "tunnel_open", "id": "t1", "host": "127.0.0.1", "port": 1})
        assert "refused" in (await srv.reply("t1", "tunnel_closed"))["message"]


async def test_no_command_runs_when_its_id_cannot_be_recorded(tmp_path: Path) -> None:
    (tmp_path / "state" / "exec_ids").mkdir(parents=True)  # where the journal file should be
    (tmp_path / "state").chmod(0o700)
    marker = tmp_path / "ran"
    async with scripted_node(tmp_path) as (srv, daemon):
        _, exit_ = await run(srv, shell=f"touch {marker}")
        assert exit_["reason"] == "failed" and "command id journal" in exit_["message"], exit_
        assert not marker.exists() and daemon.running()
