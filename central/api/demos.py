"""Demo releases and deployments (issue 14; the domain is central/demos/, docs/demos.md).

Viewers read; operators publish, deploy, undeploy and roll back. Each write is audited by its
handler with what it did (the demo, the version, the target, the deployment id), refusals of the
domain included. Nodes download the releases of their own desired set, with Range support.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from dvic_core.schema import Bool, Int, Object, Query, Schema, Str, Stream

from .. import store
from ..auth import NODE, ApiError, Operator, current_operator
from ..cluster.features import LeaderUnavailable
from ..config import DemoLimits
from ..demos.catalog import PublishError
from ..demos.deployments import DeployError, Target
from ..demos.manifest import NAME_RE, VERSION_RE
from ..nodehub import authenticate_node
from ..routes import params, routes
from ..services import Services
from ..strictjson import json_response
from .params import limit, services
from .rules import check_may_act

SHA256 = r"[0-9a-f]{64}"
MAX_BATCH = 100_000
NAME_RULE = "a demo name (letters, digits, '.', '_', '-'; at most 63, starting with a letter or digit)"
VERSION_RULE = "a version: digits and dots, an optional -suffix (e.g. 1.4.0)"
TARGET_RULE = "give exactly one of 'node' (a name or id), 'group' (a name) or 'all': true"


def demo_name(field: str = "demo", **options: Any) -> Str:
    options.setdefault("doc", NAME_RULE)
    return Str(pattern=NAME_RE.pattern, code="bad_demo", message=f"{field}: {NAME_RULE}", **options)


def version(**options: Any) -> Str:
    options.setdefault("doc", VERSION_RULE)
    return Str(pattern=VERSION_RE.pattern, code="bad_version", message=f"version: {VERSION_RULE}", **options)


def target_fields() -> dict[str, Schema]:
    """One of `node`, `group`, `all` (checked by _target: exactly one)."""
    return {
        "node": Str(min_len=1, max_len=64, nullable=True, code="bad_target", message=TARGET_RULE,
                    doc="one node (name or id)"),
        "group": Str(min_len=1, max_len=64, nullable=True, code="bad_target", message=TARGET_RULE,
                     doc="every node of this group"),
        "all": Bool(nullable=True, code="bad_target", message=TARGET_RULE, doc="true: every node"),
    }


async def _audit(svc: Services, request: web.Request, operator: Operator, action: str, target: str,
                 status: int, detail: dict[str, Any]) -> None:
    await svc.writer.submit(store.insert_audit(time.time(), operator.name, action, target, status,
                                               request.remote or "", detail), urgent=True)


def _target(p: dict[str, Any]) -> Target:
    node, group, everyone = p["node"], p["group"], p["all"] is True
    if (node is not None) + (group is not None) + everyone != 1:
        raise ApiError(400, "bad_target", TARGET_RULE)
    if everyone:
        return Target("all")
    return Target("node", node) if node is not None else Target("group", group)


def _resolved(svc: Services, target: Target, operator: Operator) -> Target:
    """A node target by id (names can change); a node in maintenance, or booked by someone else,
    is refused as for any action on it (rules.check_may_act)."""
    if target.scope != "node":
        return target
    node = svc.registry.get(target.value)
    if node is None:
        raise ApiError(404, "no_such_node", f"no node with id or name {target.value!r}")
    check_may_act(svc, node, operator)
    return Target("node", node.id)


# -- the catalog -------------------------------------------------------------------------------
@routes.route("POST", "/api/v1/demos/releases", role="operator", audit=False,
              summary="Publish a demo release (a tar.gz, streamed; name and version override the manifest's)",
              query=Query({"name": demo_name("name", doc="publish under this name"),
                           "version": version(doc="publish as this version")}),
              body=Stream("application/gzip", max_bytes=DemoLimits.max_release_bytes,
                          doc="the release archive; at most dvic-central serve --max-release-bytes"))
async def publish(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    operator = current_operator(request)
    name, ver = p["name"], p["version"]
    try:
        release, created = await svc.catalog.publish(p["body"].iter_chunked(256 * 1024), request.content_length,
                                                     operator.name, name=name, version=ver)
    except PublishError as exc:
        await _audit(svc, request, operator, "demo_publish", name or "?", exc.status,
                     {"name": name, "version": ver, "bytes": request.content_length, "error": exc.code,
                      "message": exc.message})
        raise ApiError(exc.status, exc.code, exc.message) from None
    await _audit(svc, request, operator, "demo_publish", f"{release.name} {release.version}", 201 if created else 200,
                 {"sha256": release.sha256, "size": release.size, "new": created})
    if created:
        await svc.catalog.apply_retention(svc.deployments.referenced())
    return json_response({**release.view(), "created": created}, status=201 if created else 200)


@routes.route("GET", "/api/v1/demos", role="viewer", summary="Published demos, their latest release and deployments")
async def list_demos(request: web.Request) -> web.Response:
    svc = services(request)
    catalog, hub = svc.catalog, svc.deployments
    status = hub.status_rows()
    out = []
    for name in sorted(set(catalog.names()) | {d for d, _, _ in hub.assignments}):
        versions = catalog.versions(name)
        latest = max(versions, key=lambda r: r.published_at) if versions else None
        rows = [s for s in status if s["demo"] == name]
        out.append({
            "name": name, "releases": len(versions), "latest": latest.version if latest else None,
            "latest_published_at": latest.published_at if latest else None,
            "assignments": [{"scope": scope, "target": Target(scope, target).describe(svc.registry),
                             "version": a.version, "deployment": a.deployment_id}
                            for (demo, scope, target), a in sorted(hub.assignments.items()) if demo == name],
            "nodes": len(rows), "healthy": sum(1 for s in rows if s["state"] == "healthy"),
        })
    return json_response({"demos": out})


@routes.route("GET", "/api/v1/demos/{name}/releases", role="viewer", summary="The releases of a demo (oldest first)")
async def list_releases(request: web.Request) -> web.Response:
    svc = services(request)
    name = request.match_info["name"]
    versions = svc.catalog.versions(name)
    if not versions and not any(d == name for d, _, _ in svc.deployments.assignments):
        raise ApiError(404, "no_such_demo", f"no demo {name!r} is published")
    referenced = svc.deployments.referenced()
    return json_response({"demo": name, "releases": [
        {**r.view(), "referenced": (r.name, r.version) in referenced} for r in versions]})


@routes.route("GET", "/api/v1/demos/status", role="viewer", query=Query({"demo": demo_name(doc="only this demo")}),
              summary="Supervised demos per node: version, health, restarts, uptime, heartbeat, install")
async def demo_status(request: web.Request) -> web.Response:
    return json_response({"status": services(request).deployments.status_rows(params(request)["demo"])})


# -- deployments -------------------------------------------------------------------------------
async def _deployment_call(request: web.Request, action: str) -> web.Response:
    svc, p = services(request), params(request)
    operator = current_operator(request)
    detail: dict[str, Any] = {k: v for k, v in p.items() if v is not None}
    hub = svc.deployments
    try:
        target = _resolved(svc, _target(p), operator)
        if action == "deploy":
            dep = await hub.deploy(p["demo"], p["version"], target, operator.name, p["batch"])
        elif action == "undeploy":
            dep = await hub.undeploy(p["demo"], target, operator.name)
        else:
            dep = await hub.rollback(p["demo"], target, operator.name)
    except (DeployError, ApiError) as exc:
        await _audit(svc, request, operator, f"demo_{action}", p["demo"], exc.status,
                     {**detail, "error": exc.code, "message": exc.message})
        raise ApiError(exc.status, exc.code, exc.message) from None
    await _audit(svc, request, operator, f"demo_{action}", f"{p['demo']} on {target.describe(svc.registry)}", 201,
                 {**detail, "deployment": dep.id, "version": dep.version})
    return json_response(hub.deployment_view(dep), status=201)


@routes.route("POST", "/api/v1/deployments", role="operator", audit=False,
              summary="Deploy a demo release to a node, a group or all nodes (desired state; canary batches)",
              body=Object({"demo": demo_name(required=True), "version": version(required=True), **target_fields(),
                           "batch": Int(min=1, max=MAX_BATCH, nullable=True, code="bad_batch",
                                        message="batch: a number of nodes from 1 (the canaries go first)",
                                        doc="canaries: the first K nodes, the rest once those are healthy")}))
async def deploy(request: web.Request) -> web.Response:
    return await _deployment_call(request, "deploy")


@routes.route("POST", "/api/v1/deployments/undeploy", role="operator", audit=False,
              summary="Stop and remove a demo on a node, a group or all nodes",
              body=Object({"demo": demo_name(required=True), **target_fields()}))
async def undeploy(request: web.Request) -> web.Response:
    return await _deployment_call(request, "undeploy")


@routes.route("POST", "/api/v1/deployments/rollback", role="operator", audit=False,
              summary="Deploy the version a target ran before its current deployment",
              body=Object({"demo": demo_name(required=True), **target_fields()}))
async def rollback(request: web.Request) -> web.Response:
    return await _deployment_call(request, "rollback")


@routes.route("GET", "/api/v1/deployments", role="viewer", summary="Deployments (newest first)",
              query=Query({"demo": demo_name(doc="only this demo's"), "limit": limit(50)}))
async def list_deployments(request: web.Request) -> web.Response:
    svc, p = services(request), params(request)
    return json_response({"deployments": await svc.deployments.deployments_list(svc.read_db, p["demo"], p["limit"])})


@routes.route("GET", "/api/v1/deployments/{id}", role="viewer", summary="A deployment and each node's install state")
async def get_deployment(request: web.Request) -> web.Response:
    svc = services(request)
    dep_id = request.match_info["id"]
    view = await svc.deployments.deployment(svc.read_db, dep_id)
    if view is None:
        raise ApiError(404, "no_such_deployment", f"no deployment {dep_id!r}")
    return json_response(view)


# -- node downloads ----------------------------------------------------------------------------
@routes.route("GET", "/api/v1/node/releases/{sha256}", role=NODE,
              summary="A release archive for a node (client certificate; Range: bytes=N- resumes, 206)")
async def node_release(request: web.Request) -> web.StreamResponse:
    import re

    svc = services(request)
    who = authenticate_node(svc, request)
    if isinstance(who, web.Response):
        return who
    sha256 = request.match_info["sha256"]
    try:  # (with replicas, the features leader's deployments decide)
        allowed = re.fullmatch(SHA256, sha256) is not None and await svc.features.allowed_release(who, sha256)
    except LeaderUnavailable as exc:
        raise ApiError(503, "leader_unavailable", str(exc)) from None
    if not allowed:
        raise ApiError(404, "no_such_release", "no such release in this node's desired set")
    path = svc.catalog.path(sha256)
    if not path.exists():
        raise ApiError(404, "no_such_release", "the release file is gone from the server")
    return web.FileResponse(path, headers={"Content-Type": "application/gzip"})
