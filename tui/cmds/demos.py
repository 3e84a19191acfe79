"""`dvic demo …`, `dvic deploy` and `dvic undeploy`: demo releases and deployments (docs/demos.md).

Viewers read (`demo list`, `releases`, `status`, `deployments`, `deployment`); operators publish,
deploy, undeploy and roll back. A group or the whole fleet is confirmed first (the one rule of
docs/remote-control.md, "Confirmation"); `--yes` skips the question.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui import fmt
from tui.api import calls
from tui.cmds.common import SettingsFn, UsageError, client, emit, emit_json, say, show_list
from tui.cmds.parsing import command, positive
from tui.textsafe import clean

if TYPE_CHECKING:
    from tui.api.aio import AsyncClient

Json = dict[str, Any]
POLL_S = 1.0
SKIPPED = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}
FOLLOW_LIMIT_S = 3600.0
NAME_AT_VERSION = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,62})@(\S+)")


def add_parsers(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", parents=[parent], help="demo releases: publish, list, status, rollback")
    dsub = p.add_subparsers(dest="demo_command", metavar="COMMAND", required=True)

    q = command(dsub, parent, "publish", "upload a release (a tar.gz, or a directory packed here)", publish,
                json="print the server's answer")
    q.add_argument("path", type=Path, help="the release: a .tar.gz, or a directory holding dvic-demo.toml")
    q.add_argument("--name", help="publish under this name (instead of the manifest's)")
    q.add_argument("--version", dest="demo_version", metavar="VERSION",
                   help="publish as this version (instead of the manifest's)")
    command(dsub, parent, "list", "published demos and where they are deployed", list_demos,
            json='print {"demos": [...]}')
    command(dsub, parent, "releases", "the releases of a demo", releases, "name", json='print {"releases": [...]}')
    command(dsub, parent, "status", "supervised demos per node: version, health, restarts", status,
            json='print {"status": [...]}').add_argument("name", nargs="?", help="only this demo")
    _target_options(command(dsub, parent, "rollback", "go back to the version a target ran before", rollback,
                            "name"))
    command(dsub, parent, "deployments", "deployments, newest first", list_deployments,
            json='print {"deployments": [...]}').add_argument("name", nargs="?", help="only this demo's")
    command(dsub, parent, "deployment", "one deployment and each node's install state", show_deployment, "id",
            json="print the deployment")

    p = command(sub, parent, "deploy", "make a node, a group or all nodes run a demo release", deploy)
    p.add_argument("release", metavar="NAME@VERSION")
    _target_options(p)
    p.add_argument("--batch", type=int, metavar="K",
                   help="canaries: the first K nodes, the rest only once those are healthy")
    _target_options(command(sub, parent, "undeploy", "stop and remove a demo on a node, a group or all nodes",
                            undeploy, "name"))


def _target_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", metavar="N", help="one node (name or UUID)")
    where.add_argument("--group", metavar="G", help="every node of group G")
    where.add_argument("--all", action="store_true", help="every node of the fleet")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask before acting on a group or all nodes")
    p.add_argument("--wait", action="store_true", help="follow the rollout until it is done or failed")
    p.add_argument("--timeout", type=positive, default=FOLLOW_LIMIT_S, metavar="S",
                   help=f"with --wait: give up following after S seconds (default {FOLLOW_LIMIT_S:g})")
    p.add_argument("--json", action="store_true", help="print the deployment (and its updates) as JSON")


def _target(args: argparse.Namespace) -> Json:
    if args.all:
        return {"all": True}
    return {"group": args.group} if args.group is not None else {"node": args.node}


# -- the catalog -------------------------------------------------------------------------------
def pack_directory(directory: Path, out: Path) -> Path:
    """`directory` as a tar.gz at `out`: its content at the archive's root (no leading folder);
    version-control and cache folders left out; symlinks kept as links (the server checks them)."""
    with tarfile.open(out, "w:gz") as tar:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
            for name in dirs + sorted(files):
                path = Path(root) / name
                tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return out


def temp_archive() -> Path:
    fd, name = tempfile.mkstemp(prefix="dvic-demo-", suffix=".tar.gz")
    os.close(fd)
    return Path(name)


def _archive_of(path: Path) -> tuple[Path, bool]:
    """(the archive to upload, whether it was packed here and is to be deleted after)."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if not path.is_dir():
        return path, False
    if not (path / "dvic-demo.toml").is_file():
        raise UsageError(f"{path}: no dvic-demo.toml in this directory (see docs/demos.md)")
    return pack_directory(path, temp_archive()), True


