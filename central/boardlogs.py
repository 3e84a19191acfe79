"""Log lines that boards (ESP32) send with their keep-alive (docs/esp32.md, docs/protocol.md section 3).

They become the node's demo lines through the same path as a daemon's `logs` frames: stored with
their `seq` (a resend after a lost answer is stored once, UNIQUE (node_id, seq)), shown live once,
and a gap the board's ring buffer made is a stored `log_gap` event like a daemon's spool overflow.
"""

from __future__ import annotations

import logging
from typing import Any

from .registry import NodeState
from .services import Services

log = logging.getLogger(__name__)


async def store_board_logs(services: Services, node: NodeState, logs: dict[str, Any], now: float,
                           mono: float) -> int:
    """Store what parse_keepalive_logs() returned; returns the node's highest stored seq.

    Returns once the lines are committed (the board forgets them when it gets the answer).
    Raises StorageError when they could not be stored.
    """
    lines = [
        {"seq": line["seq"], "ts": round(now - line["age_ms"] / 1000.0, 3), "source": "demo",
         "unit": logs["name"], "demo": logs["token"], "level": line["level"], "msg": line["msg"],
         "truncated": line["truncated"]}
        for line in logs["lines"]
    ]
    if lines:
        await services.writer.add_logs(node.id, lines)
        _publish_live(services, node, lines)
    gap = logs["gap"]
    if gap is not None:
        dropped = gap["last_seq"] - gap["first_seq"] + 1
        if services.registry.limits(node, mono).allow("events", mono):
            await services.registry.record_event(
                node, "log_gap", f"board log buffer full: {dropped} lines dropped",
                {"dropped": dropped, "first_seq": gap["first_seq"], "last_seq": gap["last_seq"]})
        else:
            log.warning("node %s: a log_gap event over the event limit was not stored", node.name)
    last_seq = await services.queries.last_seq(node.id)
    node.published_seq = max(node.published_seq, last_seq)  # what is stored was shown (or is older)
    return last_seq


def _publish_live(services: Services, node: NodeState, lines: list[dict[str, Any]]) -> None:
    """Committed lines to live subscribers, each once (a resend is not shown again)."""
    fresh = [line for line in lines if line["seq"] > node.published_seq]
    if not fresh:
        return
    node.published_seq = max(line["seq"] for line in fresh)
    services.features.observe_logs(node, fresh)
    if services.bus.wants_logs(node.id):
        services.bus.publish_logs(node.id, [
            {"node": node.id, "node_name": node.name, "seq": line["seq"], "ts": line["ts"], "source": "demo",
             "unit": line["unit"], "demo": line["demo"], "level": line["level"], "msg": line["msg"]}
            for line in fresh
        ])
