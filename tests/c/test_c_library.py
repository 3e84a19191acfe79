"""lib/c/dvic_log.h beyond the conformance suite: builds (C99, C++11, CMake find_package), the
example, behaviours the script does not reach, and a valgrind run of the conformance script.

The byte-for-byte agreement with the Python library is tests/conformance (drivers c and cpp).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "lib" / "c"
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing: .ci/run must install it")
        pytest.skip(f"{tool} is missing")


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def records(directory: Path) -> list[dict]:
    out = []
    for path in sorted(directory.glob("dvic_log_" + "?" * 16)):
        out += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return out


@pytest.mark.parametrize("compiler, std", [("gcc", ["-std=c99"]), ("g++", ["-x", "c++", "-std=c++11"])])
def test_the_unit_checks_pass_as_c99_and_cpp11_under_the_sanitizers(compiler: str, std: list[str],
                                                                     tmp_path: Path) -> None:
    need(compiler)
    binary = tmp_path / "unit"
    run([compiler, *std, *WARNINGS, *SANITIZE, "-pthread", f"-I{LIB}", str(REPO / "tests/c/c_unit.c"),
         "-o", str(binary)])
    logs = tmp_path / "logs"
    logs.mkdir()
    done = run([str(binary)], env=dict(os.environ, DVIC_LOG_DIR=str(logs)))
    assert done.stdout.splitlines()[-1] == "all ok", done.stdout
    # Three refused names, one line each, none of them split by the newline in a name.
    assert done.stderr.splitlines() == [
        "dvic_log: the demo name '' must be 1-200 characters on one line",
        "dvic_log: the demo name 'two?lines' must be 1-200 characters on one line",
        "dvic_log: the demo name NULL must be 1-200 characters on one line",
    ]


def test_the_example_builds_with_a_plain_include_and_logs_levels_and_heartbeats(tmp_path: Path) -> None:
    need("g++")
    binary = tmp_path / "heartbeat_demo"
    run(["g++", "-std=c++11", *WARNINGS, "-pthread", f"-I{LIB}", "-DDVIC_LOG_EXAMPLE_STANDALONE",
         str(LIB / "examples/heartbeat_demo.cpp"), "-o", str(binary)])
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()
    run([str(binary), "2.5"], env=dict(os.environ, DVIC_LOG_DIR=str(logs)))
    took = time.monotonic() - started
    header, *rest = records(logs)
    assert header["name"] == "c-example" and header["exe"] == str(binary) and header["argv"][1:] == ["2.5"]
    beats = [r for r in rest if r.get("heartbeat") == 1]
    lines = [(r["level"], r.get("logger"), r["msg"]) for r in rest if "heartbeat" not in r]
    assert lines[:3] == [("INFO", "c-example", f"starting (pid {header['pid']})"),
                         ("DEBUG", "c-example", "settings: frame every 100 ms"),
                         ("INFO", "c-example.camera", "camera 0 opened")]
    assert lines[-1] == ("ERROR", "c-example", "stopping: time is up")
    # A heartbeat call every 100 ms, at most one record a second reaches the file.
    assert 2 <= len(beats) <= took + 1
    assert all(b["ts"] - a["ts"] >= 0.999 for a, b in zip(beats, beats[1:], strict=False))


def test_cmake_builds_installs_and_find_package_consumes_it(tmp_path: Path) -> None:
    need("cmake")
    need("g++")
    flags = " ".join(WARNINGS)
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    run(["cmake", "-S", str(LIB), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
         "-DDVIC_LOG_BUILD_EXAMPLES=ON", f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"])
    run(["cmake", "--build", str(build), "-j", "2"])
    run(["cmake", "--install", str(build)])
    assert (prefix / "include" / "dvic_log.h").is_file()
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(consumer LANGUAGES CXX)\n"
        "find_package(dvic_log 0.1 REQUIRED)\nadd_executable(app app.cpp)\n"
        "target_link_libraries(app PRIVATE dvic_log::dvic_log)\n")
    (consumer / "app.cpp").write_text(
        '#include "dvic_log.h"\nint main() {\n  dvic_log_t *log = dvic_log_open("cmake-consumer");\n'
        '  dvic_log_warning(log, "found by find_package");\n  dvic_log_heartbeat(log);\n'
        '  dvic_log_close(log);\n  return 0;\n}\n')
    run(["cmake", "-S", str(consumer), "-B", str(consumer / "build"), f"-DCMAKE_PREFIX_PATH={prefix}",
         f"-DCMAKE_CXX_FLAGS={flags}"])
    run(["cmake", "--build", str(consumer / "build")])
    logs = tmp_path / "logs"
    logs.mkdir()
    run([str(consumer / "build" / "app")], env=dict(os.environ, DVIC_LOG_DIR=str(logs)))
    header, warning, beat = records(logs)
    assert header["name"] == "cmake-consumer"
    assert (warning["level"], warning["msg"]) == ("WARNING", "found by find_package")
    assert beat["heartbeat"] == 1
    # The example built by the project itself runs too.
    run([str(build / "examples" / "heartbeat_demo"), "0.2"], env=dict(os.environ, DVIC_LOG_DIR=str(logs)))


def test_valgrind_finds_no_error_or_leak_in_the_conformance_run(tmp_path: Path) -> None:
    need("gcc")
    need("valgrind")
    binary = tmp_path / "driver"
    run(["gcc", "-std=c99", *WARNINGS, "-O0", "-g", "-pthread", f"-I{LIB}",
         str(REPO / "tests/conformance/drivers/c_driver.c"), "-o", str(binary)])
    logs = tmp_path / "logs"
    logs.mkdir()
    done = subprocess.run(
        ["valgrind", "--quiet", "--error-exitcode=9", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
         str(binary), str(REPO / "tests/vectors/dvic_log_conformance.json")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, DVIC_LOG_DIR=str(logs), DVIC_LOG_MAX_BYTES="65536", DVIC_LOG_KEEP_DAYS="0"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["skipped"], done.stdout  # (it ran the script: surrogate op skipped)
    assert len(list(logs.glob("dvic_log_" + "?" * 16))) == 5


def test_a_running_example_shows_its_lines_and_heartbeat_in_dvic_logs_and_dvic_node(central_server, tmp_path: Path):
    """docs/libraries.md's C quick start, end to end: the example, the real daemon and server, the `dvic` CLI."""
    import sys

    from tests.support.daemon import enrolled_daemon, wait_connected
    from tests.support.wait import wait_for

    need("g++")
    binary = tmp_path / "heartbeat_demo"
    run(["g++", "-std=c++11", "-pthread", f"-I{LIB}", "-DDVIC_LOG_EXAMPLE_STANDALONE",
         str(LIB / "examples/heartbeat_demo.cpp"), "-o", str(binary)])
    logs = tmp_path / "logs"
    logs.mkdir()
    _, daemon = enrolled_daemon(central_server, tmp_path, logs, name="c-node", timings=())
    daemon.start()
    demo = None
    cli_env = dict(os.environ, DVIC_SERVER=central_server.url, DVIC_CA=str(central_server.ca_path),
                   DVIC_TOKEN=central_server.admin_token, DVIC_CONFIG_DIR=str(tmp_path / "cfg"),
                   XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    dvic = str(Path(sys.executable).parent / "dvic")
    try:
        wait_connected(central_server, "c-node", daemon)
        demo = subprocess.Popen([str(binary), "30"], env=dict(os.environ, DVIC_LOG_DIR=str(logs)))

        def beating_row() -> str | None:
            out = run([dvic, "node", "c-node"], env=cli_env).stdout
            row = next((line for line in out.splitlines() if line.startswith("c-example")), "")
            cells = row.split()  # c-example alive PID 3s ago 1s ago TOKEN
            return row if len(cells) == 8 and cells[1] == "alive" and cells[5].endswith("s") else None

        row = wait_for(beating_row, 30, "c-example alive with a heartbeat in `dvic node`", interval=0.5)
        assert row.split()[2] == str(demo.pid)
        detail = central_server.node("c-node")
        (state,) = [d for d in detail["demos_list"] if d["name"] == "c-example"]
        assert time.time() - state["last_heartbeat"] < 10
        demo.send_signal(15)
        assert demo.wait(timeout=10) == 0

        def all_lines() -> list[str] | None:
            out = run([dvic, "logs", "c-node", "--source", "demo", "--json"], env=cli_env).stdout
            lines = [(line["level"], line["msg"]) for line in json.loads(out)["lines"]]
            return lines if lines and lines[-1] == ("ERROR", "stopping: signal received") else None

        lines = wait_for(all_lines, 30, "the example's last line in `dvic logs`", interval=0.5)
        assert lines[:3] == [("INFO", f"starting (pid {demo.pid})"), ("DEBUG", "settings: frame every 100 ms"),
                             ("INFO", "camera 0 opened")]
        assert not any(msg == "heartbeat" for _, msg in lines)  # liveness, not lines
    finally:
        if demo is not None and demo.poll() is None:
            demo.kill()
            demo.wait()
        daemon.stop()
