"""Issue 14's "Done when", as a new user does it with the README: `dvic-central up` (the server and this
machine's daemon), then the `dvic` command line: publish the example demo, deploy it to this machine,
see it healthy, kill -9 it and see it back within a second with its restart counted, publish a
release whose demo exits at once, deploy it, and watch it roll back to the previous release by itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.demos import kill_demos
from tests.support.server import REPO
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "hello-demo"
BROKEN = REPO / "examples" / "hello-demo-broken"


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "central.cli", "--data-dir", str(data_dir), "up", "--listen", "127.0.0.1:0",
             "--no-console"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: (data_dir / "listen.json").exists() and (data_dir / "local-node.json").exists(),
                 timeout=60, what="server up and this machine enrolled")
        info = json.loads((data_dir / "listen.json").read_text())
        self.env = {**env, "DVIC_SERVER": info["url"], "DVIC_CA": str(data_dir / "ca.pem"),
                    "DVIC_TOKEN_FILE": str(data_dir / "admin.token")}
        self.node = self.dvic_json("nodes", "--json")["nodes"][0]["name"]
        wait_for(lambda: self.dvic_json("nodes", "--json")["nodes"][0]["connected"], 60, "this machine's daemon")

    def dvic(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tui", *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def dvic_json(self, *args: str) -> Any:
        done = self.dvic(*args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def status(self) -> dict[str, Any]:
        rows = self.dvic_json("demo", "status", "hello-demo", "--json")["status"]
        return rows[0] if rows else {}

    def close(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        return out


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "dvic")
    try:
        yield s
    finally:
        s.close()
        kill_demos(tmp_path / "dvic" / "node-state")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _demo_pid(state: Path) -> int | None:
    try:
        pid = json.loads((state / "demos" / "hello-demo" / "proc.json").read_text()).get("pid")
    except (OSError, ValueError):
        return None
    return pid if isinstance(pid, int) and _alive(pid) else None


def test_publish_deploy_kill_and_automatic_rollback(stack: Stack) -> None:
    published = stack.dvic("demo", "publish", str(EXAMPLE))
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published: hello-demo 1.0.0")

    deployed = stack.dvic("deploy", "hello-demo@1.0.0", "--node", stack.node, "--wait")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "healthy" in deployed.stdout and deployed.stdout.rstrip().endswith(": done")
    healthy = wait_for(lambda: (s := stack.status()).get("state") == "healthy" and s, 30, "hello-demo healthy")
    assert (healthy["version"], healthy["restarts"]) == ("1.0.0", 0)
    table = stack.dvic("demo", "status")
    assert "hello-demo" in table.stdout and "healthy" in table.stdout and stack.node in table.stdout

    # kill -9: running again within a second, and the server counts the restart
    state = stack.data_dir / "node-state"
    pid = healthy["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    new_pid = wait_for(lambda: (p := _demo_pid(state)) not in (None, pid) and p, 5, "the demo running again",
                       interval=0.02)
    assert time.monotonic() - killed < 1.0, "the first restart must come within a second"
    back = wait_for(lambda: (s := stack.status()).get("restarts") == 1 and s.get("pid") == new_pid and s, 30,
                    "the restart counted")
    assert back["last_exit"]["signal"] == signal.SIGKILL

    # a release that exits at once: deployed, it is rolled back by the daemon itself
    published = stack.dvic("demo", "publish", str(BROKEN))
    assert published.returncode == 0 and "hello-demo 1.1.0" in published.stdout, published.stderr
    bad = stack.dvic("deploy", "hello-demo@1.1.0", "--node", stack.node, "--wait", "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    final = json.loads(bad.stdout.strip().splitlines()[-1])
    assert final["state"] == "failed" and final["nodes"][0]["state"] == "rolled_back"
    assert "1.0.0 runs again" in final["nodes"][0]["message"]
    wait_for(lambda: (s := stack.status()).get("version") == "1.0.0" and s.get("state") == "healthy", 30,
             "1.0.0 healthy again")
    deployments = stack.dvic_json("demo", "deployments", "hello-demo", "--json")["deployments"]
    assert [(d["version"], d["state"]) for d in deployments] == [("1.1.0", "failed"), ("1.0.0", "done")]
