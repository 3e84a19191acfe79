"""The JavaScript example demo, end to end: node demo -> real node daemon -> real central server.

What an operator sees of a Node demo must be what they see of a Python one: its lines with their
levels and logger names, and its liveness (alive while it runs, exited after).
"""

import json
import signal
import subprocess
from pathlib import Path

from dvic_log_testkit import headed_files, library_env, read_file, tool
from test_dvic_log_js import JS_DIR
from test_dvic_log_with_daemon import demo_lines, demo_state, node, shown_exited  # noqa: F401  (node is a fixture)

from tests.support.wait import wait_for


def test_the_node_example_is_seen_with_its_levels_then_as_exited(node, log_dir: Path):  # noqa: F811
    server, node_id = node
    demo = subprocess.Popen(
        [tool("node"), str(JS_DIR / "examples" / "demo.js"), "js-demo"],
        env=library_env(log_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        (path,) = wait_for(lambda: headed_files(log_dir), 20, "the demo's log file")
        header, _ = read_file(path)
        assert header["pid"] == demo.pid and header["name"] == "js-demo"

        def levels_seen():
            lines = demo_lines(server, node_id, "js-demo")
            levels = {line["level"] for line in lines}
            return lines if {"DEBUG", "INFO", "WARNING", "ERROR"} <= levels else None

        lines = wait_for(levels_seen, 60, "lines at every level at the server", interval=0.5)
        msgs = [line["msg"] for line in lines]
        assert msgs[0].startswith(f"started, pid {demo.pid}")
        assert any(m.startswith("reading 1: ") for m in msgs)  # console.log, through patchConsole
        glitch = next(line for line in lines if line["level"] == "ERROR")
        assert glitch["msg"].startswith("simulated glitch Error: sensor timeout\nError: sensor timeout\n    at ")
        state = wait_for(lambda: demo_state(server, node_id, header["token"]), 30, "the demo to be announced",
                         interval=0.2)  # fmt: skip
        assert state["pid"] == demo.pid and state["state"] in ("started", "alive") and state["name"] == "js-demo"

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=30) == 0
        wait_for(lambda: any(line["msg"] == "stopping (SIGTERM)" for line in demo_lines(server, node_id, "js-demo")),
                 30, "the last line", interval=0.5)  # fmt: skip

        assert shown_exited(server, node_id, header["token"])["exited_at"] is not None
        assert demo.stderr is not None and demo.stderr.read() == b""
    finally:
        demo.kill()
        demo.wait()
    # The file itself, for the record: only whole JSON lines.
    assert all(json.loads(line) for line in path.read_text().splitlines())
