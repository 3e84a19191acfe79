"""Every dvic_log library writes what the reference reader and the real daemon read as the Python library's.

See README.md next to this file: the script and golden vectors are in tests/vectors/, each library
plugs in with drivers/<name>.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import harness
from tests.support.daemon import online_daemon
from tests.support.server import CentralServer
from tests.support.wait import wait_for

SCRIPT = harness.load_script()
EXPECTED = json.loads(harness.EXPECTED_PATH.read_text(encoding="utf-8"))
DRIVERS = {d.name: d for d in harness.all_drivers()}


class Built:
    """Drivers built once per session, in a scratch directory `nobody` can read (the unwritable-dir case)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.drivers: dict[str, harness.Driver] = {}


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    root = Path(tempfile.mkdtemp(prefix="dvic-conformance-build-"))
    os.chmod(root, 0o755)
    try:
        yield Built(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def driver_for(name: str, built: Built) -> harness.Driver:
    driver = DRIVERS[name]
    missing = driver.missing_tools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the {name} driver needs {', '.join(missing)}: .ci/run must install it")
        pytest.skip(f"the {name} driver needs {', '.join(missing)}")
    if name not in built.drivers:
        driver.prepare(built.root / name)
        os.chmod(built.root / name, 0o755)
        built.drivers[name] = driver
    return built.drivers[name]


def run_script(driver: harness.Driver, log_dir: Path) -> harness.Run:
    run = harness.run_driver(driver, SCRIPT["ops"], SCRIPT["settings"], log_dir)
    assert run.returncode == 0, f"{driver.name} driver exited {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert run.summary is not None, f"{driver.name} driver printed no summary line: {run.stdout!r}"
    assert run.summary["skipped"] == driver.expected_skips(SCRIPT["ops"]), (
        f"{driver.name} skipped {run.summary['skipped']}, its capabilities say "
        f"{driver.expected_skips(SCRIPT['ops'])}")
    assert run.stderr == "", f"{driver.name} wrote to stderr on a good run:\n{run.stderr}"
    return run


def first_difference(got: list[Any], want: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"record {i}:\n  got:  {a!r}\n  want: {b!r}"
    return f"{len(got)} records, want {len(want)}"


# ----- 1. the reference reader sees what it sees in the Python library's files --------------------

@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_the_reference_reader_reads_it_like_the_python_librarys(name: str, built, tmp_path: Path) -> None:
    driver = driver_for(name, built)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    run = run_script(driver, log_dir)
    pid = run.summary["pid"]
    groups = harness.read_groups(log_dir, pid)
    view = harness.tag_records(groups, SCRIPT["ops"], run.summary["skipped"])
    want = harness.expected_view(EXPECTED, run.summary["skipped"])
    assert sorted(view) == sorted(want), f"files: got {sorted(view)}, want {sorted(want)}"
    for key in want:
        assert view[key]["headers"] == want[key]["headers"], f"{key}: headers"
        got, exp = view[key]["records"], want[key]["records"]
        assert got == exp, f"{name}, {key}: " + first_difference(got, exp)
    truncated = 0
    for group in groups.values():
        harness.check_header_facts(group, pid)
        harness.check_lines_are_python_bytes(group)
        truncated += harness.check_truncation(group, SCRIPT["ops"], SCRIPT["settings"]["max_bytes"])
        for part in (group.path, Path(f"{group.path}.1")):
            if part.exists():
                assert part.stat().st_size <= SCRIPT["settings"]["max_bytes"], f"{part} is over the cap"
                assert oct(part.stat().st_mode & 0o777) == oct(0o644), f"{part} mode"
    assert truncated == 1
    # The threads wrote whole lines, each thread's records in its own order.
    threads_op = next(i for i, op in enumerate(SCRIPT["ops"]) if op["op"] == "threads")
    if threads_op not in run.summary["skipped"]:
        msgs = [r["msg"] for r in groups["conformance-threads"].records]
        for t in range(4):
            mine = [m for m in msgs if m.startswith(f"thread {t} ")]
            assert mine == [f"thread {t} record {i}" for i in range(100)], f"thread {t} out of order"


# ----- 2. the real daemon ships it as it ships the Python library's -------------------------------

@pytest.fixture(scope="module")
def node_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CentralServer, str, Path]]:
    """One real server and one real daemon (as on a node, default timings) following one log directory."""
    base = tmp_path_factory.mktemp("conformance-node")
    log_dir = base / "logs"
    log_dir.mkdir()
    with CentralServer(base / "central") as server, \
            online_daemon(server, base, log_dir, name="conformance-node", timings=("-v",)) as (node_id, _):
        yield server, node_id, log_dir


