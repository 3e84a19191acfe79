"""``add_node`` and ``remove_node``: the whole flow, step by step, with rollback on failure."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from dvic_core.constants import NODE_KINDS
from tui.api.errors import ApiError

from .api import ca_sha256, connect_central
from .demos import DemoError, check_demos, check_shell_user, demos_json
from .errors import CannotAsk, InstallerError
from .hostkeys import KnownHosts, check_pin
from .models import (
    AddNodeRequest,
    AddNodeResult,
    Jump,
    ProgressCallback,
    RemoveNodeRequest,
    Source,
    StepStatus,
    ViaNode,
)
from .paths import NodeLayout, known_hosts_path
from .remote import run_script
from .render import INIT_MODES, RenderError, check_path, render_script, render_unit
from .secret import Password
from .ssh import ViaFactory, open_target
from .steps import StepRunner


def _via_factory(api: object) -> ViaFactory | None:
    """How to reach a target through a node: needs a central client that can open tunnels."""
    via = getattr(api, "via", None)
    if via is None:
        return None
    return lambda source: via(source.node)


class Central(Protocol):
    """What the flow needs from the central server (``CentralClient``, or the server itself later)."""

    async def enroll(self, name: str, kind: str, group: str) -> dict[str, Any]: ...
    async def get_node(self, node: str) -> dict[str, Any] | None: ...
    async def revoke(self, node: str) -> bool: ...
    async def wait_online(
        self, node_id: str, within: float, poll: float = 0.25, version: str = ""
    ) -> dict[str, Any]: ...


def _validate(req: AddNodeRequest) -> None:
    def bad(message: str, hint: str = "") -> InstallerError:
        return InstallerError("connect", "bad_request", message, hint)

    if not req.host:
        raise bad("no target address given")
    if not req.user:
        raise bad("no SSH user given", "pass --user")
    if not 0 < req.port < 65536:
        raise bad(f"port {req.port} is out of range")
    if req.kind not in NODE_KINDS:
        raise bad(f"unknown kind {req.kind!r}", f"use one of {', '.join(NODE_KINDS)}")
    if req.kind == "esp32":
        raise bad("ESP32 boards are not installed over SSH", "use: dvic add-node --kind esp32 --name N --out FILE.h")
    if req.init not in INIT_MODES:
        raise bad(f"unknown init mode {req.init!r}")
    if req.prefix and req.init == "systemd":
        raise bad("--prefix installs outside the paths systemd reads", "add --no-systemd")
    _check_pins(req.expect_host_key, req.source, "connect")
    try:
        check_shell_user(req.shell_user)
        if req.demos is not None:
            check_demos(req.demos)
    except DemoError as exc:
        raise bad(str(exc)) from exc
    try:
        if req.prefix:
            check_path("--prefix", req.prefix)
        if req.python:
            check_path("--python", req.python)
        for part in req.target_path.split(":"):
            check_path("--target-path entry", part)
    except RenderError as exc:
        raise bad(str(exc)) from exc


def _check_pins(expect_host_key: str, source: Source, step: str) -> None:
    """Malformed --expect-host-key / --expect-jump-host-key values stop the run before anything connects."""
    pins = [("--expect-host-key", expect_host_key)]
    if isinstance(source, Jump):
        pins.append(("--expect-jump-host-key", source.expect_host_key))
    for option, value in pins:
        try:
            check_pin(option, value)
        except ValueError as exc:
            raise InstallerError(step, "bad_pin", str(exc), f"fix {option}") from exc


@asynccontextmanager
async def _say_what_changed(changed: str) -> AsyncIterator[None]:
    """Add to a failure's hint what this run already changed (or that it changed nothing)."""
    try:
        yield
    except InstallerError as exc:
        exc.hint = f"{exc.hint}; {changed}" if exc.hint else changed
        raise


_VERSION = re.compile(r"""^VERSION\s*=\s*["']([^"'\n]+)["']""", re.M)


def daemon_version(text: str) -> str:
    """The ``VERSION = "x.y.z"`` of a daemon file ("" when it has none)."""
    match = _VERSION.search(text)
    return match.group(1) if match else ""


def _through(source: object) -> str:
    if isinstance(source, ViaNode):
        return f" through node {source.node}"
    if isinstance(source, Jump):
        return f" through jump host {source.host}:{source.port}"
    return ""


