"""dvic_log end to end: real demos -> real node daemon -> real central server -> operator API.

The node daemon and the server are started as in production (the daemon as its systemd unit starts
it, with its default timings), so these tests pin the file contract between dvic_log and the daemon.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dvic_log_testkit import LIB_DIR, headed_files, live_files, read_file

from tests.support.daemon import online_daemon
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def node(central_server, tmp_path: Path, log_dir: Path):
    """An enrolled node whose daemon watches log_dir; yields (server, node id)."""
    with online_daemon(central_server, tmp_path, log_dir, name="dvic-log-e2e", timings=("-v",)) as (node_id, _):
        yield central_server, node_id


def demo_lines(server, node_id: str, unit: str) -> list[dict[str, Any]]:
    """Every stored demo line of `unit`, oldest first."""
    return [line for line in server.logs(node=node_id, source="demo") if line["unit"] == unit]


def demo_state(server, node_id: str, token: str) -> dict[str, Any] | None:
    return server.demo(node_id, token)


def shown_exited(server, node_id: str, token: str) -> dict[str, Any]:
    """The demo's state once the server shows it exited."""

    def exited() -> dict[str, Any] | None:
        state = demo_state(server, node_id, token)
        return state if state and state["state"] == "exited" else None

    return wait_for(exited, 30, "the demo to show as exited", interval=0.2)


def env_for_demos() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(LIB_DIR))


def test_a_wrapped_program_is_followed_alive_and_then_exited(node, log_dir: Path):
    server, node_id = node
    child = "import sys; print('hello from stdout'); print('trouble', file=sys.stderr); sys.stdin.readline(); print('bye')"
    wrapper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dvic_log",
            "run",
            "-q",
            "--name",
            "wrapped",
            "--",
            sys.executable,
            "-c",
            child,
        ],
        env=env_for_demos(),
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        (path,) = wait_for(lambda: headed_files(log_dir), 20, "the wrapper's log file and its header")
        header, _ = read_file(path)
        assert header["pid"] != wrapper.pid  # the child is the demo
        token = header["token"]

        def shipped(*msgs: str):
            got = [(line["level"], line["msg"]) for line in demo_lines(server, node_id, "wrapped")]
            return got if all(any(m == msg for _, m in got) for msg in msgs) else None

        got = wait_for(
            lambda: shipped("hello from stdout", "trouble"), 30, "the first lines at the server", interval=0.2
        )
        assert ("INFO", "hello from stdout") in got and ("ERROR", "trouble") in got
        alive = wait_for(
            lambda: demo_state(server, node_id, token), 30, "the demo to be announced", interval=0.2
        )
        assert alive["pid"] == header["pid"] and alive["state"] in ("started", "alive")
        assert alive["name"] == "wrapped"

        assert wrapper.stdin is not None
        wrapper.stdin.write(b"go\n")
        wrapper.stdin.close()
        assert wrapper.wait(timeout=30) == 0
        got = wait_for(
            lambda: shipped("bye", f"{sys.executable} exited with status 0"),
            30,
            "the last lines",
            interval=0.2,
        )
        assert [m for _, m in got][-2:] == ["bye", f"{sys.executable} exited with status 0"]

        assert shown_exited(server, node_id, token)["exited_at"] is not None
    finally:
        wrapper.kill()
        wrapper.wait()


def test_every_line_of_a_rotating_demo_arrives_once_and_in_order(node, log_dir: Path):
    server, node_id = node
    count = 6000
    code = (
        "import sys, time, dvic_log\n"
        "log = dvic_log.get_logger('rotating')\n"
        "log.info('ready')\n"
        "sys.stdin.readline()\n"
        f"for i in range({count}):\n"
        "    log.info('line %05d ' % i + 'z' * 40)\n"
        "    if i % 100 == 99:\n"
        "        time.sleep(0.05)  # paces the demo (about 2,000 lines/s), not the test\n"
        "sys.stdin.readline()\n"
    )
    demo = subprocess.Popen(
        [sys.executable, "-c", code],
        # A rotation every ~2,500 lines, ~1.3 s: the daemon (polling every 0.2 s) has room even on a
        # busy machine. A reader more than two files behind loses lines by design (the size cap).
        env=dict(env_for_demos(), DVIC_LOG_MAX_BYTES=str(256 * 1024)),
        stdin=subprocess.PIPE,
    )
    try:
        # As in production the daemon knows the demo before its output gets busy.
        wait_for(lambda: demo_lines(server, node_id, "rotating"), 30, "the demo's first line", interval=0.2)
        assert demo.stdin is not None
        demo.stdin.write(b"go\n")
        demo.stdin.flush()

        def all_there():
            lines = demo_lines(server, node_id, "rotating")
            return lines if len(lines) >= count + 1 else None

        try:
            lines = wait_for(all_there, 60, f"{count} lines at the server", interval=0.5)
        except AssertionError:
            got = [line["msg"] for line in demo_lines(server, node_id, "rotating")]
            missing = sorted(set(range(count)) - {int(m[5:10]) for m in got if m.startswith("line ")})
            raise AssertionError(
                f"{len(got)} lines arrived; missing {len(missing)}: {missing[:20]}..."
            ) from None
        assert [line["msg"][:10] for line in lines] == ["ready"] + [f"line {i:05d}" for i in range(count)]
        (path,) = live_files(log_dir)
        assert read_file(path)[0]["rotated"] >= 2
    finally:
        demo.kill()
        demo.wait()