def demo_lines(server: CentralServer, node_id: str, token: str) -> list[dict[str, Any]]:
    return server.logs(node=node_id, source="demo", demo=token)


def demo_state(server: CentralServer, node_id: str, token: str) -> dict[str, Any] | None:
    return server.demo(node_id, token)


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_the_daemon_ships_it_like_the_python_librarys(name: str, built, node_daemon) -> None:
    driver = driver_for(name, built)
    server, node_id, log_dir = node_daemon
    before = {p.name for p in log_dir.iterdir()}
    run = run_script(driver, log_dir)
    tokens = {p.name[9:] for p in log_dir.iterdir() if p.name not in before and harness.LIVE_NAME.match(p.name)}
    groups = harness.read_groups(log_dir, run.summary["pid"], tokens)
    for key, group in groups.items():
        want = [(r["level"], r["msg"] + ("\n" + r["exc"] if r.get("exc") else ""))
                for r in group.records if r.get("heartbeat") != 1]

        def arrived(group: harness.FileGroup = group, want: list[Any] = want) -> list[dict[str, Any]] | None:
            lines = demo_lines(server, node_id, group.token)
            return lines if len(lines) >= len(want) else None

        lines = wait_for(arrived, 60, f"{len(want)} lines of {key} at the server", interval=0.5)
        got = [(line["level"], line["msg"]) for line in lines]
        assert got == want, f"{name}, {key}: " + first_difference(got, want)
        assert {line["unit"] for line in lines} == {group.headers[-1]["name"]}
    main = groups["conformance"]
    latest = max(r["ts"] for r in main.records)

    def heartbeat_known() -> dict[str, Any] | None:
        state = demo_state(server, node_id, main.token)
        return state if state and state.get("last_heartbeat") == latest else None

    wait_for(heartbeat_known, 30, f"last_heartbeat {latest} of {main.token} at the server", interval=0.2)


# ----- 3. bad input: the demo goes on, one line on stderr ----------------------------------------

def bad_case(name: str) -> dict[str, Any]:
    return SCRIPT["bad_input"][name]


def assert_reported_once(run: harness.Run, driver: harness.Driver, what: str) -> None:
    assert run.returncode == 0, f"{driver.name}, {what}: exit {run.returncode}\n{run.stderr}"
    assert run.summary is not None, f"{driver.name}, {what}: no summary: {run.stdout!r}"
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dvic_log:"), (
        f"{driver.name}, {what}: want exactly one 'dvic_log:' line on stderr, got:\n{run.stderr}")


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_a_missing_directory_is_reported_once_and_the_demo_goes_on(name: str, built, tmp_path: Path) -> None:
    driver = driver_for(name, built)
    missing = tmp_path / "no-such-dir"
    run = harness.run_driver(driver, bad_case("missing_dir")["ops"], SCRIPT["settings"], missing)
    assert_reported_once(run, driver, "missing DVIC_LOG_DIR")
    assert str(missing) in run.stderr
    assert not missing.exists()


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_an_unwritable_directory_is_reported_once_and_the_demo_goes_on(name: str, built, tmp_path: Path) -> None:
    driver = driver_for(name, built)
    locked = Path(tempfile.mkdtemp(prefix="dvic-conformance-locked-"))
    try:
        os.chmod(locked, 0o555)
        run = harness.run_driver(driver, bad_case("unwritable_dir")["ops"], SCRIPT["settings"], locked,
                                 as_nobody=os.geteuid() == 0)  # root writes anywhere: run as nobody
        assert_reported_once(run, driver, "unwritable DVIC_LOG_DIR")
        assert list(locked.iterdir()) == []
    finally:
        os.rmdir(locked)


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_a_full_disk_is_reported_once_and_leaves_only_whole_records(name: str, built, tmp_path: Path) -> None:
    driver = driver_for(name, built)
    case = bad_case("full_disk")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    run = harness.run_driver(driver, case["ops"], SCRIPT["settings"], log_dir, fsize_limit=case["fsize_limit"])
    assert_reported_once(run, driver, "full disk")
    (path,) = [p for p in log_dir.iterdir() if harness.LIVE_NAME.match(p.name)]
    data = path.read_bytes()
    assert len(data) == case["fsize_limit"], "the file was not filled to the limit"
    *complete, torn = data.split(b"\n")
    objs = [json.loads(line.decode("utf-8")) for line in complete]
    assert objs[0]["dvic_log"] == 1 and objs[0]["name"] == "bad-full-disk"
    msgs = [o["msg"] for o in objs[1:]]
    want = ["first record"] + [f"record {i} " + "y" * 90 for i in range(60)]
    assert len(msgs) >= 10 and msgs == want[:len(msgs)], msgs
    assert torn.startswith(b'{"ts":') or torn == b"", torn[:60]
