"""`dvic run`, `dvic commands` and `dvic command` against the real server and executor nodes."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from tests.support.cli import DVIC, DvicRunner, PtyProcess
from tests.support.server import CentralServer
from tests.tui_remote.executor_node import ExecutorNode


async def test_run_on_one_node_streams_output_and_returns_its_code(shared_server: CentralServer,
                                                                      dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-1")):
        ok = await dvic("run", "pi-1", "--", "sh", "-c", "echo hello; echo oops >&2")
        assert ok.code == 0, ok.err
        assert ok.out == "hello\n"
        assert "oops\n" in ok.err
        failed = await dvic("run", "pi-1", "--", "sh", "-c", "echo partial; exit 3")
        assert failed.code == 3
        assert failed.out == "partial\n"
        # --shell sends one string run by /bin/sh -c on the node.
        shell = await dvic("run", "--shell", "pi-1", "--", "echo $((6*7))", "|", "tr", "2", "X")
        assert shell.code == 0 and shell.out == "4X\n", shell


async def test_run_on_several_nodes_prefixes_lines_and_summarises(shared_server: CentralServer,
                                                                  dvic: DvicRunner):
    shared_server.enroll("lab-away", group="lab")
    async with ExecutorNode(shared_server.enroll("lab-a", group="lab")), \
            ExecutorNode(shared_server.enroll("lab-bb", group="lab")):
        res = await dvic("run", "--group", "lab", "--yes", "--", "sh", "-c",
                         "printf 'one\\ntwo'; echo err >&2; test $(hostname) = never")
        assert res.code == 255, res  # the offline node counts as not run
        out_lines = res.out.splitlines()
        for name in ("lab-a", "lab-bb"):
            name = name.ljust(len("lab-away"))  # prefixes are aligned on the longest target name
            assert f"{name} | one" in out_lines and f"{name} | two" in out_lines, res.out
            assert f"{name} ! err" in res.err
        summary = res.err[res.err.index("---"):]
        assert "lab-away" in summary and "offline" in summary
        assert "lab-a     exited 1" in summary and "lab-bb    exited 1" in summary, summary
        assert "2 exited, 1 offline" in summary
        # Without --yes and without a terminal to ask on, a group run is refused before anything is sent.
        refused = await dvic("run", "--group", "lab", "--", "true")
        assert refused.code == 2 and "--yes" in refused.err
        _, listing = shared_server.api("GET", "/api/v1/commands?node=lab-a")
        assert len(listing["commands"]) == 1


async def test_run_reports_timeout_and_unknown_programs(shared_server: CentralServer, dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-slow")):
        res = await dvic("run", "pi-slow", "--timeout", "1", "--", "sh", "-c", "echo started; sleep 30")
        assert res.code == 124, res
        assert res.out == "started\n" and "timeout" in res.err
        missing = await dvic("run", "pi-slow", "--", "/no/such/program")
        assert missing.code == 255 and "failed" in missing.err and "/no/such/program" in missing.err


async def test_offline_node_and_unknown_node_are_clear(shared_server: CentralServer, dvic: DvicRunner):
    shared_server.enroll("pi-off")
    res = await dvic("run", "pi-off", "--", "true")
    assert res.code == 255 and "offline" in res.err
    unknown = await dvic("run", "pi-nope", "--", "true")
    assert unknown.code == 1 and "pi-nope" in unknown.err and "no_such_node" in unknown.err
    usage = await dvic("run", "pi-off")
    assert usage.code == 2 and "no command" in usage.err


async def test_ctrl_c_cancels_on_the_node(shared_server: CentralServer, dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-c")) as node:
        proc = await dvic.start("run", "pi-c", "--", "sh", "-c", "echo ready; sleep 60")
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line == b"ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 130, err
        assert b"cancelling" in err and b"cancelled" in err
        assert any(m["type"] == "cancel" for m in node.received)
    _, listing = shared_server.api("GET", "/api/v1/commands?node=pi-c")
    _, stored = shared_server.api("GET", f"/api/v1/commands/{listing['commands'][0]['id']}")
    assert stored["runs"][0]["state"] == "cancelled"


async def test_commands_and_command_show_stored_output(shared_server: CentralServer, dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-s")):
        res = await dvic("run", "--json", "pi-s", "--", "sh", "-c", "echo stored-line; echo e >&2; exit 2")
    assert res.code == 2
    events = [json.loads(line) for line in res.out.splitlines()]
    assert events[0]["type"] == "command" and events[-1]["type"] == "summary" and events[-1]["status"] == 2
    data = "".join(e["data"] for e in events if e["type"] == "output" and e["stream"] == "stdout")
    assert data == "stored-line\n"
    cid = events[0]["id"]
    listing = await dvic("commands", "--node", "pi-s")
    assert cid in listing.out and "sh -c echo stored-line" in listing.out and "0/1" in listing.out
    as_json = json.loads((await dvic("commands", "--json")).out)
    assert as_json["commands"][0]["id"] == cid
    shown = await dvic("command", cid)
    assert shown.code == 2
    assert "pi-s: exited 2" in shown.out and "pi-s | stored-line" in shown.out and "pi-s ! e" in shown.out
    missing = await dvic("command", "0000")
    assert missing.code == 1 and "no_such_command" in missing.err


async def test_viewer_is_refused_with_a_clear_message(shared_server: CentralServer, dvic: DvicRunner):
    viewer = dvic.operator("vera", "viewer")
    async with ExecutorNode(shared_server.enroll("pi-v")):
        res = await dvic("run", "pi-v", "--", "true", token=viewer)
        assert res.code == 1 and "HTTP 403" in res.err
        started = time.monotonic()
        shell = await dvic("shell", "pi-v", token=viewer, stdin=b"exit\n")
        assert shell.code == 1 and "only operators and admins may open a shell" in shell.err, shell
        assert time.monotonic() - started < 20


async def _answer_group_prompt(dvic: DvicRunner, env: dict[str, str], answer: bytes) -> tuple[int, bytes]:
    """`dvic run --group g` on a terminal: waits for its question, answers it; (exit code, output)."""
    term = PtyProcess(dvic.argv(("run", "--group", "g", "--", "echo", "asked"), None), env)
    try:
        await term.expect(b"on 1 node(s) of group 'g'? [y/N]")
        term.type(answer + b"\r")
        return await term.wait(), term.output
    finally:
        term.close()


async def test_group_run_asks_first_on_a_terminal(shared_server: CentralServer, dvic: DvicRunner,
                                                  dvic_env: dict[str, str]):
    async with ExecutorNode(shared_server.enroll("g-1", group="g")):
        code, output = await _answer_group_prompt(dvic, dvic_env, b"n")
        assert code == 2 and b"nothing was sent" in output
        code, output = await _answer_group_prompt(dvic, dvic_env, b"y")
        assert code == 0 and b"asked" in output
    _, listing = shared_server.api("GET", "/api/v1/commands?node=g-1")
    assert len(listing["commands"]) == 1


async def test_node_lost_mid_run_and_truncated_output_are_reported(shared_server: CentralServer,
                                                                   dvic: DvicRunner):
    node = ExecutorNode(shared_server.enroll("pi-lost"))
    await node.__aenter__()
    try:
        proc = await dvic.start("run", "pi-lost", "--", "sh", "-c", "echo ready; sleep 60")
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 15) == b"ready\n"
        await node.close()
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 255 and b"lost (node pi-lost went offline)" in err, err
    finally:
        await node.close()
    async with ExecutorNode(shared_server.enroll("pi-big")):
        big = await dvic("run", "pi-big", "--", "sh", "-c", "head -c 1100000 /dev/zero | tr '\\0' a")
    assert big.code == 0
    assert len(big.out) == 1024 * 1024 and set(big.out) == {"a"}
    assert "[output truncated: 1.0M produced, 1 MiB kept]" in big.err, big.err


async def test_run_starts_without_the_heavy_imports(shared_server: CentralServer, dvic: DvicRunner,
                                                    dvic_env: dict[str, str]):
    """`dvic run` is typed at a prompt: its start-up is part of the round trip (docs/performance.md,
    "Remote control"), so it must not import what only the console and the other commands need."""
    heavy = {"asyncio", "aiohttp", "textual", "rich", "cryptography", "asyncssh", "installer", "typing",
             "dataclasses", "inspect", "shutil",
             # argparse (with gettext and locale: the usual line is read without it), pathlib, urllib
             # (with ipaddress), hashlib, contextlib: a few milliseconds each.
             "argparse", "gettext", "locale", "pathlib", "urllib", "ipaddress", "hashlib", "contextlib"}
    # As the `dvic` console script starts it (`-m tui` would import runpy, importlib.util, contextlib).
    launcher = "import sys; from tui.cli import main; sys.exit(main())"
    async with ExecutorNode(shared_server.enroll("pi-lean")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-X", "importtime", "-c", launcher,
            *dvic.argv(("run", "pi-lean", "--", "echo", "lean"), None)[len(DVIC):],
            env=dvic_env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and out == b"lean\n", err[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in err.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "tui" in imported  # the -X importtime output was read
    assert not heavy & imported, f"`dvic run` imports {sorted(heavy & imported)}: see tui/cmds/run.py"


async def test_a_second_ctrl_c_stops_waiting_with_status_130(shared_server: CentralServer, dvic: DvicRunner):
    async with ExecutorNode(shared_server.enroll("pi-stubborn")):
        # The command ignores SIGTERM, so the node's cancel needs its 5 s SIGKILL: dvic would wait.
        proc = await dvic.start("run", "pi-stubborn", "--", "sh", "-c", "trap '' TERM; echo ready; sleep 60")
        assert proc.stdout is not None and proc.stderr is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 15) == b"ready\n"
        proc.send_signal(signal.SIGINT)
        line = b""
        while b"cancelling" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 15)
            assert line, "dvic ended before saying it cancels"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 130, err
    assert b"stopped waiting; 1 run(s) still going: dvic command" in err and b"pi-stubborn  running" in err
