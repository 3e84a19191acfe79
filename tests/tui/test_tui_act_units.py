"""The Act rules without a server: targets, confirmations, run states, output lines from stream and store."""

from __future__ import annotations

from tui.api.follow_command import (
    CommandBoard,
    describe_targets,
    needs_confirmation,
    normal_run,
    run_state_text,
)


def test_targets_and_confirmation() -> None:
    names = {"id-1": "pi-1", "id-2": "[b]pi-2\x1b[2J"}
    assert describe_targets({"nodes": ["id-1"]}, names) == "pi-1"
    assert describe_targets({"nodes": ["id-1", "id-2"]}, names) == "pi-1, [b]pi-2"  # literal, no escape
    assert describe_targets({"nodes": [f"n{i}" for i in range(7)]}) == "n0, n1, n2 and 4 more"
    assert describe_targets({"group": "hall-a"}) == "group hall-a"
    assert describe_targets({"all": True}) == "ALL nodes"
    assert not needs_confirmation({"nodes": ["id-1"]})
    assert needs_confirmation({"nodes": ["id-1", "id-2"]})
    assert needs_confirmation({"group": ""}) and needs_confirmation({"all": True})


def test_run_state_text() -> None:
    assert run_state_text({"state": "exited", "code": 0}) == "exited 0"
    assert run_state_text({"state": "exited", "code": None, "signal": 9}) == "killed by signal 9"
    assert run_state_text({"state": "timeout", "truncated": True}) == "timeout (truncated)"
    assert run_state_text({}) == "?"


def test_stream_output_is_cut_into_lines_and_flushed_at_the_end() -> None:
    board = CommandBoard()
    board.set_command({"id": "c", "runs": [{"run_id": "r1", "node": "n1", "node_name": "pi", "state": "running"}]})
    run, lines = board.output("r1", "stdout", "one\ntw")
    assert run is not None and lines == [("stdout", "one")]
    assert board.output("r1", "stdout", "o\x1b]52;c;aGk=\x07\nthr")[1] == [("stdout", "two")]
    assert board.output("nope", "stdout", "x\n") == (None, [])  # an unknown run loses nothing of the others
    run, tail = board.state({"run_id": "r1", "state": "exited", "code": 0})
    assert tail == [("stdout", "thr")] and run.final
    assert [line for _, line in run.lines] == ["one", "two", "thr"]
    assert "1/1 ok" in board.summary()


def test_store_adds_only_new_chunks_and_runs_with_earlier_output_come_from_the_store() -> None:
    board = CommandBoard()
    # As the stream's first message: r2 already had output, so the stream's pieces of it are skipped.
    board.set_command({"runs": [{"run_id": "r1", "node_name": "a", "state": "running", "output_bytes": 0},
                                {"run_id": "r2", "node_name": "b", "state": "running", "output_bytes": 4}]})
    assert board.store_pending()
    board.output("r1", "stdout", "live\n")
    assert board.output("r2", "stdout", "dup\n") == (None, [])
    stored = {"done": False, "runs": [
        {"id": "r1", "node_id": "n1", "node_name": "a", "state": "running",
         "output": [{"stream": "stdout", "data": "live\n"}]},
        {"id": "r2", "node_id": "n2", "node_name": "b", "state": "running",
         "output": [{"stream": "stdout", "data": "old\n"}, {"stream": "stderr", "data": "dup\n"}]},
    ]}
    changes = {run.run_id: lines for run, lines in board.stored(stored)}
    assert changes == {"r1": [], "r2": [("stdout", "old"), ("stderr", "dup")]}
    stored["runs"][1]["output"].append({"stream": "stdout", "data": "last"})  # type: ignore[index]
    stored["runs"][1]["state"] = "exited"  # type: ignore[index]
    stored["done"] = True
    changes = {run.run_id: lines for run, lines in board.stored(stored)}
    assert changes["r2"] == [("stdout", "last")] and board.done
    assert board.runs["r2"].node == "n2"


def test_normal_run_and_bounded_lines() -> None:
    assert normal_run({"id": "x", "node_id": "n"}) == {"id": "x", "node_id": "n", "run_id": "x", "node": "n"}
    board = CommandBoard()
    board.set_command({"runs": [{"run_id": "r", "node_name": "a", "state": "running"}]})
    board.output("r", "stdout", "x\n" * 6000)
    run = board.runs["r"]
    assert len(run.lines) == 5000 and run.dropped == 1000
