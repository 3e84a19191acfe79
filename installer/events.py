"""Driving ``add_node`` from a request body and reporting it as a stream of JSON events.

For a server endpoint behind the console's Add-node form: parse the form's JSON with clear
errors, run the flow, and send each event (``step``, ``host_key``, then ``done`` or ``error``)
to the client as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from dvic_core.constants import NODE_KINDS

from .demos import Demo, check_demos, check_shell_user
from .errors import InstallerError
from .flow import Central, add_node
from .hostkeys import check_pin
from .models import (
    AddNodeRequest,
    ConfirmHostKey,
    Direct,
    Jump,
    ServerSpec,
    Source,
    Step,
    ViaNode,
)
from .secret import Password

_STRINGS = ("host", "user", "name", "kind", "group", "expect_host_key", "via", "jump", "python", "shell_user")


def _parse_demos(value: Any) -> list[Demo]:
    """``demos``: a list of {"name", "unit"} or {"name", "command"} objects."""
    if not isinstance(value, list):
        raise ValueError("demos: expected a list of {name, unit} or {name, command} objects")
    demos = []
    for i, item in enumerate(value):
        if (not isinstance(item, Mapping) or set(item) - {"name", "unit", "command"}
                or not all(isinstance(v, str) for v in item.values())):
            raise ValueError(f"demos[{i}]: expected an object with string fields name and unit or command")
        demos.append(Demo(name=item.get("name", ""), unit=item.get("unit", ""), command=item.get("command", "")))
    try:
        return check_demos(demos)
    except ValueError as exc:
        raise ValueError(f"demos: {exc}") from exc


def parse_add_node_body(body: Any, server: ServerSpec, known_hosts: Path | None = None) -> AddNodeRequest:
    """Build an AddNodeRequest from a JSON object; ValueError names the first bad field and why.

    Fields: ``host``, ``user``, ``password`` (required); ``port``, ``name``, ``kind``, ``group``,
    ``expect_host_key``, ``python``, ``shell_user``, ``demos`` (absent: keep the node's demos.json);
    at most one of ``via`` (node) and ``jump`` (``user@host[:port]``).
    """
    if not isinstance(body, Mapping):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(body) - {*_STRINGS, "password", "port", "online_timeout", "demos"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    for key in _STRINGS:
        if key in body and not isinstance(body[key], str):
            raise ValueError(f"{key}: expected a string")
    for key in ("host", "user"):
        if not body.get(key):
            raise ValueError(f"{key}: required")
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise ValueError("password: required (a non-empty string)")
    port = body.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError("port: expected an integer from 1 to 65535")
    kind = body.get("kind", "desktop")
    if kind not in NODE_KINDS or kind == "esp32":
        raise ValueError(f"kind: one of {', '.join(k for k in NODE_KINDS if k != 'esp32')}")
    timeout = body.get("online_timeout", 60)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 600:
        raise ValueError("online_timeout: seconds, more than 0 and at most 600")
    demos = _parse_demos(body["demos"]) if "demos" in body else None
    try:
        shell_user = check_shell_user(body.get("shell_user", ""))
    except ValueError as exc:
        raise ValueError(f"shell_user: {exc}") from exc
    try:
        check_pin("expect_host_key", body.get("expect_host_key", ""))
    except ValueError as exc:
        raise ValueError(f"expect_host_key: {exc}") from exc
    if body.get("via") and body.get("jump"):
        raise ValueError("via, jump: give at most one")
    source: Source = Direct()
    if body.get("via"):
        source = ViaNode(body["via"])
    elif body.get("jump"):
        user, _, hostport = body["jump"].rpartition("@")
        host, _, port_text = hostport.partition(":")
        if not host or (port_text and not port_text.isdigit()):
            raise ValueError("jump: expected user@host[:port]")
        source = Jump(host=host, port=int(port_text or 22), user=user)
    return AddNodeRequest(
        host=body["host"], user=body["user"], password=Password(password.encode()), server=server, port=port,
        source=source, name=body.get("name", ""), kind=kind, group=body.get("group", ""),
        expect_host_key=body.get("expect_host_key", ""), known_hosts=known_hosts,
        python=body.get("python", ""), online_timeout=float(timeout), demos=demos, shell_user=shell_user,
    )


async def add_node_events(
    request: AddNodeRequest, central: Central | None = None, confirm: ConfirmHostKey | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Run ``add_node`` and yield its events as JSON-ready dicts, ending with ``done`` or ``error``.

    ``confirm`` (if given) answers first-contact host keys; a ``host_key`` event is yielded before
    it is called so the client can show the fingerprint. Closing the generator early cancels the
    flow, which rolls back like any other failure.
    """
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_step(step: Step) -> None:
        events.put_nowait({"type": "step", "step": step.as_dict()})

    if confirm is not None:
        ask = confirm

        async def announce_then_ask(prompt: Any) -> bool:
            events.put_nowait({"type": "host_key", "role": prompt.role, "host": prompt.host, "port": prompt.port,
                               "key_type": prompt.key_type, "fingerprint": prompt.fingerprint})
            return await ask(prompt)

        request.confirm_host_key = announce_then_ask

    task = asyncio.create_task(add_node(request, on_step, central))
    try:
        while True:
            if not events.empty():
                yield events.get_nowait()
                continue
            if task.done():
                break
            getter = asyncio.create_task(events.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                # The flow ended first. A cancelled Queue.get() takes nothing off the queue:
                # the last events are drained at the top of the loop.
                getter.cancel()
        try:
            result = task.result()
        except InstallerError as err:
            yield {"type": "error", "step": err.step, "code": err.code, "message": err.message, "hint": err.hint}
            return
        yield {"type": "done", "node_id": result.node_id, "name": result.name,
               "reused_identity": result.reused_identity,
               "total": round(sum(s.duration for s in result.steps), 3)}
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, InstallerError):
                await task
