"""ESP32 log lines sent with the keep-alive, against the real server (docs/esp32.md).

The board's logging core (lib/esp32/dvic_board_log.h) runs on the host in tests/esp32/board_host.c;
its one HTTP function hands each body to this test, which POSTs it over HTTPS to a real
dvic-central exactly as the board would (bearer token, the server's CA) and hands the answer back,
or drops it to play a lost answer.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import CentralServer
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
SLOT_BYTES = 144  # a ring slot for max_msg 120: 16 bytes of head + 121, rounded up to 8


@pytest.fixture(scope="module")
def board_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc is missing: .ci/run must install it")
        pytest.skip("gcc is missing")
    out = tmp_path_factory.mktemp("board") / "board_host"
    done = subprocess.run(
        ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", f"-I{REPO / 'lib/esp32'}", str(REPO / "tests/esp32/board_host.c"),
         "-o", str(out)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


class Board:
    """One run of the host board: a boot, with its own ring and boot token."""

    def __init__(self, binary: Path, server: CentralServer, bundle: dict[str, Any], ring_bytes: int = 4096,
                 name: str = "board-demo") -> None:
        self.server, self.bundle = server, bundle
        self.proc = subprocess.Popen([str(binary), str(ring_bytes), "120", name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _line(self) -> bytes:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the board exited ({self.proc.poll()})"
        return line

    def info(self, *texts: str) -> None:
        for text in texts:
            self.log(20, text)

    def log(self, level: int, text: str | bytes) -> None:
        raw = text.encode() if isinstance(text, str) else text
        escaped = b"".join(b"\\x%02x" % b if b < 0x20 or b in b"\\" or b >= 0x80 and isinstance(text, bytes)
                           else bytes([b]) for b in raw)
        self._write(b"log %d %s\n" % (level, escaped))

    def send(self, *, lose_answer: bool = False) -> tuple[int, dict[str, Any], Any]:
        """One keep-alive; returns (status the board saw, the body it sent, the server's answer)."""
        self._write(b"send\n")
        head = self._line().split()
        assert head[0] == b"POST", head
        assert self.proc.stdout is not None
        body = self.proc.stdout.read(int(head[1]))
        status, answer = post_keepalive(self.server, self.bundle, body)
        if lose_answer:
            self._write(b"ANSWER 0 0\n")
        else:
            raw = json.dumps(answer).encode()
            self._write(b"ANSWER %d %d\n" % (status, len(raw)) + raw)
        seen = int(self._line().split()[1])
        return seen, json.loads(body), answer

    def stats(self) -> dict[str, Any]:
        self._write(b"stats\n")
        return json.loads(self._line())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0  # (the sanitizers exit non-zero on an error or a leak)

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post_keepalive(server: CentralServer, bundle: dict[str, Any], body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(bundle["keepalive_url"], data=body, method="POST",
                                 headers={"Authorization": "Bearer " + bundle["token"],
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=server.ssl_context, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def boards_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """Shared by the tests: each enrolls its own board (their limits are per node)."""
    with CentralServer(tmp_path_factory.mktemp("esp32") / "central") as server:
        yield server


@pytest.fixture
def board_node(boards_server: CentralServer, tmp_path: Path) -> tuple[CentralServer, dict[str, Any]]:
    """The server and the bundle of a board enrolled for this test (named after it)."""
    return boards_server, boards_server.enroll(tmp_path.name, kind="esp32")


@pytest.fixture
def board(board_binary: Path, board_node: tuple[CentralServer, dict[str, Any]]) -> Iterator[Board]:
    """The test's board booted (a 4 KiB ring); it must exit cleanly at the end."""
    with Board(board_binary, *board_node) as booted:
        yield booted


def stored(server: CentralServer, bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The board's demo lines the server stored, by seq."""
    return server.logs(node=bundle["name"], source="demo")


def test_board_lines_are_stored_as_demo_lines_with_their_levels(board: Board) -> None:
    server, bundle = board.server, board.bundle
    status, body, answer = board.send()  # the first contact only learns where seq goes on
    assert status == 200 and body["logs"]["lines"] == [] and answer["logs"] == {"last_seq": 0}
    before = time.time()
    board.log(20, "hello from the board")
    board.log(40, 'motor "left" stalled\nretrying')
    board.log(30, b"sensor sent \xff\xfe junk")
    board.log(10, "x" * 300)  # longer than the ring keeps (120 bytes)
    status, body, answer = board.send()
    after = time.time()
    assert status == 200 and answer["logs"] == {"last_seq": 4}
    lines = stored(server, bundle)
    assert [(line["seq"], line["level"], line["msg"]) for line in lines] == [
        (1, "INFO", "hello from the board"),
        (2, "ERROR", 'motor "left" stalled\nretrying'),
        (3, "WARNING", "sensor sent \ufffd\ufffd junk"),
        (4, "DEBUG", "x" * 120),
    ]
    token = board.stats()["token"]
    assert {(line["unit"], line["demo"]) for line in lines} == {("board-demo", token)}
    assert all(before - 1 <= line["ts"] <= after + 1 for line in lines)
    assert body["logs"]["lines"][3]["truncated"] is True
    assert board.stats()["count"] == 0
    assert server.node(bundle["name"])["state"] == "online"


def test_a_lost_answer_is_sent_again_and_stored_once(board: Board) -> None:
    server, bundle = board.server, board.bundle
    board.send()
    board.info("one", "two")
    status, _, answer = board.send(lose_answer=True)  # stored, but the board never hears so
    assert status == 0 and answer["logs"]["last_seq"] == 2
    assert board.stats()["count"] == 2
    board.info("three")
    status, body, _ = board.send()
    assert status == 200 and [line["seq"] for line in body["logs"]["lines"]] == [1, 2, 3]
    assert [(line["seq"], line["msg"]) for line in stored(server, bundle)] == [(1, "one"), (2, "two"), (3, "three")]
    assert board.stats()["count"] == 0


def test_a_full_ring_drops_the_oldest_and_the_server_records_the_gap(board_binary: Path, board_node) -> None:
    server, bundle = board_node
    with Board(board_binary, server, bundle, ring_bytes=4 * SLOT_BYTES) as board:
        board.send()
        for i in range(10):
            board.log(20, f"line {i}")
        assert board.stats()["dropped"] == 6
        status, body, _ = board.send()
        assert status == 200 and body["logs"]["gap"] == {"first_seq": 1, "last_seq": 6}
        assert [(line["seq"], line["msg"]) for line in stored(server, bundle)] == [(7, "line 6"), (8, "line 7"),
                                                                          (9, "line 8"), (10, "line 9")]
        status, events = server.api("GET", f"/api/v1/events?node={bundle['name']}&kind=log_gap")
        assert status == 200
        (event,) = events["events"]
        assert event["data"] == {"dropped": 6, "first_seq": 1, "last_seq": 6}
        _, body, _ = board.send()
        assert "gap" not in body["logs"]  # reported once


def test_a_rebooted_board_goes_on_above_the_stored_lines(board_binary: Path, board_node) -> None:
    server, bundle = board_node
    with Board(board_binary, server, bundle) as first:
        first.send()
        first.info("before the reboot", "still before")
        assert first.send()[0] == 200
    with Board(board_binary, server, bundle) as second:
        _, _, answer = second.send()
        assert answer["logs"]["last_seq"] == 2
        second.log(40, "after the reboot")
        assert second.send()[0] == 200
        lines = stored(server, bundle)
        assert [(line["seq"], line["msg"]) for line in lines] == [
            (1, "before the reboot"), (2, "still before"), (3, "after the reboot")]
        assert len({line["demo"] for line in lines}) == 2  # one token per boot


def test_a_rate_limited_keepalive_keeps_the_lines_for_the_next_one(board: Board) -> None:
    server, bundle = board.server, board.bundle
    statuses = [board.send()[0] for _ in range(11)]  # the burst is 10 keep-alives per node
    assert statuses[-1] == 429, statuses
    board.log(20, "patient line")
    status, body, answer = board.send()
    assert status == 429 and answer["error"]["code"] == "rate_limited"
    assert len(body["logs"]["lines"]) == 1 and board.stats()["count"] == 1 and stored(server, bundle) == []
    board.log(20, "second line")
    wait_for(lambda: board.send()[0] == 200, 30, "a keep-alive within the rate", interval=0.5)
    assert [line["msg"] for line in stored(server, bundle)] == ["patient line", "second line"]
    assert board.stats()["count"] == 0


@pytest.mark.parametrize(
    "logs, message",
    [
        ({"v": 2, "token": "t", "now_ms": 1, "lines": []}, "logs.v: version 2 is not supported"),
        ({"v": 1, "now_ms": 1, "lines": []}, "logs.token"),
        ({"v": 1, "token": "t", "lines": []}, "logs.now_ms"),
        ({"v": 1, "token": "t", "now_ms": 1, "lines": {}}, "logs.lines"),
        ({"v": 1, "token": "t", "now_ms": 9, "lines": [{"seq": 0, "ms": 1, "level": "INFO", "msg": "m"}]},
         "logs.lines[0].seq"),
        ({"v": 1, "token": "t", "now_ms": 9, "lines": [{"seq": 1, "ms": 1, "level": "LOUD", "msg": "m"}]},
         "logs.lines[0].level"),
        ({"v": 1, "token": "t", "now_ms": 9, "lines": [{"seq": 1, "ms": 1, "level": "INFO", "msg": 5}]},
         "logs.lines[0].msg"),
        ({"v": 1, "token": "t", "now_ms": 9, "lines": [{"seq": 1, "ms": 1, "level": "INFO", "msg": "m"}] * 501},
         "logs.lines"),
        ({"v": 1, "token": "t", "now_ms": 9, "lines": [], "gap": {"first_seq": 5, "last_seq": 2}},
         "logs.gap.last_seq"),
    ],
)
def test_a_bad_logs_object_gets_a_clear_400_and_stores_nothing(board_node, logs: dict[str, Any],
                                                                message: str) -> None:
    server, bundle = board_node
    status, answer = post_keepalive(server, bundle, json.dumps({"uptime": 3, "logs": logs}).encode())
    assert status == 400 and answer["error"]["code"] == "bad_field", answer
    assert message in answer["error"]["message"]
    assert stored(server, bundle) == []


def test_a_body_near_64_kib_is_read_whole_and_stored(board_node) -> None:
    # A slow link delivers it in pieces: one read() of the request gave only what had arrived.
    server, bundle = board_node
    lines = [{"seq": i + 1, "ms": 1, "level": "INFO", "msg": f"{i:04d} " + "z" * 150} for i in range(300)]
    body = json.dumps({"logs": {"v": 1, "token": "t", "now_ms": 2, "lines": lines}}).encode()
    assert 48 * 1024 < len(body) <= 64 * 1024
    url = urllib.parse.urlsplit(bundle["keepalive_url"])
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=server.ssl_context, timeout=30)
    try:
        conn.putrequest("POST", url.path)
        for name, value in (("Authorization", "Bearer " + bundle["token"]), ("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))):
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(body[:20000])
        time.sleep(0.3)  # the rest comes later, as over a slow Wi-Fi link (shapes the traffic, waits for nothing)
        conn.send(body[20000:])
        resp = conn.getresponse()
        status, answer = resp.status, json.loads(resp.read())
    finally:
        conn.close()
    assert status == 200 and answer["logs"]["last_seq"] == 300, answer
    assert len(stored(server, bundle)) == 300


def test_a_keepalive_body_over_64_kib_is_refused(board_node) -> None:
    server, bundle = board_node
    lines = [{"seq": i + 1, "ms": 1, "level": "INFO", "msg": "z" * 200} for i in range(400)]
    body = json.dumps({"logs": {"v": 1, "token": "t", "now_ms": 2, "lines": lines}}).encode()
    assert len(body) > 64 * 1024
    status, answer = post_keepalive(server, bundle, body)
    assert status == 413 and answer["error"]["code"] == "too_large"
    assert stored(server, bundle) == []


def test_enqueueing_a_record_takes_under_20_microseconds(board_binary: Path, board_node) -> None:
    server, bundle = board_node
    with Board(board_binary, server, bundle, ring_bytes=64 * 1024) as board:
        board._write(b"bench 200000\n")
        ns = json.loads(board._line())["ns_per_log"]
        assert ns < 20_000, f"{ns:.0f} ns per record (sanitizers on)"


def test_the_core_builds_as_cpp11_too(tmp_path: Path) -> None:
    # Arduino sketches are C++: the header must build there without warnings as well.
    if shutil.which("g++") is None:
        pytest.skip("g++ is missing") if os.environ.get("CI") != "true" else pytest.fail("g++ is missing")
    done = subprocess.run(
        ["g++", "-x", "c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{REPO / 'lib/esp32'}",
         str(REPO / "tests/esp32/board_host.c"), "-o", str(tmp_path / "board_cpp")],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
