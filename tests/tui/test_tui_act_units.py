"""The Act rules without a server: targets, the confirmation rule, run states and statuses, actions."""

from __future__ import annotations

from tui.api.follow_command import (
    ActionTracker,
    command_text,
    confirmation_subject,
    describe_targets,
    needs_confirmation,
    run_status,
    state_text,
)


def test_targets_and_the_one_confirmation_rule() -> None:
    names = {"id-1": "pi-1", "id-2": "[b]pi-2\x1b[2J"}
    assert describe_targets({"nodes": ["id-1"]}, names) == "pi-1"
    assert describe_targets({"nodes": ["id-1", "id-2"]}, names) == "pi-1, [b]pi-2"  # literal, no escape
    assert describe_targets({"nodes": [f"n{i}" for i in range(7)]}) == "n0, n1, n2 and 4 more"
    assert describe_targets({"group": "hall-a"}) == "group hall-a"
    assert describe_targets({"all": True}) == "ALL nodes"
    # Named nodes are what the operator typed: never asked, however many (docs/remote-control.md).
    assert not needs_confirmation({"nodes": ["id-1"]})
    assert not needs_confirmation({"nodes": ["id-1", "id-2", "id-3"]})
    assert needs_confirmation({"group": ""}) and needs_confirmation({"all": True})
    nodes = [{"kind": "desktop"}, {"kind": "esp32"}, {"kind": "raspberry", "revoked": True}, {"kind": "other"}]
    assert confirmation_subject({"group": "hall-a"}, nodes, "run 'uptime'") == \
        "run 'uptime' on 2 node(s) of group 'hall-a'"
    assert confirmation_subject({"all": True}, [], "update the daemon") == "update the daemon on 0 node(s) of the whole fleet"


def test_state_text_short_and_detailed() -> None:
    assert state_text({"state": "exited", "code": 0}) == "exited 0"
    assert state_text({"state": "exited", "code": None, "signal": 9}) == "killed by signal 9"
    assert state_text({"state": "timeout", "truncated": True}) == "timeout (truncated)"
    assert state_text({}) == "?"
    lost = {"state": "lost", "message": "node pi went\x1b[2J offline", "truncated": True, "output_bytes": 1100000}
    assert state_text(lost, detail=True) == \
        "lost (node pi went offline) [output truncated: 1.0M produced, 1 MiB kept]"
    assert state_text(lost) == "lost (truncated)"


def test_run_statuses() -> None:
    assert run_status({"state": "exited", "code": 3}) == 3
    assert run_status({"state": "exited", "code": 256 + 7}) == 7
    assert run_status({"state": "exited", "code": None, "signal": 9}) == 137
    assert run_status({"state": "timeout"}) == 124
    assert run_status({"state": "cancelled"}) == 130
    for state in ("offline", "lost", "failed", "refused", "duplicate"):
        assert run_status({"state": state}) == 255
    assert command_text({"shell": "df -h"}) == "df -h" and command_text({"argv": ["ls", "-l"]}) == "ls -l"


def test_action_tracker_reports_each_change_once_and_never_leaves_a_final_state() -> None:
    tracker = ActionTracker([{"id": "a1", "state": "requested", "deadline": 1000.0},
                             {"id": "a2", "state": "requested", "deadline": 1500.0}])
    assert tracker.deadline == 1560.0 and not tracker.done
    event = {"kind": "action_in_progress", "data": {"id": "a1", "state": "in_progress"},
             "message": "pi-1: rebooting", "ts": 5.0}
    assert tracker.on_event(event) == [{"id": "a1", "state": "in_progress", "deadline": 1000.0,
                                        "message": "rebooting", "updated_at": 5.0}]
    assert tracker.on_event(event) == []  # the same state again
    assert tracker.on_event({"kind": "state", "data": {"id": "other", "state": "done"}}) == []
    rows = [{"id": "a1", "state": "done"}, {"id": "a2", "state": "failed"}, {"id": "zz", "state": "done"}]
    assert [a["id"] for a in tracker.on_rows(rows)] == ["a1", "a2"]
    assert tracker.on_rows([{"id": "a2", "state": "done"}]) == []  # final: never changed again
    assert tracker.done and not tracker.ok and tracker.progress() == (1, 2, 2)
