"""The Prometheus exposition built from the registry and the alert engine (the route: test_alerts_server.py)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from central.alerts.metrics_export import render

from .alerts_rig import Rig, open_rig

SAMPLE = re.compile(r'^([a-z_0-9]+)(\{(?:[a-z_]+="(?:[^"\\\n]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN)$')


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in open_rig(tmp_path):
        yield r


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_0-9]+ ", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not an exposition line: {line!r}"
        out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


async def test_node_demo_alert_and_server_gauges(rig: Rig) -> None:
    pi = await rig.node("pi-1")
    await rig.node('evil"\nname\\')
    rig.registry.set_metrics(pi, {"ts": time.time()}, {"cpu": 12.5, "disk": 99.0, "temp": 48.0, "net_rx": 10.0})
    rig.registry.set_demo(pi, {"token": "t1", "name": "robot", "pid": 1, "state": "exited", "started_at": 1.0,
                               "exited_at": 2.0, "header": {}}, time.time())
    rig.registry.set_demo(pi, {"token": "t2", "name": "robot", "pid": 2, "state": "alive", "started_at": 3.0,
                               "exited_at": None, "header": {}}, time.time())
    await rig.engine.evaluate()
    text = render(rig.registry, rig.engine, rig.writer, rig.bus, time.time() - 5)
    got = samples(text)
    labels = '{node="pi-1",group="hall-a",kind="raspberry"}'
    assert got["dvic_node_up" + labels] == 1
    assert got["dvic_node_cpu_percent" + labels] == 12.5
    assert got["dvic_node_disk_percent" + labels] == 99
    assert got["dvic_node_network_receive_bytes_total" + labels] == 10
    assert got['dvic_demo_up{node="pi-1",group="hall-a",kind="raspberry",demo="robot"}'] == 1  # the latest run
    assert got['dvic_alerts{state="firing"}'] == 1
    assert got['dvic_alert{rule="disk_full",subject="node:pi-1",node="pi-1",group="hall-a",severity="warning",'
               'state="firing"}'] == 1
    assert got['dvic_server_nodes{state="online"}'] == 2
    assert got["dvic_server_notifications_pending"] == 0  # the recording sink does not say
    assert got["dvic_server_uptime_seconds"] >= 5
    assert 'node="evil\\"\\nname\\\\"' in text  # label values escaped: one line per sample
    assert "# TYPE dvic_node_network_receive_bytes_total counter" in text