def _read_text(step: str, what: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallerError(
            step, "missing_file", f"cannot read the {what} {path}: {exc.strerror or exc}",
            "run from a complete checkout/installation of dvic (node_script/ must be present)",
        ) from exc


async def add_node(
    request: AddNodeRequest, progress: ProgressCallback | None = None, central: Central | None = None
) -> AddNodeResult:
    """Install a node over SSH and wait until it is online. Raises InstallerError on failure.

    Steps: connect, check, enroll, render, install, online (``models.STEP_NAMES``). On failure a
    fresh enrollment is revoked and a fresh install removed; the password is wiped on return.
    """
    runner = StepRunner(progress)
    try:
        _validate(request)
        async with AsyncExitStack() as stack:
            if central is None:
                central = await connect_central(stack, request.server, "connect")
            return await _add_node(request, runner, central, stack)
    finally:
        request.password.wipe()


async def _add_node(
    req: AddNodeRequest, runner: StepRunner, api: Central, stack: AsyncExitStack
) -> AddNodeResult:
    layout = NodeLayout(req.prefix)
    store = KnownHosts(req.known_hosts or known_hosts_path())
    # Read the payload before touching anything: a missing file must not cost an enrollment.
    daemon_text = _read_text("render", "daemon", req.daemon_source)
    template = _read_text("render", "unit template", req.unit_template)

    def script(mode: str, **extra: Any) -> str:
        return render_script(mode, layout=layout, init=req.init, python=req.python,
                             target_path=req.target_path, shell_user=req.shell_user, **extra)

    async with runner.run("connect") as step, _say_what_changed("nothing was changed on the target or the server"):
        # The server first: a bad token or a too-low role must fail before the target is touched.
        require_role = getattr(api, "require_role", None)
        if require_role is not None:
            await require_role("operator")
        conn: asyncssh.SSHClientConnection = await stack.enter_async_context(open_target(
            host=req.host, port=req.port, user=req.user, password=req.password, source=req.source,
            known_hosts=store, expect_host_key=req.expect_host_key, confirm=req.confirm_host_key,
            connect_timeout=req.connect_timeout, via_factory=_via_factory(api),
        ))
        step.message = f"{req.user}@{req.host}:{req.port}" + _through(req.source)

    async with runner.run("check") as step:
        facts = (await run_script(conn, script("check"), "check", password=req.password, step="check")).facts
        step.message = (f"{facts.get('os', '?')} {facts.get('arch', '?')}, Python {facts.get('python_version')} "
                        f"({facts.get('python')}), init {facts.get('init')}")

    keep = False
    bundle: dict[str, Any] | None = None
    enrolled = ""
    async with runner.run("enroll") as step:
        if facts.get("installed") == "yes":
            keep, why = await _reusable(req, api, facts)
            step.message = why
        if keep:
            node_id, name = facts["node_id"], facts.get("node_name", "")
        else:
            name = req.name or facts.get("hostname", "")
            if not name:
                raise InstallerError("enroll", "no_name", "the target reported no hostname", "pass --name")
            bundle = await _enroll(api, name, req.kind, req.group)
            node_id = enrolled = str(bundle["node_id"])
            name = str(bundle.get("name") or name)
            step.message = (step.message + "; " if step.message else "") + f"enrolled {name} ({node_id})"

    installed = False
    try:
        async with runner.run("render") as step:
            unit = render_unit(template, facts["python"], layout, req.shell_user)
            demos = None if req.demos is None else demos_json(req.demos, layout.state_dir)
            install_script = script("install", keep_bundle=keep, expect_node_id=node_id,
                                    daemon_text=daemon_text, bundle=bundle, unit_text=unit, demos=demos)
            bundle = None  # the secret now lives only in the script text, dropped after the install
            step.message = f"{len(install_script)} bytes" + (", keeping the installed bundle" if keep else "")

        async with runner.run("install") as step:
            result = await run_script(conn, install_script, "install", password=req.password, step="install")
            del install_script
            installed = True
            step.message = f"{layout.daemon} ({req.init}" + (
                f", pid {result.facts['pid']})" if "pid" in result.facts else ")")
            step.message += {"written": f"; demos.json written ({len(req.demos or [])} demos)",
                             "kept": "; demos.json kept"}.get(result.facts.get("demos", ""), "")

        async with runner.run("online") as step:
            node = await api.wait_online(node_id, req.online_timeout, version=daemon_version(daemon_text))
            step.message = f"{node.get('name', name)} ({node_id}) is online"
    except BaseException as exc:
        if enrolled:
            await _roll_back(runner, api, conn, script, enrolled, installed, req, exc)
        elif installed and isinstance(exc, InstallerError) and exc.step == "online":
            # A kept identity stays installed: its log is still there to read.
            where = "journalctl -u dvic-node" if req.init == "systemd" else f"{layout.state_dir}/daemon.out"
            exc.hint = (exc.hint + "; " if exc.hint else "") + f"the daemon's log on the node: {where}"
        raise
    return AddNodeResult(node_id=node_id, name=name, reused_identity=keep, steps=runner.steps)


async def _enroll(api: Central, name: str, kind: str, group: str) -> dict[str, Any]:
    """Enroll, saying precisely why a taken name is taken."""
    try:
        return await api.enroll(name, kind, group)
    except ApiError as exc:
        if exc.status != 409:
            raise
        holder = await api.get_node(name)
        if holder is not None and holder.get("revoked"):
            # The server keeps revoked nodes, names included (e.g. from an earlier failed run).
            raise InstallerError(
                "enroll", "name_revoked",
                f"the name {name!r} belongs to a revoked node ({holder.get('id')}); the server does not reuse it",
                "pick another --name",
            ) from exc
        raise InstallerError(
            "enroll", "name_taken", f"a node named {name!r} already exists"
            + (f" ({holder.get('id')}, {holder.get('state')})" if holder else ""),
            f"pick another --name, or have that node revoked first: an admin may run dvic remove-node {name} "
            "(so may the operator who enrolled it, while it has never connected)",
        ) from exc


async def _reusable(req: AddNodeRequest, api: Central, facts: dict[str, str]) -> tuple[bool, str]:
    """Whether the identity installed on the target can be kept (re-run = repair/upgrade in place)."""
    node_id = facts.get("node_id", "")
    installed_name = facts.get("node_name", "")
    if req.server.ca_path and facts.get("ca_sha256"):
        try:
            ours = ca_sha256(req.server.ca_path)
        except (OSError, ValueError) as exc:
            raise InstallerError("enroll", "bad_ca", f"cannot read the CA file {req.server.ca_path}: {exc}",
                                 "check --ca / DVIC_CA") from exc
        if facts["ca_sha256"] != ours:
            return False, f"the installed identity {node_id} belongs to another server: replacing it"
    node = await api.get_node(node_id)
    if node is None or node.get("revoked"):
        return False, f"the installed identity {node_id} is {'revoked' if node else 'unknown'}: replacing it"
    if req.name and req.name not in (installed_name, node.get("name")):
        raise InstallerError(
            "enroll", "name_mismatch",
            f"the target is already enrolled as {installed_name!r} ({node_id}), not {req.name!r}",
            f"run again without --name to repair it, or ask an admin to revoke it first: dvic remove-node {node_id}",
        )
    return True, f"kept the installed identity {installed_name} ({node_id})"


async def _roll_back(
    runner: StepRunner, api: Central, conn: asyncssh.SSHClientConnection, script: Any,
    node_id: str, installed: bool, req: AddNodeRequest, cause: BaseException,
) -> None:
    """Undo a fresh enrollment: remove the install (when it got that far) and revoke the identity."""
    done: list[str] = []
    problems: list[str] = []
    tail: str | None = None  # the daemon's last lines, once the rollback removed its log with the install
    if installed:
        try:
            removed = await run_script(conn, script("uninstall", expect_node_id=node_id), "uninstall",
                                       password=req.password, step="rollback", time_limit=60)
            tail = removed.facts.get("daemon_tail", "").strip()
            done.append("removed the install from the target")
        except InstallerError as exc:
            problems.append(f"could not remove the install from the target ({exc.message})")
    try:
        await asyncio.wait_for(api.revoke(node_id), 30)
        done.append(f"revoked the enrollment {node_id}")
    except (TimeoutError, ApiError) as exc:
        # This run made the enrollment, so its operator may revoke it unless the node has connected.
        who = "ask an admin to run" if isinstance(exc, ApiError) and exc.status == 403 else "run"
        problems.append(f"could not revoke {node_id} ({exc}): {who} dvic remove-node {node_id}")
    runner.note("rollback", "; ".join(done + problems), StepStatus.FAILED if problems else StepStatus.OK)
    if not isinstance(cause, InstallerError):
        return
    if cause.step == "online" and tail is not None:
        # The rollback deleted the daemon's log file: show its end now, or the operator has nothing to read.
        cause.message += (f". The daemon's last lines, read before the rollback removed it: {tail[-_TAIL_CHARS:]}"
                          if tail else ". The daemon wrote nothing before the rollback removed it")
    if problems:
        cause.hint = (cause.hint + "; " if cause.hint else "") + "; ".join(problems)


_TAIL_CHARS = 1500


def _reported_address(node: dict[str, Any]) -> str:
    """The first non-loopback address the node reported in its facts ("" when none)."""
    ips = (node.get("facts") or {}).get("ips") or []
    return next((ip for ip in ips if isinstance(ip, str) and not ip.startswith(("127.", "::1"))), "")


async def remove_node(
    request: RemoveNodeRequest, progress: ProgressCallback | None = None, central: Central | None = None
) -> list[Any]:
    """Revoke a node and, with ``uninstall``, remove its daemon over SSH. Returns the steps.

    Everything that can refuse without changing anything (the options, the role, the address to
    uninstall from) is settled before the revocation; a failure after it says the node is revoked.
    """
    runner = StepRunner(progress)
    try:
        if request.uninstall:
            if request.password is None or not request.user:
                raise InstallerError("revoke", "bad_request", "--uninstall needs the target's user and password",
                                     "pass --user (and --host)")
            _check_pins(request.expect_host_key, request.source, "revoke")
        async with AsyncExitStack() as stack:
            if central is None:
                central = await connect_central(stack, request.server, "revoke")
            # Revoke first: the identity is dead at once, even if the machine is unreachable.
            async with runner.run("revoke") as step:
                require_role = getattr(central, "require_role", None)
                if require_role is not None:
                    # An operator may revoke its own enrollment that never connected; the server decides.
                    await require_role("operator")
                node = await central.get_node(request.node)
                if node is None:
                    raise InstallerError("revoke", "unknown_node", f"the server does not know {request.node!r}",
                                         "list the nodes with: dvic nodes")
                node_id = str(node.get("id") or request.node)
                label = f"{node.get('name', '')} ({node_id})"
                host, reported = (await _uninstall_address(request, node, label)) if request.uninstall else ("", False)
                if node.get("revoked"):
                    # A second run (say, after the uninstall failed) goes on to the uninstall.
                    step.message = f"{label} was already revoked"
                else:
                    await central.revoke(node_id)
                    step.message = f"revoked {label}"
            if not request.uninstall or request.password is None:
                return runner.steps
            await _uninstall(request, request.password, runner, stack, central, node_id, label, host, reported)
            return runner.steps
    finally:
        if request.password is not None:
            request.password.wipe()


async def _uninstall_address(request: RemoveNodeRequest, node: dict[str, Any], label: str) -> tuple[str, bool]:
    """Where to send the SSH password: ``--host``, or the node's own report once the operator confirms it.

    A node is often removed because it is suspect; one under an attacker's control can report the
    address of a machine the attacker runs, to collect the password (security review L7).
    """
    if request.host:
        return request.host, False
    reported = _reported_address(node)
    if not reported:
        raise InstallerError("revoke", "no_address", f"{label} reported no address to uninstall from; "
                             "nothing was changed", "pass --host ADDRESS")
    unconfirmed = (f"{label} reported the address {reported} itself, and a node's own report is not trusted "
                   "with the SSH password without your confirmation")
    hint = f"check that {reported} is that machine, then pass --host {reported}; nothing was changed"
    if request.confirm_address is None:
        raise InstallerError("revoke", "address_unconfirmed", unconfirmed, hint)
    try:
        confirmed = await request.confirm_address(label, reported)
    except CannotAsk as exc:
        raise InstallerError("revoke", "address_unconfirmed", f"{unconfirmed} ({exc})", hint) from exc
    if not confirmed:
        raise InstallerError("revoke", "address_rejected", f"the address {reported} reported by {label} was not "
                             "confirmed", "pass --host with the machine's address; nothing was changed")
    return reported, True


async def _uninstall(
    request: RemoveNodeRequest, password: Password, runner: StepRunner, stack: AsyncExitStack, central: Central,
    node_id: str, label: str, host: str, reported: bool,
) -> None:
    """The SSH part of remove-node, run after the revocation (which its failures must mention)."""
    where = f"{request.user}@{host}:{request.port}" + _through(request.source)
    again = "run the same dvic remove-node --uninstall command again once that is fixed (the node stays revoked)"
    connect_changed = (f"{label} is revoked at the server (its daemon is refused from now on) but nothing was "
                       f"changed on the target (its daemon, if it runs, was not removed); {again}")
    async with runner.run("connect", f"connecting to {where}" + (
            " (the address the node reported, confirmed)" if reported else "")) as step, \
            _say_what_changed(connect_changed):
        conn = await stack.enter_async_context(open_target(
            host=host, port=request.port, user=request.user, password=password,
            source=request.source, known_hosts=KnownHosts(request.known_hosts or known_hosts_path()),
            expect_host_key=request.expect_host_key, confirm=request.confirm_host_key,
            connect_timeout=request.connect_timeout, via_factory=_via_factory(central),
        ))
        step.message = where
    uninstall_changed = f"{label} is revoked at the server, but the uninstall did not finish on the target; {again}"
    async with runner.run("uninstall") as step, _say_what_changed(uninstall_changed):
        text = render_script("uninstall", layout=NodeLayout(request.prefix), init=request.init,
                             target_path=request.target_path, expect_node_id=node_id)
        await run_script(conn, text, "uninstall", password=password, step="uninstall")
        step.message = "daemon stopped and removed"
