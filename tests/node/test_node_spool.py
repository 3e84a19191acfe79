"""The on-disk spool: seq numbering, acks, reading batches, the size bound and recovery after a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dvic_node
import pytest

NODE_SCRIPT = Path(dvic_node.__file__).resolve()


def line(i: int, size: int = 10) -> dict:
    return {"ts": 1.0, "source": "demo", "unit": "u", "demo": "t", "level": "INFO", "msg": f"{i}:" + "m" * size}


def opened(path: Path, max_bytes: int = dvic_node.DEFAULT_SPOOL_BYTES) -> dvic_node.Spool:
    spool = dvic_node.Spool(str(path), max_bytes)
    spool.open()
    return spool


def test_seq_numbers_acks_and_batches(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    assert spool.append([line(i) for i in range(1, 8)]) == 7
    batch = spool.read(1, max_lines=3)
    assert [r["seq"] for r in batch] == [1, 2, 3]
    assert [r["seq"] for r in spool.read(4, max_lines=3)] == [4, 5, 6]  # sequential read continues
    assert [r["seq"] for r in spool.read(2, max_lines=2)] == [2, 3]  # and a reset re-reads
    assert batch[0]["msg"].startswith("1:") and "_p" not in batch[0]
    spool.ack(5)
    assert [r["seq"] for r in spool.read(1)] == [1, 2, 3, 4, 5, 6, 7]  # ack forgets whole segments only
    assert spool.pending == 7 and spool.acked == 5


def test_batches_are_bounded_in_bytes(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([line(i, size=60 * 1024) for i in range(40)])
    batch = spool.read(1, max_lines=500, max_bytes=dvic_node.BATCH_BYTES)
    assert 1 <= len(batch) < 40
    assert len(json.dumps({"type": "logs", "lines": batch})) < dvic_node.MAX_FRAME


def test_restart_keeps_seq_unacked_lines_and_positions(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([line(1), line(2)], {"demo:a": {"ino": 1, "dev": 2, "off": 100}})
    spool.checkpoint()
    spool.append([line(3)], {"demo:a": {"ino": 1, "dev": 2, "off": 150}})  # after the checkpoint
    spool.ack(1)
    # no close(): like kill -9, only what is on disk counts
    again = opened(tmp_path)
    assert again.next_seq == 4
    assert again.positions["demo:a"]["off"] == 150  # replayed from the spooled line
    assert [r["seq"] for r in again.read(2)] == [2, 3]


def test_acked_segments_are_deleted(tmp_path: Path) -> None:
    spool = dvic_node.Spool(str(tmp_path), 64 * 1024)
    spool.open()
    for i in range(200):
        spool.append([line(i, size=500)])
    segs_before = len(list(tmp_path.glob("seg-*.jsonl")))
    assert segs_before > 2
    spool.ack(200)
    assert len(list(tmp_path.glob("seg-*.jsonl"))) == 1  # the one being written stays
    again = opened(tmp_path, 64 * 1024)
    assert again.read(1) == [] and again.next_seq == 201


def test_full_spool_drops_oldest_and_records_the_gap(tmp_path: Path) -> None:
    spool = dvic_node.Spool(str(tmp_path), 32 * 1024)
    spool.open()
    for i in range(1, 301):
        spool.append([line(i, size=200)])
    assert spool.size <= 32 * 1024 + spool.segment_bytes
    gaps = spool.pop_gaps()
    assert len(gaps) == 1 and gaps[0]["first_seq"] == 1  # adjacent drops merge into one gap
    dropped = sum(g["dropped"] for g in gaps)
    remaining = spool.read(1, max_lines=500, max_bytes=10**9)
    assert dropped + len(remaining) == 300  # every line is either kept or counted
    assert remaining[-1]["seq"] == 300 and remaining[0]["seq"] == gaps[-1]["last_seq"] + 1


def test_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([line(1), line(2)])
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b'{"seq":3,"ts":1.0,"sou')  # power loss mid-write
    again = opened(tmp_path)
    assert [r["seq"] for r in again.read(1)] == [1, 2]
    assert again.append([line(3)]) == 3
    assert [r["seq"] for r in again.read(1)] == [1, 2, 3]


def test_unreadable_state_file_falls_back_to_segments(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([line(1), line(2)])
    (tmp_path / "state.json").write_text("{not json")
    again = opened(tmp_path)
    assert again.next_seq == 3


def test_raise_seq_never_reuses_server_numbers(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.raise_seq(41)  # the server already stored up to 41 (our state was lost)
    assert spool.append([line(1)]) == 42


def test_write_failure_leaves_no_torn_line(tmp_path: Path) -> None:
    """A full disk (here: RLIMIT_FSIZE) makes append raise with nothing written; later appends work."""
    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(NODE_SCRIPT.parent)!r})
        import dvic_node
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        spool = dvic_node.Spool({str(tmp_path)!r}, 10**9)
        spool.open()
        spool.append([{{"msg": "small", "level": "INFO"}}])
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        try:
            spool.append([{{"msg": "x" * 5000, "level": "INFO"}}])
        except OSError as exc:
            print("failed", exc.errno)
        spool.append([{{"msg": "after", "level": "INFO"}}])
        print([r["msg"] for r in spool.read(1)])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "failed 27" in out.stdout  # EFBIG
    assert "['small', 'after']" in out.stdout


@pytest.mark.parametrize("bad", [b"\xff\xfe\n", b"[1,2]\n", b'{"no_seq": 1}\n'])
def test_unreadable_spool_lines_are_skipped(tmp_path: Path, bad: bytes) -> None:
    spool = opened(tmp_path)
    spool.append([line(1)])
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as f:
        f.write(bad)
    spool2 = opened(tmp_path)
    spool2.append([line(3)])
    assert [r["seq"] for r in spool2.read(1)] == [1, 2]


def test_odd_spooled_records_are_normalised_for_the_wire(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append([{"ts": "yesterday", "source": "alien", "level": "loud", "msg": {"k": 1}, "unit": 7},
                  {"ts": 5.0, "source": "demo", "demo": "t" * 100, "level": "ERROR", "msg": "ok"}])
    a, b = spool.read(1)
    assert a["source"] == "daemon" and a["level"] == "INFO" and a["msg"] == '{"k": 1}' and a["unit"] == "7"
    assert isinstance(a["ts"], float) and "demo" not in a
    assert b["ts"] == 5.0 and len(b["demo"]) == 64 and b["truncated"] is False