async def publish(args: argparse.Namespace, settings: SettingsFn) -> int:
    path, was_packed = await asyncio.to_thread(_archive_of, args.path)
    packed = path if was_packed else None
    try:
        async with client(settings()) as api:
            with path.open("rb") as archive:  # noqa: ASYNC230 - opening is instant; the upload streams it
                doc = await api.upload(calls.publish_demo(args.name, args.demo_version), archive)
    finally:
        if packed is not None:
            packed.unlink(missing_ok=True)
    if args.json:
        emit_json(doc)
    else:
        what = "published" if doc.get("created") else "already published (same content)"
        say(f"{what}: {clean(doc.get('name'), single_line=True)} {clean(doc.get('version'), single_line=True)}"
            f" ({fmt.size(doc.get('size'))}, sha256 {doc.get('sha256')})")
    return 0


async def list_demos(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        rows = await api.demos()
    if args.json:
        emit_json({"demos": rows})
        return 0
    table = [[d.get("name"), d.get("latest") or "-", d.get("releases"), _assignments(d.get("assignments") or []),
              f"{d.get('healthy', 0)}/{d.get('nodes', 0)}"] for d in rows]
    say(fmt.table(["DEMO", "LATEST", "RELEASES", "DEPLOYED", "HEALTHY"], table, right=(2,)))
    return 0


def _assignments(items: list[Json]) -> str:
    if not items:
        return "-"
    return ", ".join(f"{a.get('target')}={a.get('version') or 'none'}" for a in items)


async def releases(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await show_list(args, settings, "releases", lambda api: api.demo_releases(args.name), _releases_table)


def _releases_table(rows: list[Json]) -> str:
    table = [[r.get("version"), fmt.size(r.get("size")), str(r.get("sha256", ""))[:12], fmt.stamp(r.get("published_at")),
              r.get("published_by"), "yes" if r.get("referenced") else "-"] for r in rows]
    return fmt.table(["VERSION", "SIZE", "SHA256", "PUBLISHED", "BY", "IN USE"], table, right=(1,))


async def status(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await show_list(args, settings, "status", lambda api: api.demo_status(args.name), _status_table)


def _status_table(rows: list[Json]) -> str:
    return fmt.table(["DEMO", "NODE", "VERSION", "STATE", "RESTARTS", "UPTIME", "HEARTBEAT", "INSTALL", "MESSAGE"],
                     [_status_line(r) for r in rows], right=(4,))


def _status_line(r: Json) -> list[object]:
    version = r.get("version") or "-"
    if r.get("desired_version") and r.get("desired_version") != r.get("version"):
        version += f" (wants {r['desired_version']})"
    install = r.get("install") or {}
    install_text = "-"
    if install:
        install_text = str(install.get("state"))
        if install.get("state") == "downloading" and install.get("total"):
            install_text += f" {100 * (install.get('bytes') or 0) // install['total']}%"
    state = r.get("state") or "-"
    if r.get("node_state") not in (None, "online"):
        state += f" (node {r['node_state']})"
    return [r.get("demo"), r.get("node_name"), version, state, r.get("restarts", 0), fmt.duration(r.get("uptime")),
            fmt.age(r.get("last_heartbeat")) + (" ago" if r.get("last_heartbeat") else ""), install_text,
            r.get("message") or ""]


async def list_deployments(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await show_list(args, settings, "deployments", lambda api: api.deployments(args.name), _deployments_table)


def _deployments_table(rows: list[Json]) -> str:
    table = [[d.get("id"), d.get("demo"), d.get("kind"), d.get("version") or "-", d.get("target_name"),
              d.get("state"), fmt.stamp(d.get("created_at")), d.get("operator"), d.get("message") or ""] for d in rows]
    return fmt.table(["ID", "DEMO", "KIND", "VERSION", "TARGET", "STATE", "CREATED", "BY", "MESSAGE"], table)


async def show_deployment(args: argparse.Namespace, settings: SettingsFn) -> int:
    async with client(settings()) as api:
        doc = await api.deployment(args.id)
    return emit(args, doc, "" if args.json else _deployment_text(doc))


def _deployment_text(doc: Json) -> str:
    head = f"{doc.get('kind')} {doc.get('demo')} {doc.get('version') or ''} to {doc.get('target_name')}: " \
           f"{doc.get('state')}" + (f" ({doc['message']})" if doc.get("message") else "")
    rows = [[n.get("node_name"), n.get("batch"), n.get("state"), n.get("message") or ""] for n in doc.get("nodes") or []]
    return clean(head, single_line=True) + "\n" + fmt.table(["NODE", "BATCH", "STATE", "MESSAGE"], rows, right=(1,))


# -- deployments -------------------------------------------------------------------------------
async def deploy(args: argparse.Namespace, settings: SettingsFn) -> int:
    match = NAME_AT_VERSION.fullmatch(args.release)
    if match is None:
        raise UsageError(f"{args.release!r}: give the release as NAME@VERSION, e.g. robot-arm@1.4.0")
    if args.batch is not None and args.batch < 1:
        raise UsageError("--batch: a number of nodes, at least 1")
    name, version = match.groups()
    return await _change(args, settings, f"deploy {name} {version}",
                         lambda api, target: api.deploy(name, version, target, args.batch))


async def undeploy(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await _change(args, settings, f"undeploy {args.name}", lambda api, target: api.undeploy(args.name, target))


async def rollback(args: argparse.Namespace, settings: SettingsFn) -> int:
    return await _change(args, settings, f"roll back {args.name}", lambda api, target: api.rollback(args.name, target))


async def _change(args: argparse.Namespace, settings: SettingsFn, what: str, call: Any) -> int:
    from tui.cmds.actions import confirm

    target = _target(args)
    async with client(settings()) as api:
        await confirm(api, args, target, what)
        doc = await call(api, target)
        if args.json:
            emit_json(doc)
        else:
            say(f"deployment {doc.get('id')}: " + _deployment_text(doc))
        if not args.wait:
            return 0
        return await follow(api, doc, args.json, args.timeout)


async def follow(api: AsyncClient, doc: Json, as_json: bool, limit_s: float) -> int:
    """Print each node's state change until the deployment is done (0) or failed/superseded (1)."""
    seen = {n.get("node"): n.get("state") for n in doc.get("nodes") or []}
    deadline = time.monotonic() + limit_s
    while doc.get("state") == "rolling":
        if time.monotonic() > deadline:
            say(f"still rolling after {limit_s:g} s: see `dvic demo deployment {doc.get('id')}`")
            return 1
        await asyncio.sleep(POLL_S)
        doc = await api.deployment(str(doc.get("id")))
        for node in doc.get("nodes") or []:
            if seen.get(node.get("node")) != node.get("state"):
                seen[node.get("node")] = node.get("state")
                if as_json:
                    emit_json({"type": "node", **node})
                else:
                    message = f": {clean(node['message'], single_line=True)}" if node.get("message") else ""
                    say(f"{fmt.clock(node.get('updated_at'))}  {clean(node.get('node_name'), single_line=True)}  "
                        f"{node.get('state')}{message}")
    if as_json:
        emit_json({"type": "deployment", **doc})
    else:
        say(f"deployment {doc.get('id')}: {doc.get('state')}" + (
            f" ({clean(doc['message'], single_line=True)})" if doc.get("message") else ""))
    return 0 if doc.get("state") == "done" else 1
