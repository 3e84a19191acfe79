"""Supervised demos: the real daemon keeps real demo processes running (docs/node-daemon.md).

Restarts with backoff and the crash loop, SIGTERM then SIGKILL, restart policies, health from
heartbeats, re-adoption after a daemon restart, a node reboot, operator actions, and a daemon that
does not run as root. The server is demo_support.DemoServer (a stand-in that only pushes the desired
set and records what the daemon says).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_support import (
    DemoRig,
    DemoServer,
    Node,
    control,
    demo_env_manifest,
    demo_node,
    deployed,
    make_release,
    new_tag,
)

from tests.support.daemon import DaemonProcess
from tests.support.demos import tagged_pids
from tests.support.pki import Pki
from tests.support.server import write_bundle
from tests.support.wait import async_wait_for

pytestmark = pytest.mark.slow  # real demos: a healthy demo takes 3 s, a backoff takes seconds




async def action(srv: DemoServer, verb: str, demo: str, timeout: float = 30.0) -> dict:
    rid = str(uuid.uuid4())
    await srv.send({"type": "action", "id": rid, "action": verb, "demo": demo})
    return await srv.wait(lambda: [m for m in srv.of("action_state") if m["id"] == rid
                                   and m["state"] in ("done", "failed")], timeout, f"{verb} {demo}")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_a_crashing_demo_restarts_at_once_then_backs_off_into_a_crash_loop(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag, keep=["state/"])
    async with deployed(srv, node, tag, v1):
        first = await srv.healthy(v1)
        control(node, "robot", "crashes", "6")  # the next 6 starts crash (exit 3) at once
        killed_at = time.time()
        os.kill(first["pid"], signal.SIGKILL)  # exit 1; then crashes: exits 2, 3, 4, 5 = a crash loop
        looping = await srv.status_is("robot", lambda s: s["state"] == "crashloop" and not s["pid"], 30,
                                      "the crash loop")
        assert "restarting in 60 s" in looping["message"], looping
        assert looping["restarts"] == 5 and looping["last_exit"]["code"] == 3
        event = srv.events("demo_crashloop")[-1]
        assert event["data"]["demo"] == "robot" and event["data"]["exits"] == 5, event
        crashes = [ln for ln in srv.demo_lines("robot") if ln["msg"].startswith("crash ")]
        assert [ln["msg"] for ln in crashes] == ["crash 6", "crash 5", "crash 4", "crash 3"]
        assert {ln["level"] for ln in crashes} == {"ERROR"}  # stderr
        starts = [ln["ts"] for ln in crashes]
        assert starts[0] - killed_at < 1.0  # the first restart at once
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        for gap, delay in zip(gaps, (1, 2, 4), strict=True):  # then 1 s, doubling
            assert delay <= gap < 2 * delay, gaps  # the wait, plus starting a process: not the next step
        assert tagged_pids(tag) == []  # waiting 60 s for the next try
        statuses = srv.of("demo_status", "robot")
        assert [s["restarts"] for s in statuses if s["state"] == "unhealthy"] == [1, 2, 3, 4]
        assert statuses[-1]["last_exit"]["signal"] is None
        killed = [s for s in statuses if s["last_exit"] and s["last_exit"]["signal"] == signal.SIGKILL]
        assert killed and killed[0]["restarts"] == 1  # the kill -9 was the first exit


async def test_a_killed_demo_runs_again_within_a_second_and_its_lines_survive_a_daemon_kill(
        rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag, keep=["state/"])
    async with deployed(srv, node, tag, v1):
        first = await srv.healthy(v1)
        os.kill(first["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        await async_wait_for(lambda: tagged_pids(tag) not in ([], [first["pid"]]), 5, "a new demo process")
        assert time.monotonic() - t0 < 1.0  # polled every 20 ms
        again = await srv.status_is("robot", lambda s: s["pid"] not in (None, first["pid"]), 10, "a new pid")
        assert again["restarts"] == 1 and again["last_exit"]["signal"] == signal.SIGKILL
        # the demo's output goes on while the daemon is down (the shim owns its pipes): nothing lost
        node.daemon.kill()
        control(node, "robot", "say", "said while the daemon was away")
        await asyncio.sleep(0.5)  # let the demo write it while no daemon runs (not a synchronisation)
        node.daemon.start()
        line = await srv.wait(lambda: [ln for ln in srv.demo_lines("robot")
                                       if ln["msg"] == "said while the daemon was away"], 30, "the line")
        assert line[0]["level"] == "INFO"
        assert tagged_pids(tag) == [again["pid"]]
        ups = [ln["msg"] for ln in srv.demo_lines("robot") if ln["msg"].startswith("up ")]
        assert len(ups) == 2  # started twice in all: the install, the restart after the kill


async def test_a_demo_that_ignores_sigterm_is_killed_after_stop_grace_s(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "kiosk", "1.0.0", "ignore-term", tag=tag, stop_grace_s=2)
    async with deployed(srv, node, tag, v1):
        first = await srv.healthy(v1)
        t0 = time.monotonic()
        done = await action(srv, "stop_demo", "kiosk")
        took = time.monotonic() - t0
        assert done[0]["state"] == "done", done
        assert 2.0 <= took < 6.0, took  # SIGTERM ignored for stop_grace_s, then SIGKILL
        assert gone(first["pid"]) and tagged_pids(tag) == []
        assert node.proc("kiosk")["exit"]["signal"] == signal.SIGKILL
        stopped = await srv.status_is("kiosk", lambda s: s["state"] == "stopped", 10, "stopped")
        assert stopped["message"] == "stopped by an operator"
        # stopped by an operator: it stays stopped across a daemon restart, until start_demo
        await node.stop()
        node.daemon.start()
        await srv.connected(2)
        await asyncio.sleep(1.5)  # a supervision round or more: nothing may start (absence, not a sync)
        assert tagged_pids(tag) == []
        started = await action(srv, "start_demo", "kiosk")
        assert started[0]["state"] == "done", started
        await srv.status_is("kiosk", lambda s: s["state"] == "healthy" and s["pid"] != first["pid"], 20,
                            "running again")
        assert len(tagged_pids(tag)) == 1


async def test_restart_policies_on_failure_and_never(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    soft = make_release(tmp_path, "soft", "1.0.0", tag=tag, keep=["state/"], restart="on-failure")
    once = make_release(tmp_path, "once", "1.0.0", tag=tag, keep=["state/"], restart="never")
    async with deployed(srv, node, tag, soft, once):
        s1 = await srv.healthy(soft)
        await srv.healthy(once)
        control(node, "soft", "exit", "1")  # a failure: on-failure restarts it
        again = await srv.status_is("soft", lambda s: s["pid"] not in (None, s1["pid"]), 20, "restarted")
        assert again["restarts"] == 1 and again["last_exit"]["code"] == 1
        control(node, "soft", "exit", "0")  # a clean exit: on-failure leaves it stopped
        st = await srv.status_is("soft", lambda s: s["state"] == "stopped", 20, "soft stopped")
        assert st["message"] == "exited with status 0 (restart policy: on-failure)", st
        control(node, "once", "exit", "2")
        st = await srv.status_is("once", lambda s: s["state"] == "stopped", 20, "once stopped")
        assert st["message"] == "exited with status 2 (restart policy: never)" and st["last_exit"]["code"] == 2
        assert tagged_pids(tag) == []


async def test_health_follows_the_demos_dvic_log_heartbeats(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", "beat", tag=tag, heartbeat_s=2, env=demo_env_manifest())
    async with deployed(srv, node, tag, v1):
        up = await srv.healthy(v1)
        assert up["last_heartbeat"] and time.time() - up["last_heartbeat"] < 5
        os.kill(up["pid"], signal.SIGSTOP)  # alive but silent
        try:
            sick = await srv.status_is("robot", lambda s: s["state"] == "unhealthy", 20, "unhealthy")
            assert "heartbeat_s (2 s)" in sick["message"] and sick["pid"] == up["pid"]
            event = srv.events("demo_unhealthy")[-1]
            assert event["data"]["demo"] == "robot" and event["data"]["heartbeat_s"] == 2
        finally:
            os.kill(up["pid"], signal.SIGCONT)
        await srv.status_is("robot", lambda s: s["state"] == "healthy" and s["_at"] > sick["_at"], 20,
                            "healthy again")
        recovered = await srv.wait(lambda: srv.events("demo_recovered"), 10, "demo_recovered")
        assert recovered[-1]["data"]["was"] == "unhealthy"
        assert srv.status("robot")["restarts"] == 0  # silence is not a crash: nothing was restarted


async def test_after_a_reboot_the_daemon_starts_its_demos_again(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag, restart="never")
    async with deployed(srv, node, tag, v1):
        first = await srv.healthy(v1)
        # killed while the daemon is away, same boot: the restart policy (never) applies
        node.daemon.kill()
        os.kill(first["pid"], signal.SIGKILL)
        await srv.wait(lambda: node.proc("robot").get("exit"), 10, "the shim to record the exit")
        statuses = len(srv.of("demo_status", "robot"))
        node.daemon.start()
        st = await srv.wait(lambda: [s for s in srv.of("demo_status", "robot")[statuses:]
                                     if s["state"] == "stopped"], 30, "stopped")
        assert st[-1]["message"] == "was killed by SIGKILL (restart policy: never)", st
        assert tagged_pids(tag) == []
        # the machine rebooted (a power cut took every process): a reboot starts it whatever the policy
        node.daemon.kill()
        node.daemon.env["DVIC_NODE_TEST_BOOT_TIME"] = str(time.time())
        node.daemon.start()
        again = await srv.status_is("robot", lambda s: s["state"] == "healthy" and s["pid"] != first["pid"],
                                    30, "started after the reboot")
        assert tagged_pids(tag) == [again["pid"]]


async def test_a_demo_that_cannot_start_fails_with_the_reason(pki: Pki, tmp_path: Path) -> None:
    async with DemoServer(pki) as srv:
        node = demo_node(srv, tmp_path)
        missing = make_release(tmp_path, "ghost", "1.0.0", run=["/nonexistent/ghost-demo", "--go"])
        stranger = make_release(tmp_path, "alien", "1.0.0", user="no-such-user-14n")
        async with deployed(srv, node, "", missing, stranger):
            result = await srv.install_result("ghost", "1.0.0")
            assert result["state"] == "failed", result
            assert "cannot run /nonexistent/ghost-demo: No such file or directory" in result["message"]
            assert srv.status("ghost")["state"] == "failed"
            result = await srv.install_result("alien", "1.0.0")
            assert result["state"] == "failed" and "user 'no-such-user-14n' does not exist" in result["message"]
            assert [r["sha256"] for r in srv.requests] == [missing.sha256]  # refused before downloading


async def test_actions_act_on_supervised_demos_and_demos_json_still_works(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    node.state.mkdir()
    marker = tmp_path / "legacy-started"
    (node.state / "demos.json").write_text(json.dumps({"legacy": {"start": f"touch {marker}", "stop": "true"}}))
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag)
    async with deployed(srv, node, tag, v1):
        first = await srv.healthy(v1)
        done = await action(srv, "restart_demo", "robot")
        assert done[0]["state"] == "done" and "restarted" in done[0]["message"], done
        again = await srv.status_is("robot", lambda s: s["pid"] not in (None, first["pid"]), 10, "restarted")
        assert gone(first["pid"]) and tagged_pids(tag) == [again["pid"]]
        assert again["restarts"] == 0  # an operator's restart is not a crash
        done = await action(srv, "start_demo", "legacy")
        assert done[0]["state"] == "done", done
        assert marker.exists()
        done = await action(srv, "stop_demo", "nobody-knows")
        assert done[0]["state"] == "failed" and "not configured" in done[0]["message"]


class UnprivilegedDaemon(DaemonProcess):
    """The daemon as the user `nobody` (setpriv), as on a Pi where it runs as `pi`."""

    @property
    def args(self) -> list[str]:
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *super().args]


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory outside the test's own (0700 under root) that the user nobody can use."""
    if not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs setpriv and /usr/bin/python3 (an interpreter nobody may run)")
    base = Path(tempfile.mkdtemp(prefix="dvic-14n-nobody-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_a_daemon_that_is_not_root_runs_its_demos_as_itself(pki: Pki, tmp_path: Path, nobody_dir: Path) -> None:
    tag = new_tag()
    async with DemoServer(pki) as srv:
        state, logs = nobody_dir / "state", nobody_dir / "logs"
        for d in (state, logs):
            d.mkdir(mode=0o700)
            os.chown(d, 65534, 65534)
        bundle = write_bundle(srv.bundle(), nobody_dir / "bundle.json")
        os.chown(bundle, 65534, 65534)
        node = Node(UnprivilegedDaemon(bundle, state, logs, python="/usr/bin/python3"), state, logs)
        node.daemon.log_path = tmp_path / "daemon.log"
        v1 = make_release(tmp_path, "robot", "1.0.0", python="/usr/bin/python3", tag=tag)
        as_root = make_release(tmp_path, "rooted", "1.0.0", python="/usr/bin/python3", tag=tag, user="root")
        async with deployed(srv, node, tag, v1, as_root):
            first = await srv.healthy(v1)
            assert Path(f"/proc/{first['pid']}/status").read_text().split("Uid:")[1].split()[0] == "65534"
            up = await srv.wait(lambda: [ln for ln in srv.demo_lines("robot") if ln["msg"].startswith("up ")], 20,
                                "the demo's first line")
            assert up[0]["msg"].endswith("uid 65534")
            result = await srv.install_result("rooted", "1.0.0")
            assert result["state"] == "failed" and "not root" in result["message"], result
            os.kill(first["pid"], signal.SIGKILL)  # supervised as well without root
            await srv.status_is("robot", lambda s: s["pid"] not in (None, first["pid"]) and s["restarts"] == 1, 10,
                                "restarted")
            assert subprocess.run(["stat", "-c", "%U", str(node.current("robot"))], capture_output=True,
                                  text=True).stdout.strip() == "nobody"
