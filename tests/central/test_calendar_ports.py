"""The calendar's ports on the in-process app: a deployments implementation plugged in (issue 14's
Protocol, here a recorder standing in for central.demos.calendar_port) receives the deploy
steps and a booking's deployment at its start and end; the alerts' `quiet(group, severity)` hook."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from central.demos.calendar_port import CalendarDeployments
from tests.support.wait import async_wait_for

from .inproc import InProcess, in_process


class RecordedDeployments:
    """Implements central.calendar.ports.Deployments by writing down each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def knows(self, demo: str, version: str | None = None) -> bool:
        return demo == "kiosk"

    async def deploy(self, group: str, demo: str, version: str, by: str) -> str:
        self.calls.append(("deploy", group, demo, version, by))
        return "desired"

    async def undeploy(self, group: str, demo: str, by: str) -> str:
        self.calls.append(("undeploy", group, demo, by))
        return "removed"

    async def deploy_nodes(self, node_ids: list[str], demo: str, version: str, by: str) -> str:
        self.calls.append(("deploy_nodes", tuple(node_ids), demo, version, by))
        return "desired on the booked nodes"

    async def restore_nodes(self, node_ids: list[str], by: str) -> str:
        self.calls.append(("restore_nodes", tuple(node_ids), by))
        return "back to the group's"


@pytest_asyncio.fixture
async def app(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for running in in_process(tmp_path / "central", calendar_tick=0.5):
        yield running


@pytest.mark.asyncio
async def test_deploy_steps_and_booked_deployments_go_through_the_port(app: InProcess) -> None:
    node = await app.enroll("pi", group="hall")
    # the server plugs in the real port (tests/node/test_calendar_deploy.py); a calendar without one
    # (as it was built, before deployments landed) refuses deploy steps when they are created
    assert isinstance(app.services.calendar.deployments, CalendarDeployments)
    app.services.calendar.deployments = None
    status, body = await app.call("POST", "/api/v1/runbooks", {"group": "hall", "name": "ship", "at": "03:00",
                                                               "steps": ["deploy kiosk@2.0"]})
    assert status == 409 and body["error"]["code"] == "no_deployments", body  # refused until there is one
    recorder = RecordedDeployments()
    app.services.calendar.use_deployments(recorder)
    status, body = await app.call("POST", "/api/v1/runbooks", {"group": "hall", "name": "ship", "at": "03:00",
                                                               "steps": ["deploy kiosk@2.0", "undeploy kiosk"]})
    assert status == 201, body
    status, body = await app.call("POST", "/api/v1/runbooks", {"group": "hall", "name": "bad", "at": "03:00",
                                                               "steps": ["deploy robot@1.0"]})
    assert status == 400 and body["error"]["code"] == "unknown_demo", body
    status, firing = await app.call("POST", "/api/v1/runbooks/hall/ship/run")
    assert status == 201

    async def fired() -> bool:
        return len(recorder.calls) == 2

    await async_wait_for(fired, 10, "the group steps")
    assert recorder.calls == [("deploy", "hall", "kiosk", "2.0", "admin"), ("undeploy", "hall", "kiosk", "admin")]

    recorder.calls.clear()
    status, booking = await app.call("POST", "/api/v1/bookings", {"nodes": [node["name"]], "to": "+2s",
                                                                  "deploy": "kiosk@3.1"})
    assert status == 201, booking
    by = f"booking:{booking['id']}"

    async def ended() -> bool:
        return len(recorder.calls) == 2

    await async_wait_for(ended, 15, "the booking's deployment applied, then undone at its end")
    assert recorder.calls == [("deploy_nodes", (node["node_id"],), "kiosk", "3.1", by), ("restore_nodes", (node["node_id"],), by)]
    status, shown = await app.call("GET", f"/api/v1/bookings/{booking['id']}")
    assert shown["deploy_state"] == "restored", shown


@pytest.mark.asyncio
async def test_quiet_outside_opening_hours_for_non_critical_alerts(app: InProcess) -> None:
    await app.enroll("pi", group="hall")
    await app.enroll("pi", group="lobby")
    calendar = app.services.calendar
    assert not calendar.quiet("hall", "warning")  # no hours: never closed
    status, _ = await app.call("PUT", "/api/v1/calendar/hall/hours", {"hours": ["daily closed"], "zone": "UTC"})
    assert status == 200
    status, _ = await app.call("PUT", "/api/v1/calendar/lobby/hours", {"hours": ["daily 00:00-24:00"]})
    assert status == 200
    assert calendar.is_closed("hall") and calendar.quiet("hall", "warning")
    assert not calendar.quiet("hall", "critical")
    assert not calendar.is_closed("lobby") and not calendar.quiet("lobby", "warning")
    # An exception opens the closed hall today.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    status, _ = await app.call("PUT", f"/api/v1/calendar/hall/exceptions/{today}", {"hours": "00:00-24:00"})
    assert status == 200 and not calendar.quiet("hall", "warning")


@pytest.mark.asyncio
async def test_the_server_asks_the_calendar_before_an_alerts_notice(app: InProcess) -> None:
    """Wired in the server: the alerts engine's quiet hook is the calendar's."""
    await app.enroll("pi", group="hall")
    status, _ = await app.call("PUT", "/api/v1/calendar/hall/hours", {"hours": ["daily closed"], "zone": "UTC"})
    assert status == 200
    assert app.services.alerts.quiet("hall", "warning") and not app.services.alerts.quiet("hall", "critical")
    assert not app.services.alerts.quiet("lobby", "warning")
