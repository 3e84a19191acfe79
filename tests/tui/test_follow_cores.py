"""The follow cores without a socket: `CommandTracker` on frames recorded from a real server, and the
log follower's filter, duplicate filter, paging and back-off (tui/api/follow_command.py, follow_logs.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tui.api.follow_command import (
    EXIT_CANCELLED,
    EXIT_UNREACHED,
    POLL_S,
    SERVER_GONE_S,
    SETTLE_POLL_S,
    SETTLE_S,
    CommandTracker,
    LineSplitter,
    Update,
)
from tui.api.follow_logs import GAP_LINES, Backoff, HistoryPages, LogFilter, LogFollower, SeenLines

RECORDED = json.loads((Path(__file__).parent / "frames" / "command_stream.json").read_text())


def recorded(name: str) -> Any:
    return copy.deepcopy(RECORDED[name])


def feed(tracker: CommandTracker, frames: list[dict[str, Any]]) -> list[Update]:
    updates: list[Update] = []
    for frame in frames:
        updates += tracker.on_frame(frame)
    return updates


def printed(updates: list[Update]) -> dict[str, list[tuple[str, str]]]:
    """What a driver shows per node: whole lines, the unterminated last ones once the run finished."""
    lines: dict[str, LineSplitter] = {}
    out: dict[str, list[tuple[str, str]]] = {}
    for update in updates:
        name = update.run.node_name
        splitter = lines.setdefault(name, LineSplitter())
        if update.kind == "output":
            out.setdefault(name, []).extend(splitter.feed(update.stream, update.data))
        elif update.kind == "finished":
            out.setdefault(name, []).extend(splitter.flush())
    return out


LIVE_LINES = [("stdout", "one"), ("stdout", "two"), ("stderr", "err"), ("stdout", "tail")]


def test_a_live_group_run_from_the_post_answer_to_done() -> None:
    tracker = CommandTracker(recorded("live_post"))
    assert [r.state for r in tracker.ordered()] == ["pending", "pending"]
    updates = feed(tracker, recorded("live_frames"))
    assert tracker.done and not tracker.cut
    assert printed(updates) == {"pi-a": LIVE_LINES, "pi-b": LIVE_LINES}
    # Each run finishes once, after its last output, when its final state arrives.
    kinds = [(u.kind, u.run.node_name) for u in updates if u.kind != "output"]
    assert kinds[-2:] == [("finished", "pi-a"), ("finished", "pi-b")]
    assert [r.fields["state"] for r in tracker.ordered()] == ["exited", "exited"]
    assert tracker.exit_status() == 0
    assert tracker.counts() == {"ok": 2}
    assert tracker.summary() == "2/2 ok, 2/2 finished"


def test_every_chunk_is_applied_once_whichever_way_it_comes() -> None:
    tracker = CommandTracker(recorded("live_post"))
    frames = recorded("live_frames")
    outputs = [f for f in frames if f["type"] == "output"]
    # The replay and the live events overlap, and a snapshot holds them all again.
    updates = feed(tracker, [*frames[:4], *outputs, *frames[4:]])
    updates += tracker.on_snapshot(recorded("live_snapshot"))
    updates += feed(tracker, outputs)
    assert [u.chunk for u in updates if u.kind == "output"] == [1, 2, 3, 4, 5, 6, 7]
    assert printed(updates) == {"pi-a": LIVE_LINES, "pi-b": LIVE_LINES}


def test_a_stream_cut_then_snapshots_until_done() -> None:
    tracker = CommandTracker()
    updates = feed(tracker, recorded("cut_frames"))  # the stream broke after "second"
    assert not tracker.done
    tracker.on_cut(now=100.0)
    assert tracker.cut and tracker.keep_trying(100.0 + 30 + SERVER_GONE_S)
    assert not tracker.keep_trying(100.0 + 30 + SERVER_GONE_S + 1)  # the command's timeout is 30 s
    assert tracker.next_read_in(100.0) == POLL_S
    later = tracker.on_snapshot(recorded("cut_snapshot"))
    assert [(u.kind, u.data, u.stored) for u in later] == [("output", "third\n", True), ("finished", "", False)]
    assert tracker.done and tracker.exit_status() == 1
    assert printed(updates + later) == {"pi-b": [("stdout", "first"), ("stdout", "second"), ("stdout", "third")]}


def test_a_snapshot_of_an_older_server_without_chunk_ids_is_read_by_count() -> None:
    tracker = CommandTracker()
    feed(tracker, recorded("cut_frames"))
    snapshot = recorded("cut_snapshot")
    for piece in snapshot["runs"][0]["output"]:
        del piece["chunk"]
    assert [u.data for u in tracker.on_snapshot(snapshot) if u.kind == "output"] == ["third\n"]


def test_a_command_done_before_the_stream_finishes_its_runs_after_the_replay() -> None:
    tracker = CommandTracker()
    frames = recorded("late_frames")
    first = tracker.on_frame(frames[0])
    assert [(u.kind, u.run.state) for u in first] == [("state", "exited")]  # final, output still to come
    assert not tracker.done
    rest = feed(tracker, frames[1:])
    assert [(u.kind, u.data) for u in rest] == [("output", "early\n"), ("finished", "")]
    assert tracker.done and tracker.exit_status() == 3
    assert tracker.report() == []  # one run that simply exited: its status says it all


def test_a_past_command_read_from_the_store_alone() -> None:
    tracker = CommandTracker()
    tracker.on_cut(now=0.0)  # the stream was refused (a command the server no longer follows)
    updates = tracker.on_snapshot(recorded("live_snapshot"))
    assert tracker.command["target"] == "group:g" and tracker.done
    assert printed(updates) == {"pi-a": LIVE_LINES, "pi-b": LIVE_LINES}
    # A stored run names itself `id`/`node_id` too: one run per id, whichever name the source uses.
    assert sorted(r.node for r in tracker.runs.values()) == sorted(r["node_id"] for r in
                                                                    recorded("live_snapshot")["runs"])


def test_states_exit_statuses_and_a_truncated_run() -> None:
    tracker = CommandTracker(recorded("live_post"))
    a, b = (r["run_id"] for r in recorded("live_post")["runs"])
    state = {"type": "state", "run_id": a, "state": "exited", "code": 0, "truncated": True,
             "output_bytes": 1100000}
    assert [u.kind for u in tracker.on_frame(state)] == ["finished"]
    assert tracker.runs[a].fields["truncated"]
    # b never ends: 255 (the server lost track of it), or 130 when Ctrl-C stopped the wait.
    assert tracker.exit_status() == EXIT_UNREACHED
    assert tracker.exit_status(stopped_early=True) == EXIT_CANCELLED
    assert tracker.on_frame({"type": "state", "run_id": b, "state": "timeout"})[0].kind == "finished"
    assert tracker.exit_status() == 124 and tracker.exit_status(cancelling=True) == EXIT_CANCELLED
    assert tracker.counts() == {"ok": 1, "timeout": 1}
    assert tracker.report() == [f"--- {tracker.command['id']}: 1 ok, 1 timeout",
                                "pi-a  exited 0 [output truncated: 1.0M produced, 1 MiB kept]",
                                "pi-b  timeout"]
    assert tracker.on_frame({"type": "state", "run_id": b, "state": "timeout"}) == []  # nothing new
    assert tracker.on_frame({"type": "output", "run_id": "unknown", "chunk": 99, "data": "x"}) == []


def test_line_splitter_keeps_a_bounded_tail() -> None:
    lines = LineSplitter(keep=3)
    assert lines.feed("stdout", "a\nb") == [("stdout", "a")]
    assert lines.feed("stderr", "e") == []
    assert lines.feed("stdout", "\nc\nd\n") == [("stdout", "b"), ("stdout", "c"), ("stdout", "d")]
    assert lines.flush() == [("stderr", "e")]
    assert lines.lines == [("stdout", "c"), ("stdout", "d"), ("stderr", "e")] and lines.dropped == 2
    assert lines.count() == 5


# -- logs ----------------------------------------------------------------------------------------
def line(node: str, seq: int, level: str = "INFO", **more: Any) -> dict[str, Any]:
    return {"node": node, "seq": seq, "ts": 1000.0 + seq, "level": level, "source": "demo", "msg": f"m{seq}", **more}


def test_log_filter_asks_the_server_what_it_applies_to_live_lines() -> None:
    assert LogFilter().query() == {}
    assert LogFilter(node="n1", group="g", demo="tok", source="demo", min_level="WARNING", text="boom").query() == {
        "node": "n1", "demo": "tok", "source": "demo", "level": "WARNING", "q": "boom"}
    assert LogFilter(group="").query() == {"group": ""}  # the nodes without a group
    wanted = LogFilter(demo="tok", min_level="WARNING", text="BOO")
    assert wanted.matches(line("n", 1, "ERROR", demo="tok", msg="a boom"))
    assert not wanted.matches(line("n", 1, "INFO", demo="tok", msg="a boom"))
    assert not wanted.matches(line("n", 1, "ERROR", demo="other", msg="a boom"))
    assert LogFilter(group="g").in_scope("n1", "g") and not LogFilter(group="g").in_scope("n1", None)
    assert LogFilter(node="n1").in_scope("n1") and not LogFilter(node="n1").in_scope("n2")
    cycling = LogFilter()
    cycling.next_level()
    cycling.next_source()
    assert (cycling.min_level, cycling.source) == ("INFO", "demo")
    for _ in range(3):
        cycling.next_source()
    assert cycling.source is None


def test_seen_lines_are_dropped_within_a_bounded_memory() -> None:
    seen = SeenLines(capacity=3)
    assert len(seen.fresh([line("a", 1), line("a", 2), line("b", 1), {"msg": "no identity"}])) == 4
    assert seen.fresh([line("a", 2), {"msg": "no identity"}]) == [{"msg": "no identity"}]
    seen.fresh([line("a", 3)])  # the oldest identity (a, 1) is forgotten
    assert len(seen) == 3 and seen.fresh([line("a", 1)]) == [line("a", 1)]


def test_log_follower_takes_each_line_once_and_fills_the_gap_from_the_last() -> None:
    follower = LogFollower(LogFilter(node="n1", min_level="WARNING"))
    history = [line("n1", 1, "INFO"), line("n1", 2, "ERROR")]
    assert follower.take(history, filtered=False) == history  # the server filtered the history
    live = [line("n1", 2, "ERROR"), line("n1", 3, "INFO"), line("n2", 4, "ERROR"), line("n1", 5, "ERROR")]
    assert follower.take(live) == [line("n1", 5, "ERROR")]
    assert follower.last_ts == 1005.0  # the newest line taken, wanted or not
    gap = follower.gap()
    assert gap.next_params() == {"node": "n1", "level": "WARNING", "from": "1005.0", "limit": "500"}
    assert gap.limit == GAP_LINES


def test_history_pages_until_the_limit_oldest_first() -> None:
    pages = HistoryPages({"node": "n1"}, limit=700)
    assert pages.next_params() == {"node": "n1", "limit": "500"}
    pages.add({"lines": [line("n1", i) for i in range(500, 0, -1)], "next_cursor": "c1"})
    assert pages.next_params() == {"node": "n1", "limit": "200", "cursor": "c1"}
    pages.add({"lines": [line("n1", 0)], "next_cursor": None})
    assert pages.next_params() is None
    assert [x["seq"] for x in pages.lines()][:3] == [0, 1, 2]
    assert HistoryPages({}, limit=0).next_params() is None


def test_backoff_doubles_to_its_limit_and_resets() -> None:
    backoff = Backoff(start=1.0, limit=15.0)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_done_before_a_runs_last_state_asks_for_one_snapshot() -> None:
    # Two runs ending at once: the server can send `done` before the other run's `state` frame.
    tracker = CommandTracker(recorded("live_post"))
    frames = [f for f in recorded("live_frames") if not (f["type"] == "state" and f["node_name"] == "pi-a")]
    feed(tracker, frames)
    assert tracker.done and tracker.wants_snapshot and tracker.unfinished()[0].node_name == "pi-a"
    not_yet = recorded("live_snapshot")  # read before the server's writer stored that state
    not_yet["runs"][0].update(state="running", code=None)
    assert [u.kind for u in tracker.on_snapshot(not_yet)] == ["state"] and tracker.wants_snapshot
    assert tracker.next_read_in(now=50.0) == SETTLE_POLL_S  # the store is read again, for SETTLE_S at most
    assert tracker.next_read_in(now=50.0 + SETTLE_S) is None
    settled = tracker.on_snapshot(recorded("live_snapshot"))
    assert [(u.kind, u.run.node_name) for u in settled] == [("finished", "pi-a")]
    assert not tracker.wants_snapshot and tracker.exit_status() == 0
    assert tracker.next_read_in(now=51.0) is None
