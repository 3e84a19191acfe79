"""`GET /metrics`: the fleet's gauges and the server's own health in Prometheus' text format (0.0.4).

Everything comes from memory (the registry, the alert engine, the writer's and bus's counters): a
scrape reads no history. With several replicas the alert part is the features leader's, asked on
the bus by a replica not leading (central/cluster/features.py `alert_figures`). Names and labels
are listed in docs/alerts.md ("Prometheus").
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dvic_core.constants import NODE_STATES

from ..bus import Bus
from ..registry import NodeState, Registry
from ..writer import Writer
from .engine import AlertEngine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Node series (docs/protocol.md section 5) -> (Prometheus name, type, help).
NODE_SERIES: dict[str, tuple[str, str, str]] = {
    "cpu": ("dvic_node_cpu_percent", "gauge", "CPU in use, percent"),
    "mem": ("dvic_node_memory_percent", "gauge", "memory in use, percent"),
    "swap": ("dvic_node_swap_percent", "gauge", "swap in use, percent"),
    "disk": ("dvic_node_disk_percent", "gauge", "the fullest filesystem, percent"),
    "temp": ("dvic_node_temperature_celsius", "gauge", "the hottest sensor, degrees Celsius"),
    "load1": ("dvic_node_load1", "gauge", "load average over one minute"),
    "uptime": ("dvic_node_uptime_seconds", "gauge", "seconds since the node booted"),
    "procs": ("dvic_node_processes", "gauge", "processes running on the node"),
    "net_rx": ("dvic_node_network_receive_bytes_total", "counter", "bytes received (the node's counter)"),
    "net_tx": ("dvic_node_network_transmit_bytes_total", "counter", "bytes sent (the node's counter)"),
    "free_mem": ("dvic_node_free_memory_bytes", "gauge", "free memory of a board (keep-alive)"),
    "rssi": ("dvic_node_wifi_rssi_dbm", "gauge", "Wi-Fi signal of a board (keep-alive), dBm"),
}


@runtime_checkable
class PendingNotifications(Protocol):
    """What the notification dispatcher (the NoticeSink of the delivery half) may also offer, so
    /metrics shows its backlog; a sink without it counts as 0 pending."""

    def pending_notifications(self) -> int: ...


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if value == value else "NaN"


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        """One metric family: its HELP and TYPE, then `name{labels} value` per sample."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _node_labels(node: NodeState) -> str:
    return _labels(node=node.name, group=node.group, kind=node.kind)


@dataclass(frozen=True)
class AlertFigures:
    """The alert part of /metrics: open alerts by state, one label set per open alert, and the
    notifications waiting for delivery. With several replicas the features leader's (it evaluates
    and delivers; central/cluster/features.py asks it for them), as plain JSON-able values."""

    counts: dict[str, int]
    alerts: list[dict[str, str]]
    pending_notifications: int

    @classmethod
    def of(cls, engine: AlertEngine) -> AlertFigures:
        """This replica's own figures (one server, or the features leader)."""
        sink = engine.sink
        pending = sink.pending_notifications() if isinstance(sink, PendingNotifications) else 0
        alerts = [{"rule": a.rule, "subject": a.subject, "node": a.node or "", "group": a.group or "",
                   "severity": a.severity,
                   "state": "silenced" if engine.silenced_by(a) and a.state == "firing" else a.state}
                  for a in engine.open_alerts()]
        return cls(engine.counts(), alerts, pending)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "alerts": self.alerts, "pending_notifications": self.pending_notifications}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> AlertFigures:
        return cls({str(k): int(v) for k, v in dict(body["counts"]).items()},
                   [{str(k): str(v) for k, v in dict(a).items()} for a in body["alerts"]],
                   int(body["pending_notifications"]))


