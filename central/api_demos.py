"""Demo releases and deployments over HTTP (issue 14; the domain is central/demos/).

Viewers read; operators publish, deploy, undeploy and roll back. Each write is audited by its
handler with what it did (the demo, the version, the target), refusals included. Nodes download
releases of their own desired set with Range support.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from . import store
from .api import json_body, limit_param
from .auth import NODE, ApiError, Operator, current_operator
from .demos.catalog import PublishError
from .demos.deployments import DeployError, Target
from .demos.manifest import NAME_RE, VERSION_RE
from .nodehub import authenticate_node
from .routes import routes
from .services import SERVICES, Services
from .strictjson import json_response

SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_BATCH = 100_000


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def _audit(services: Services, request: web.Request, operator: Operator, action: str, target: str,
                 status: int, detail: dict[str, Any]) -> None:
    await services.writer.submit(store.insert_audit(time.time(), operator.name, action, target, status,
                                                    request.remote or "", detail), urgent=True)


def _name(value: Any, field: str = "demo") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ApiError(400, "bad_demo", f"{field}: a demo name (letters, digits, '.', '_', '-'; at most 63)")
    return value


def _version(value: Any) -> str:
    if not isinstance(value, str) or not VERSION_RE.fullmatch(value):
        raise ApiError(400, "bad_version", "version: digits and dots, an optional -suffix (e.g. 1.4.0)")
    return value


def _target(body: dict[str, Any]) -> Target:
    given = [k for k in ("node", "group", "all") if body.get(k) not in (None, False)]
    if len(given) != 1:
        raise ApiError(400, "bad_target", "give exactly one of 'node' (a name or id), 'group' (a name) or 'all': true")
    scope = given[0]
    if scope == "all":
        if body["all"] is not True:
            raise ApiError(400, "bad_target", "all: true")
        return Target("all")
    value = body[scope]
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ApiError(400, "bad_target", f"{scope}: a {scope} name")
    return Target(scope, value)


def _resolved(services: Services, target: Target, operator: Operator) -> Target:
    """A node target by id (names can change); a node in maintenance is for admins only."""
    if target.scope != "node":
        return target
    node = services.registry.get(target.value)
    if node is None:
        raise ApiError(404, "no_such_node", f"no node with id or name {target.value!r}")
    if node.maintenance and operator.role != "admin":
        raise ApiError(403, "maintenance", f"node {node.name!r} is in maintenance: only admins may act on it")
    return Target("node", node.id)


def _target_text(services: Services, target: Target) -> str:
    return target.describe(services.registry)


# -- the catalog -------------------------------------------------------------------------------
@routes.route("POST", "/api/v1/demos/releases", role="operator", audit=False, query=("name", "version"),
              summary="Publish a demo release (raw tar.gz body, streamed; name/version override the manifest's)")
async def publish(request: web.Request) -> web.Response:
    services = _services(request)
    operator = current_operator(request)
    name = request.query.get("name") or None
    version = request.query.get("version") or None
    detail: dict[str, Any] = {"name": name, "version": version, "bytes": request.content_length}
    try:
        if name is not None:
            _name(name, "name")
        if version is not None:
            _version(version)
        release, created = await services.catalog.publish(request.content.iter_chunked(256 * 1024),
                                                          request.content_length, operator.name,
                                                          name=name, version=version)
    except (PublishError, ApiError) as exc:
        await _audit(services, request, operator, "demo_publish", name or "?", exc.status,
                     {**detail, "error": exc.code, "message": exc.message})
        raise ApiError(exc.status, exc.code, exc.message) from None
    await _audit(services, request, operator, "demo_publish", f"{release.name} {release.version}", 201 if created else 200,
                 {"sha256": release.sha256, "size": release.size, "new": created})
    if created:
        await services.catalog.apply_retention(services.deployments.referenced())
    return json_response({**release.view(), "created": created}, status=201 if created else 200)


@routes.route("GET", "/api/v1/demos", role="viewer", summary="Published demos, their latest release and deployments")
async def list_demos(request: web.Request) -> web.Response:
    services = _services(request)
    catalog, hub = services.catalog, services.deployments
    status = hub.status_rows()
    out = []
    for name in sorted(set(catalog.names()) | {d for d, _, _ in hub.assignments}):
        versions = catalog.versions(name)
        latest = max(versions, key=lambda r: r.published_at) if versions else None
        rows = [s for s in status if s["demo"] == name]
        out.append({
            "name": name, "releases": len(versions), "latest": latest.version if latest else None,
            "latest_published_at": latest.published_at if latest else None,
            "assignments": [{"scope": scope, "target": _target_text(services, Target(scope, target)),
                             "version": a.version, "deployment": a.deployment_id}
                            for (demo, scope, target), a in sorted(hub.assignments.items()) if demo == name],
            "nodes": len(rows), "healthy": sum(1 for s in rows if s["state"] == "healthy"),
        })
    return json_response({"demos": out})


@routes.route("GET", "/api/v1/demos/{name}/releases", role="viewer", summary="The releases of a demo (oldest first)")
async def list_releases(request: web.Request) -> web.Response:
    services = _services(request)
    name = request.match_info["name"]
    versions = services.catalog.versions(name)
    if not versions and not any(d == name for d, _, _ in services.deployments.assignments):
        raise ApiError(404, "no_such_demo", f"no demo {name!r} is published")
    referenced = services.deployments.referenced()
    return json_response({"demo": name, "releases": [
        {**r.view(), "referenced": (r.name, r.version) in referenced} for r in versions]})


@routes.route("GET", "/api/v1/demos/status", role="viewer", query=("demo",),
              summary="Supervised demos per node: version, health, restarts, uptime, heartbeat, install")
async def demo_status(request: web.Request) -> web.Response:
    demo = request.query.get("demo") or None
    return json_response({"status": _services(request).deployments.status_rows(demo)})


# -- deployments -------------------------------------------------------------------------------
async def _deployment_call(request: web.Request, action: str) -> web.Response:
    services = _services(request)
    operator = current_operator(request)
    body = await json_body(request)
    detail: dict[str, Any] = {k: body.get(k) for k in ("demo", "version", "node", "group", "all", "batch")
                              if body.get(k) is not None}
    hub = services.deployments
    try:
        demo = _name(body.get("demo"))
        target = _resolved(services, _target(body), operator)
        if action == "deploy":
            version = _version(body.get("version"))
            batch = body.get("batch")
            if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                      or not 1 <= batch <= MAX_BATCH):
                raise ApiError(400, "bad_batch", "batch: a number of nodes from 1 (the canaries go first)")
            dep = await hub.deploy(demo, version, target, operator.name, batch)
        elif action == "undeploy":
            dep = await hub.undeploy(demo, target, operator.name)
        else:
            dep = await hub.rollback(demo, target, operator.name)
    except (DeployError, ApiError) as exc:
        await _audit(services, request, operator, f"demo_{action}", str(body.get("demo"))[:64], exc.status,
                     {**detail, "error": exc.code, "message": exc.message})
        raise ApiError(exc.status, exc.code, exc.message) from None
    await _audit(services, request, operator, f"demo_{action}", f"{demo} on {_target_text(services, target)}", 201,
                 {**detail, "deployment": dep.id, "version": dep.version})
    return json_response(hub.deployment_view(dep), status=201)


DEPLOY_BODY = {"demo": "string", "version": "string", "node": "string", "group": "string", "all": "boolean",
               "batch": "integer"}
TARGET_BODY = {"demo": "string", "node": "string", "group": "string", "all": "boolean"}


@routes.route("POST", "/api/v1/deployments", role="operator", audit=False, body=DEPLOY_BODY,
              summary="Deploy a demo release to a node, a group or all nodes (desired state; canary batches)")
async def deploy(request: web.Request) -> web.Response:
    return await _deployment_call(request, "deploy")


@routes.route("POST", "/api/v1/deployments/undeploy", role="operator", audit=False, body=TARGET_BODY,
              summary="Stop and remove a demo on a node, a group or all nodes")
async def undeploy(request: web.Request) -> web.Response:
    return await _deployment_call(request, "undeploy")


@routes.route("POST", "/api/v1/deployments/rollback", role="operator", audit=False, body=TARGET_BODY,
              summary="Deploy the version a target ran before its current deployment")
async def rollback(request: web.Request) -> web.Response:
    return await _deployment_call(request, "rollback")


@routes.route("GET", "/api/v1/deployments", role="viewer", query=("demo", "limit"),
              summary="Deployments (newest first)")
async def list_deployments(request: web.Request) -> web.Response:
    services = _services(request)
    demo = request.query.get("demo") or None
    rows = await services.deployments.deployments_list(services.read_db, demo, limit_param(request, 50))
    return json_response({"deployments": rows})


@routes.route("GET", "/api/v1/deployments/{id}", role="viewer", summary="A deployment and each node's install state")
async def get_deployment(request: web.Request) -> web.Response:
    services = _services(request)
    dep_id = request.match_info["id"]
    view = await services.deployments.deployment(services.read_db, dep_id)
    if view is None:
        raise ApiError(404, "no_such_deployment", f"no deployment {dep_id!r}")
    return json_response(view)


# -- node downloads ----------------------------------------------------------------------------
@routes.route("GET", "/api/v1/node/releases/{sha256}", role=NODE,
              summary="A release archive for a node (client certificate; Range: bytes=N- resumes, 206)")
async def node_release(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    who = authenticate_node(services, request)
    if isinstance(who, web.Response):
        return who
    sha256 = request.match_info["sha256"]
    if not SHA256_RE.fullmatch(sha256) or not services.deployments.allowed_release(who, sha256):
        raise ApiError(404, "no_such_release", "no such release in this node's desired set")
    path = services.catalog.path(sha256)
    if not path.exists():
        raise ApiError(404, "no_such_release", "the release file is gone from the server")
    return web.FileResponse(path, headers={"Content-Type": "application/gzip"})

