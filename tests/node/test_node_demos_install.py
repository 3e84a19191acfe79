"""Supervised demos: the install pipeline of the real daemon against a stand-in server (docs/node-daemon.md).

Real releases (tar.gz) downloaded over HTTPS with the node's client certificate, real demo processes,
real kill -9 of the daemon. The server is demo_support.DemoServer: it pushes the desired set the test
gives it and records what the daemon reports, nothing more.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_support import interpreters
from demo_support import (
    DemoRig,
    DemoServer,
    Node,
    demo_node,
    deployed,
    make_release,
    new_tag,
)
from node_support import small_tmpfs

from tests.support.demos import tagged_pids
from tests.support.pki import Pki
from tests.support.releases import add_file

pytestmark = pytest.mark.slow  # real installs: each waits for a demo to become healthy (3 s)

STEPS = ["queued", "downloading", "verifying", "installing", "stopping_old", "starting", "healthy"]



def leftovers(node: Node, name: str) -> list[str]:
    releases = node.demo_dir(name) / "releases"
    return sorted(p.name for p in releases.iterdir() if p.name.startswith(".")) if releases.exists() else []


async def kill(node: Node) -> None:
    node.daemon.kill()


@pytest.mark.parametrize("python", interpreters())
async def test_install_upgrade_and_daemon_restarts_keep_one_process(pki: Pki, tmp_path: Path, python: str) -> None:
    tag = new_tag()
    async with DemoServer(pki) as srv:
        node = demo_node(srv, tmp_path, python=python)
        v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag, keep=["state/"])
        v2 = make_release(tmp_path, "robot", "2.0.0", tag=tag, keep=["state/"])
        async with deployed(srv, node, tag, v1, v2, push=[v1.entry()]):
            await srv.connected()
            first = await srv.healthy(v1)
            assert srv.install_states("robot", "1.0.0") == STEPS
            assert tagged_pids(tag) == [first["pid"]]
            assert node.current("robot").name == f"1.0.0-{v1.sha256[:8]}"
            assert (node.current("robot") / "state").is_symlink()  # `keep`: linked into data/
            assert (node.demo_dir("robot") / "data" / "state" / "count").read_text() == "1"
            assert all(r["client_cert"] for r in srv.requests)  # downloaded as the node (mTLS)

            # a clean restart and a kill -9 of the daemon: the demo is re-adopted, never started twice
            for restart in (Node.stop, kill):
                said = len(srv.installs("robot", "1.0.0"))
                statuses = len(srv.of("demo_status", "robot"))
                await restart(node)
                node.daemon.start()
                await srv.wait(lambda n=said: len(srv.installs("robot", "1.0.0")) > n, 30, "the re-push answered")
                assert srv.installs("robot", "1.0.0")[-1]["state"] == "healthy"  # installed already: said again
                again = srv.of("demo_status", "robot")[statuses:]  # announced after the welcome
                assert again and again[0]["pid"] == first["pid"] and again[0]["version"] == "1.0.0"
                assert tagged_pids(tag) == [first["pid"]]
                assert (node.demo_dir("robot") / "data" / "state" / "count").read_text() == "1"  # not run again

            # the upgrade: the old release runs until the new one starts, then the new one alone
            await srv.push([v2.entry()])
            second = await srv.healthy(v2)
            assert srv.install_states("robot", "2.0.0") == STEPS
            assert second["pid"] != first["pid"] and tagged_pids(tag) == [second["pid"]]
            assert node.current("robot").name == f"2.0.0-{v2.sha256[:8]}"
            assert (node.demo_dir("robot") / "data" / "state" / "count").read_text() == "2"  # kept across releases
            releases = sorted(p.name for p in (node.demo_dir("robot") / "releases").iterdir())
            assert releases == [f"1.0.0-{v1.sha256[:8]}", f"2.0.0-{v2.sha256[:8]}"]  # the previous one stays
            assert not list((node.state / "downloads").iterdir())


async def test_a_download_cut_in_the_middle_resumes_with_range(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    big = os.urandom(900 * 1024)  # incompressible: the archive is about as large
    v1 = make_release(tmp_path, "kiosk", "1.0.0", tag=tag, files={"assets.bin": big})
    srv.cut[v1.sha256] = 300 * 1024
    async with deployed(srv, node, tag, v1):
        part = node.state / "downloads" / f"{v1.sha256}.part"
        # between the cut and the next attempt the partial file waits, with what arrived
        await srv.wait(lambda: part.exists() and part.stat().st_size == 300 * 1024 and len(srv.requests) == 1,
                       30, "the partial download kept")
        await srv.healthy(v1)
        assert [r["range"] for r in srv.requests] == [None, f"bytes={300 * 1024}-"]
        assert (node.current("kiosk") / "assets.bin").read_bytes() == big
        assert not part.exists()


async def test_sha256_mismatch_is_refused_and_the_running_release_stays(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag)
    v2 = make_release(tmp_path, "robot", "2.0.0", tag=tag)
    srv.releases["f" * 64] = v2.path  # the server hands out other bytes than the release's
    async with deployed(srv, node, tag, v1):
        first = await srv.healthy(v1)
        await srv.push([dict(v2.entry(), sha256="f" * 64, url="/api/v1/node/releases/" + "f" * 64)])
        result = await srv.install_result("robot", "2.0.0")
        assert result["state"] == "failed" and "sha256 mismatch" in result["message"], result
        assert tagged_pids(tag) == [first["pid"]]
        assert node.current("robot").name == f"1.0.0-{v1.sha256[:8]}"
        assert not (node.state / "downloads" / ("f" * 64 + ".part")).exists()  # a bad copy is not resumed


def hostile(kind: str) -> Callable[[tarfile.TarFile], None]:
    """One member that the unpacking must refuse."""
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo()
        if kind == "absolute":
            add_file(tar, "/etc/evil", b"x")
        elif kind == "dotdot":
            add_file(tar, "lib/../../evil", b"x")
        elif kind == "symlink-out":
            info.name, info.type, info.linkname = "escape", tarfile.SYMTYPE, "../../../../etc"
            tar.addfile(info)
        elif kind == "symlink-abs":
            info.name, info.type, info.linkname = "escape", tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "below-symlink":
            info.name, info.type, info.linkname = "inside", tarfile.SYMTYPE, "lib"
            tar.addfile(info)
            add_file(tar, "inside/file", b"x")
        elif kind == "hardlink-out":
            info.name, info.type, info.linkname = "passwd", tarfile.LNKTYPE, "/etc/passwd"
            tar.addfile(info)
        elif kind == "device":
            info.name, info.type, info.devmajor, info.devminor = "null", tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
        elif kind == "fifo":
            info.name, info.type = "pipe", tarfile.FIFOTYPE
            tar.addfile(info)
        elif kind == "size-bomb":  # 8 MiB of zeros, a few KiB compressed, against a 1 MiB limit
            add_file(tar, "zeros.bin", bytes(8 * 1024 * 1024))
        elif kind == "count-bomb":
            for i in range(40):
                add_file(tar, f"many/{i}", b"")
        elif kind == "header-bomb":  # a 2 MiB pax header (tarfile would hold it whole in memory)
            info.name, info.pax_headers = "huge", {"comment": "x" * (2 * 1024 * 1024)}
            tar.addfile(info, io.BytesIO(b""))
    return add


HOSTILE = {  # kind -> what the failure message says
    "absolute": "absolute path", "dotdot": "'..' component", "symlink-out": "outside the release",
    "symlink-abs": "outside the release", "below-symlink": "below the symlink", "hardlink-out": "hard link",
    "device": "character device", "fifo": "FIFO", "size-bomb": "more than 1048576 bytes",
    "count-bomb": "more than 20 members", "header-bomb": "extended header",
}


async def test_each_bad_archive_member_is_refused_at_unpack(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag)
    async with deployed(srv, node, tag, v1):
        first = await srv.healthy(v1)
        for i, (kind, reason) in enumerate(HOSTILE.items()):
            bad = make_release(tmp_path, "robot", f"2.0.{i}", tag=tag, extra_members=hostile(kind))
            srv.serve(bad)
            limits = {"max_unpacked_bytes": 1024 * 1024, "max_members": 20}
            await srv.push([bad.entry(**limits)])
            result = await srv.install_result("robot", bad.version)
            assert result["state"] == "failed" and reason in result["message"], (kind, result)
            assert tagged_pids(tag) == [first["pid"]], kind  # the running release was not touched
            assert node.current("robot").name == f"1.0.0-{v1.sha256[:8]}", kind
            assert leftovers(node, "robot") == [], kind  # no half-written directory
            assert not Path("/etc/evil").exists() and not (tmp_path / "evil").exists()


@pytest.fixture
def small_demos_disk(tmp_path: Path) -> Iterator[Path]:
    """STATE_DIR/demos on a real 1 MiB tmpfs (the rest of the state dir is not); skipped where mounting is
    not allowed."""
    with small_tmpfs(tmp_path / "state" / "demos", "0711") as demos:
        yield demos


async def test_a_full_disk_fails_the_install_and_leaves_the_running_release(rig: DemoRig, tmp_path: Path,
                                                                             small_demos_disk: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag)
    v2 = make_release(tmp_path, "robot", "2.0.0", tag=tag, files={"video.bin": bytes(3 * 1024 * 1024)})
    async with deployed(srv, node, tag, v1, v2, push=[v1.entry()]):
        first = await srv.healthy(v1)
        await srv.push([v2.entry()])
        result = await srv.install_result("robot", "2.0.0")
        assert result["state"] == "failed" and "disk full while unpacking" in result["message"], result
        assert "No space left on device" in result["message"]
        assert tagged_pids(tag) == [first["pid"]]
        assert node.current("robot").name == f"1.0.0-{v1.sha256[:8]}"
        assert leftovers(node, "robot") == []
        # the space is back: a new deployment of a release that fits goes through
        v3 = make_release(tmp_path, "robot", "3.0.0", tag=tag)
        srv.serve(v3)
        await srv.push([v3.entry()])
        await srv.healthy(v3)


async def test_a_release_that_never_becomes_healthy_is_rolled_back(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag)
    v2 = make_release(tmp_path, "robot", "2.0.0", "silent", tag=tag, heartbeat_s=1, start_timeout_s=4)
    async with deployed(srv, node, tag, v1, v2, push=[v1.entry()]):
        first = await srv.healthy(v1)
        entry = v2.entry()
        await srv.push([entry])
        result = await srv.install_result("robot", "2.0.0")
        assert result["state"] == "rolled_back", result
        assert "did not become healthy within 4 s" in result["message"]
        assert "version 1.0.0 runs again" in result["message"]
        back = await srv.status_is("robot", lambda s: s["version"] == "1.0.0" and s["state"] == "healthy",
                                   30, "1.0.0 healthy again")
        assert back["pid"] != first["pid"] and tagged_pids(tag) == [back["pid"]]
        assert node.current("robot").name == f"1.0.0-{v1.sha256[:8]}"
        assert not (node.demo_dir("robot") / "releases" / f"2.0.0-{v2.sha256[:8]}").exists()
        # the same rollout pushed again (a reconnect): its result is said again, nothing is retried
        downloads = len(srv.requests)
        await srv.push([entry])
        await srv.wait(lambda: len(srv.installs("robot", "2.0.0")) and srv.installs("robot", "2.0.0")[-1]
                       is not result, 20, "the result said again")
        assert srv.installs("robot", "2.0.0")[-1]["state"] == "rolled_back"
        assert len(srv.requests) == downloads


async def test_removed_from_the_desired_set_it_stops_and_its_data_stays(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag, keep=["state/"])
    async with deployed(srv, node, tag, v1):
        await srv.healthy(v1)
        await srv.push([{"name": "robot", "version": "x"}])  # a bad entry is not a removal
        await srv.wait(lambda: [m for m in srv.installs("robot") if "bad demos_desired" in m["message"]], 20,
                       "the bad entry refused")
        assert len(tagged_pids(tag)) == 1
        await node.stop()  # a demo the daemon took back after a restart is removed as well
        node.daemon.start()
        await srv.connected(2)
        await srv.push([])
        await srv.wait(lambda: [m for m in srv.installs("robot") if m["state"] == "removed"], 30, "removed")
        assert tagged_pids(tag) == []
        assert srv.status("robot")["state"] == "stopped"
        assert not (node.demo_dir("robot") / "releases").exists()
        assert (node.demo_dir("robot") / "data" / "state" / "count").read_text() == "1"


async def test_a_new_push_supersedes_an_install_in_progress(rig: DemoRig, tmp_path: Path) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag)
    v2 = make_release(tmp_path, "robot", "2.0.0", tag=tag)
    node.daemon.env["DVIC_NODE_TEST_INSTALL_PAUSE"] = "starting@2.0.0"  # 2.0.0 started, not yet healthy
    async with deployed(srv, node, tag, v1, v2, push=[v1.entry()]):
        await srv.healthy(v1)
        await srv.push([v2.entry()])
        await srv.wait(lambda: "test pause" in node.daemon.log(), 30, "2.0.0 starting")
        assert node.current("robot").name.startswith("2.0.0")
        said = len(srv.installs("robot", "1.0.0"))
        await srv.push([v1.entry()])  # the operator goes back before 2.0.0 is done
        result = await srv.install_result("robot", "2.0.0")
        assert result["state"] == "failed" and result["message"] == "superseded by version 1.0.0", result
        await srv.wait(lambda n=said: len(srv.installs("robot", "1.0.0")) > n, 30, "1.0.0 answered")
        assert srv.installs("robot", "1.0.0")[-1]["state"] == "healthy"
        back = await srv.status_is("robot", lambda s: s["version"] == "1.0.0" and s["state"] == "healthy", 30,
                                   "1.0.0 running again")
        assert tagged_pids(tag) == [back["pid"]]
        assert node.current("robot").name.startswith("1.0.0")
        assert not (node.demo_dir("robot") / "releases" / f"2.0.0-{v2.sha256[:8]}").exists()


KILL_STATES = ["downloading", "verifying", "installing", "stopping_old", "starting", "rolling_back"]


@pytest.mark.parametrize("state", KILL_STATES)
async def test_kill_9_of_the_daemon_at_an_install_state_finishes_or_rolls_back(rig: DemoRig, tmp_path: Path,
                                                                              state: str) -> None:
    srv, node, tag = rig.srv, rig.node, rig.tag
    v1 = make_release(tmp_path, "robot", "1.0.0", tag=tag)
    mode = "silent" if state == "rolling_back" else "run"  # rolling back: 2.0.0 never becomes healthy
    health = {"heartbeat_s": 1, "start_timeout_s": 3} if mode == "silent" else {}
    v2 = make_release(tmp_path, "robot", "2.0.0", mode, tag=tag, files={"assets.bin": os.urandom(700 * 1024)},
                      **health)  # several download chunks
    node.daemon.env["DVIC_NODE_TEST_INSTALL_PAUSE"] = f"{state}@2.0.0"
    async with deployed(srv, node, tag, v1, v2, push=[v1.entry()]):
        await srv.healthy(v1)
        await srv.push([v2.entry()])
        await srv.wait(lambda: "test pause" in node.daemon.log(), 30, f"the pause at {state}")
        node.daemon.kill()
        if state == "installing":  # killed in the middle of unpacking: a half-written temp directory
            assert leftovers(node, "robot") == [f".tmp-2.0.0-{v2.sha256[:8]}"]
        del node.daemon.env["DVIC_NODE_TEST_INSTALL_PAUSE"]
        node.daemon.start()
        result = await srv.install_result("robot", "2.0.0")
        expected = "rolled_back" if state == "rolling_back" else "healthy"
        assert result["state"] == expected, result
        version = "1.0.0" if state == "rolling_back" else "2.0.0"
        status = await srv.status_is("robot", lambda s: s["version"] == version and s["state"] == "healthy",
                                     30, f"{version} healthy")
        assert tagged_pids(tag) == [status["pid"]]  # one process: never two releases at once
        current = node.current("robot")
        assert current.name.startswith(version) and (current / "dvic-demo.toml").exists()
        if version == "2.0.0":
            assert (current / "assets.bin").stat().st_size == 700 * 1024
        assert leftovers(node, "robot") == []
        if state == "downloading":  # the partial download was resumed, not started again
            assert [r["range"] for r in srv.requests if r["sha256"] == v2.sha256][-1].startswith("bytes=")