def render(registry: Registry, engine: AlertEngine, writer: Writer, bus: Bus, started_at: float,
           figures: AlertFigures | None = None) -> str:
    """The exposition; `figures`: the alert part when it is not this replica's (None: it is; an
    empty one leaves the alert families out, the leader could not be asked)."""
    out = Exposition()
    figures = AlertFigures.of(engine) if figures is None else figures
    nodes = [n for n in registry.all() if not n.revoked]
    labels = {n.id: _node_labels(n) for n in nodes}
    out.family("dvic_node_up", "gauge", "1 while the node is online (heard from within --offline-after)",
               ((labels[n.id], 1.0 if n.liveness == "online" else 0.0) for n in nodes))
    out.family("dvic_node_maintenance", "gauge", "1 while an operator has the node in maintenance",
               ((labels[n.id], 1.0 if n.maintenance else 0.0) for n in nodes))
    out.family("dvic_node_connected", "gauge", "1 while the node's websocket is up (remote control possible)",
               ((labels[n.id], 1.0 if n.connected else 0.0) for n in nodes))
    out.family("dvic_node_info", "gauge", "the node's daemon version, as a label",
               ((_labels(node=n.name, group=n.group, kind=n.kind, daemon_version=n.daemon_version), 1.0)
                for n in nodes))
    out.family("dvic_node_last_seen_timestamp_seconds", "gauge", "when the node was last heard from (Unix time)",
               ((labels[n.id], n.last_seen) for n in nodes if n.last_seen is not None))
    out.family("dvic_node_clock_skew_seconds", "gauge", "the node's clock minus the server's",
               ((labels[n.id], n.clock_skew) for n in nodes if n.clock_skew is not None))
    for series, (name, kind, help_text) in NODE_SERIES.items():
        out.family(name, kind, help_text,
                   ((labels[n.id], n.metrics[series]) for n in nodes if series in n.metrics))
    out.family("dvic_demo_up", "gauge", "1 while the latest run of the demo is alive, 0 once it exited",
               _demos(nodes))
    if figures is not NO_FIGURES:
        _alerts(out, figures)
    _server(out, registry, engine, writer, bus, started_at, figures)
    return out.text()


# The leader could not be asked: the alert families are left out of the scrape (not shown stale).
NO_FIGURES = AlertFigures({}, [], 0)


def _demos(nodes: list[NodeState]) -> Iterable[tuple[str, float]]:
    for node in nodes:
        latest: dict[str, tuple[float, bool]] = {}
        for demo in node.demos.values():
            name = demo.get("name") or demo["token"]
            started = demo.get("started_at") or 0.0
            if name not in latest or started >= latest[name][0]:
                latest[name] = (started, demo.get("state") != "exited")
        for name, (_, alive) in sorted(latest.items()):
            yield _labels(node=node.name, group=node.group, kind=node.kind, demo=name), 1.0 if alive else 0.0


def _alerts(out: Exposition, figures: AlertFigures) -> None:
    counts = figures.counts
    out.family("dvic_alerts", "gauge", "open alerts by state (firing: neither acknowledged nor silenced)",
               ((_labels(state=state), float(counts.get(state, 0))) for state in ("firing", "acknowledged", "silenced")))
    out.family("dvic_alert", "gauge", "1 per open alert", ((_labels(**a), 1.0) for a in figures.alerts))


def _server(out: Exposition, registry: Registry, engine: AlertEngine, writer: Writer, bus: Bus,
            started_at: float, figures: AlertFigures) -> None:
    nodes = registry.all()
    states = Counter(n.state for n in nodes if not n.revoked)
    out.family("dvic_server_nodes", "gauge", "enrolled nodes (not revoked) by state",
               ((_labels(state=s), float(states.get(s, 0))) for s in NODE_STATES))
    out.family("dvic_server_nodes_connected", "gauge", "nodes with a live websocket",
               (("", float(sum(1 for n in nodes if n.connected))),))
    out.family("dvic_server_log_lines_total", "counter", "log lines taken from nodes since the server started "
               "(rate() of it is the ingest rate)", (("", float(writer.log_rows_total)),))
    out.family("dvic_server_metric_samples_total", "counter", "metric values taken from nodes since the server "
               "started", (("", float(writer.metric_samples_total)),))
    queued, pending_lines = writer.queued
    out.family("dvic_server_writer_queued_writes", "gauge", "writes waiting for the next commit",
               (("", float(queued)),))
    out.family("dvic_server_writer_pending_log_lines", "gauge", "log lines waiting for the next commit",
               (("", float(pending_lines)),))
    out.family("dvic_server_writer_last_commit_seconds", "gauge", "how long the writer's last commit took",
               (("", writer.last_commit_s),))
    out.family("dvic_server_stream_clients", "gauge", "live-stream clients connected",
               (("", float(bus.subscriber_count)),))
    if figures is not NO_FIGURES:
        out.family("dvic_server_notifications_pending", "gauge", "notifications waiting for delivery",
                   (("", float(figures.pending_notifications)),))
    out.family("dvic_server_alert_pass_seconds", "gauge", "wall time of the last full alert evaluation pass",
               (("", engine.last_pass_s),))
    out.family("dvic_server_alert_passes_total", "counter", "alert evaluation passes run here (with replicas: "
               "only the features leader evaluates)", (("", float(engine.passes)),))
    out.family("dvic_server_uptime_seconds", "gauge", "seconds since the server started",
               (("", time.time() - started_at),))
