"""The C# example demo, end to end: mono demo -> real node daemon -> real central server.

What an operator sees of a C# demo must be what they see of a Python one: its lines with their
levels and logger names, and its liveness (alive while it runs, exited after).
"""

import subprocess
from pathlib import Path

from dvic_log_testkit import headed_files, library_env, read_file, tool
from test_dvic_log_csharp import CS_DIR, MONO, build
from test_dvic_log_with_daemon import demo_lines, demo_state, node, shown_exited  # noqa: F401  (node is a fixture)

from tests.support.wait import wait_for


def test_the_csharp_example_is_seen_with_its_levels_then_as_exited(node, log_dir: Path, tmp_path: Path):  # noqa: F811
    server, node_id = node
    exe = build(tmp_path / "demo.exe", CS_DIR / "DvicLog.cs", CS_DIR / "examples" / "Demo.cs")
    demo = subprocess.Popen(
        [tool("mono", MONO), str(exe), "cs-demo", "--readings", "12"], env=library_env(log_dir), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        (path,) = wait_for(lambda: headed_files(log_dir), 20, "the demo's log file")
        header, _ = read_file(path)
        assert header["pid"] == demo.pid and header["name"] == "cs-demo"
        state = wait_for(lambda: demo_state(server, node_id, header["token"]), 30, "the demo to be announced",
                         interval=0.2)  # fmt: skip
        assert state["pid"] == demo.pid and state["state"] in ("started", "alive") and state["name"] == "cs-demo"
        assert demo.wait(timeout=60) == 0

        def all_lines():
            lines = demo_lines(server, node_id, "cs-demo")
            return lines if lines and lines[-1]["msg"] == "stopping" else None

        lines = wait_for(all_lines, 60, "the demo's last line at the server", interval=0.5)
        assert {line["level"] for line in lines} >= {"DEBUG", "INFO", "WARNING", "ERROR"}
        assert lines[0]["msg"].startswith(f"started, pid {demo.pid}")
        assert [line["msg"] for line in lines if line["msg"].startswith("reading ")][-1].startswith("reading 12: ")
        glitch = next(line for line in lines if line["level"] == "ERROR")
        assert glitch["msg"].startswith("simulated glitch\nSystem.TimeoutException: sensor timeout\n  at Demo.Main ")

        assert shown_exited(server, node_id, header["token"])["exited_at"] is not None
        assert demo.stderr is not None and demo.stderr.read() == b""
    finally:
        demo.kill()
        demo.wait()
