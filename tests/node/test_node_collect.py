"""What the daemon collects: metrics and facts (psutil and /proc), system logs, Docker containers."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from pathlib import Path

import dvic_node
import pytest
from aiohttp import web

# -- metrics and facts -------------------------------------------------------------------------

@pytest.mark.parametrize("use_psutil", [False, True], ids=["proc", "psutil"])
def test_metrics_sample_has_the_protocol_shape(use_psutil: bool) -> None:
    if use_psutil and dvic_node.psutil is None:
        pytest.skip("psutil not installed")
    c = dvic_node.MetricsCollector(use_psutil=use_psutil)
    sum(i * i for i in range(200_000))  # some CPU time between the two readings
    m = c.collect()
    assert m["type"] == "metrics" and abs(m["ts"] - time.time()) < 5
    assert 0.0 <= m["cpu"]["total"] <= 100.0 and len(m["cpu"]["per_core"]) == os.cpu_count()
    assert len(m["load"]) == 3
    assert m["mem"]["total"] > 0 and 0 <= m["mem"]["percent"] <= 100
    assert set(m["swap"]) == {"total", "used", "percent"}
    assert all({"mount", "total", "used", "percent"} <= set(d) for d in m["disks"])
    assert all(isinstance(t["celsius"], float) for t in m.get("temps", []))
    assert m["uptime"] > 0 and m["procs"] > 1
    assert all(isinstance(m["net"][k], int) and m["net"][k] >= 0 for k in ("rx_bytes", "tx_bytes"))  # counters
    assert len(json.dumps(m)) < 64 * 1024


@pytest.mark.parametrize("without_psutil", [False, True], ids=["psutil", "proc"])
def test_facts(monkeypatch: pytest.MonkeyPatch, without_psutil: bool) -> None:
    if without_psutil:
        monkeypatch.setattr(dvic_node, "psutil", None)
    facts = dvic_node.collect_facts()
    assert facts["hostname"] and facts["kernel"] and facts["arch"] and facts["python"]
    assert facts["boot_time"] > 0
    assert all(isinstance(v, str) and len(v) <= 256 for k, v in facts.items() if k not in ("ips", "macs",
                                                                                          "boot_time"))
    assert isinstance(facts["ips"], list) and isinstance(facts["macs"], list)


def test_raspberry_pi_vcgencmd_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "vcgencmd"  # a stand-in for the firmware tool, run as a real program
    tool.write_text('#!/bin/sh\ncase "$1" in measure_temp) echo "temp=48.3\'C";; '
                    'get_throttled) echo "throttled=0x50005";; esac\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    m = dvic_node.MetricsCollector(use_psutil=False).collect()
    assert {"name": "vcgencmd", "celsius": 48.3} in m["temps"]
    assert m["throttled"] == "0x50005"


def test_backoff_is_full_jitter_between_1_and_60_seconds() -> None:
    for attempt in range(20):
        for _ in range(20):
            d = dvic_node.backoff_delay(attempt, 1.0, 60.0)
            assert 1.0 <= d <= min(60.0, 2 ** attempt)
    assert max(dvic_node.backoff_delay(10) for _ in range(200)) > 30  # jitter spreads the fleet
    assert dvic_node.next_attempt(7, None, 100.0) == 7  # never welcomed: keep backing off
    assert dvic_node.next_attempt(7, 95.0, 100.0) == 7  # welcomed, but dropped within 10 s
    assert dvic_node.next_attempt(7, 80.0, 100.0) == 0  # a session that worked: start over at 1 s


# -- system logs -------------------------------------------------------------------------------

def spool_at(path: Path) -> dvic_node.Spool:
    s = dvic_node.Spool(str(path))
    s.open()
    return s


def test_syslog_file_is_followed_from_its_end_and_rate_bounded(tmp_path: Path) -> None:
    syslog = tmp_path / "syslog"
    syslog.write_text("Nov 24 10:00:00 host old[1]: history is not shipped\n")
    spool = spool_at(tmp_path / "spool")
    sl = dvic_node.SystemLogs(spool, str(syslog), rate=1.0, burst=5)
    assert sl.resolve() == str(syslog)
    assert sl.poll_file(str(syslog)) == 0
    with open(syslog, "a") as f:
        f.write("Nov 24 10:00:01 host sshd[42]: Accepted publickey for pi\n")
        f.write("2026-11-24T10:00:02.123+00:00 host kernel: usb 1-1: new device\n")
        for i in range(20):
            f.write(f"Nov 24 10:00:03 host spam[7]: flood {i}\n")
    assert sl.poll_file(str(syslog)) == 5  # the burst; the rest is counted, not shipped
    lines = spool.read(1)
    assert [(ln["unit"], ln["msg"], ln["source"]) for ln in lines[:2]] == [
        ("sshd", "Accepted publickey for pi", "system"), ("kernel", "usb 1-1: new device", "system")]
    assert sl.limiter.refused == 17
    # restart: resumes after what was read, never re-sends the history
    again = dvic_node.SystemLogs(spool_at(tmp_path / "spool"), str(syslog), rate=100, burst=100)
    with open(syslog, "a") as f:
        f.write("Nov 24 10:00:04 host cron[9]: tick\n")
    assert again.poll_file(str(syslog)) == 1


def test_journal_entries_become_system_lines() -> None:
    line = dvic_node.journal_entry_to_line({"MESSAGE": [104, 105, 255], "PRIORITY": "3",
                                            "SYSLOG_IDENTIFIER": "app", "__REALTIME_TIMESTAMP": "1764000000123456"})
    assert line == {"ts": 1764000000.123, "source": "system", "unit": "app", "level": "ERROR",
                    "msg": "hi\ufffd", "truncated": False}
    assert dvic_node.journal_entry_to_line({"PRIORITY": "6"}) is None
    assert dvic_node.journal_entry_to_line({"MESSAGE": "x", "PRIORITY": "bad", "_SYSTEMD_UNIT": "a.service"})[
        "level"] == "INFO"


async def test_journal_is_followed_through_journalctl_with_its_cursor(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    args_file = tmp_path / "args"
    entries = [{"__CURSOR": "c1", "MESSAGE": "disk ok", "PRIORITY": "6", "SYSLOG_IDENTIFIER": "smartd",
                "__REALTIME_TIMESTAMP": "1764000000000000"},
               {"__CURSOR": "c2", "MESSAGE": "mine", "PRIORITY": "4", "_PID": str(os.getpid())},
               {"__CURSOR": "c3", "MESSAGE": "oom", "PRIORITY": "2", "_SYSTEMD_UNIT": "kernel"}]
    script = bindir / "journalctl"  # a stand-in journalctl, run as a real program
    script.write_text("#!/bin/sh\n" f'echo "$@" > {args_file}\n'
                      + "".join(f"echo '{json.dumps(e)}'\n" for e in entries) + "echo 'not json'\nexec sleep 30\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    spool = spool_at(tmp_path / "spool")
    sl = dvic_node.SystemLogs(spool, "journal", rate=100, burst=100)
    stop = asyncio.Event()
    task = asyncio.ensure_future(sl.run_journal(stop))
    try:
        for _ in range(500):  # bounded poll for the third entry's cursor
            if spool.positions.get("system") == {"cursor": "c3"}:
                break
            await asyncio.sleep(0.01)
        assert [(ln["unit"], ln["msg"], ln["level"]) for ln in spool.read(1)] == [
            ("smartd", "disk ok", "INFO"), ("kernel", "oom", "CRITICAL")]  # our own pid's entry skipped
        assert "-n 0" in args_file.read_text()  # first start: from now on, not the whole history
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    spool.checkpoint()
    sl2 = dvic_node.SystemLogs(spool_at(tmp_path / "spool"), "journal", rate=100, burst=100)
    task = asyncio.ensure_future(sl2.run_journal(stop := asyncio.Event()))
    try:
        for _ in range(500):
            if args_file.exists() and "--after-cursor=c3" in args_file.read_text():
                break
            await asyncio.sleep(0.01)
        assert "--after-cursor=c3" in args_file.read_text()  # a restart continues after the last entry
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- Docker ------------------------------------------------------------------------------------

async def test_docker_containers_are_found_through_the_engine_api(tmp_path: Path) -> None:
    """A stand-in Engine API on a unix socket; the "container" is this very process, so its root
    (/proc/<pid>/root) is ours and its /tmp is a test dir: the same path the daemon uses for real ones."""
    cid = "4f" * 32
    me = os.getpid()
    inner = tmp_path / "ctmp"
    inner.mkdir()

    async def containers(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked, as Docker answers
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(json.dumps([{"Id": cid, "Names": ["/robot"]}, {"Id": "not-an-id"}]).encode())
        await resp.write_eof()
        return resp

    async def inspect(request: web.Request) -> web.Response:
        if request.match_info["id"] != cid:
            return web.json_response({"message": "no such container"}, status=404)
        return web.json_response({"Id": cid, "Name": "/robot", "State": {"Pid": me, "Running": True}})

    app = web.Application()
    app.router.add_get("/containers/json", containers)
    app.router.add_get("/containers/{id}/json", inspect)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = str(tmp_path / "docker.sock")
    site = web.UnixSite(runner, sock)
    await site.start()
    try:
        loop = asyncio.get_running_loop()
        dirs = await loop.run_in_executor(None, dvic_node.docker_log_dirs, sock, str(inner))
        assert len(dirs) == 1
        d = dirs[0]
        assert d.path == f"/proc/{me}/root{inner}" and d.proc_root == f"/proc/{me}/root/proc"
        assert d.container == "robot" and d.key_prefix == f"docker:{cid[:12]}:"
        token = "00000000000000ee"
        (inner / f"dvic_log_{token}").write_text(
            json.dumps({"dvic_log": 1, "token": token, "name": "in-container", "pid": me, "pid_start": None})
            + "\n" + json.dumps({"ts": time.time(), "level": "INFO", "msg": "from the container"}) + "\n")
        spool = spool_at(tmp_path / "spool")
        sent: list[dict] = []
        w = dvic_node.DemoWatcher(spool, sent.append, lambda m, d: None)
        w.set_logdirs(dirs)
        w.scan()
        w.poll()
        w.check_liveness()
        assert [ln["msg"] for ln in spool.read(1)] == ["from the container"]
        assert sent[0]["state"] == "started" and sent[0]["header"]["container"] == "robot"
        with pytest.raises(dvic_node.DockerError, match="404"):
            await loop.run_in_executor(None, dvic_node.docker_get, sock, "/containers/nope/json")
    finally:
        await runner.cleanup()
    with pytest.raises(dvic_node.DockerError, match="cannot talk to Docker"):
        dvic_node.docker_get(sock, "/containers/json")


def test_chunked_decoding_rejects_garbage() -> None:
    assert dvic_node.decode_chunked(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") == b"abcde"
    with pytest.raises(dvic_node.DockerError):
        dvic_node.decode_chunked(b"zz\r\nabc")
    assert sys.version_info >= (3, 8)
