"""The daemon release nodes update to: its facts, the file itself, publishing one, rotating its key."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from dvic_core.schema import Raw

from ..auth import NODE, PUBLIC, ApiError
from ..nodehub import authenticate_node
from ..release import MAX_DAEMON_BYTES, ReleaseError
from ..routes import params, routes
from ..services import Services
from ..strictjson import json_response
from .params import services


def _release_view(svc: Services) -> dict[str, Any]:
    current = svc.release.current()
    return {
        "version": current.version if current else None, "sha256": current.sha256 if current else None,
        "size": current.size if current else 0, "release_key": svc.release.public,
        "endorsements": svc.release.endorsements(),
    }


@routes.route("GET", "/api/v1/release", role="viewer", summary="The daemon release nodes update to")
async def release_info(request: web.Request) -> web.Response:
    return json_response(_release_view(services(request)))


@routes.route("GET", "/api/v1/node/release", role=NODE,
              summary="The same, for a node (client certificate): how it follows release-key rotations")
async def node_release_info(request: web.Request) -> web.Response:
    svc = services(request)
    who = authenticate_node(svc, request)
    if isinstance(who, web.Response):
        return who
    return json_response(_release_view(svc))


@routes.route("GET", "/api/v1/release/daemon", role=PUBLIC,
              summary="The daemon file (signed; verify with the release key before use)")
async def release_file(request: web.Request) -> web.StreamResponse:
    current = services(request).release.current()
    if current is None:
        raise ApiError(404, "no_release", "no daemon release")
    return web.FileResponse(current.path, headers={
        "Content-Type": "text/x-python", "X-Dvic-Version": current.version, "X-Dvic-Signature": current.signature})


@routes.route("POST", "/api/v1/release", role="admin",
              summary=f"Publish a new daemon file (raw body, at most {MAX_DAEMON_BYTES} bytes), signed",
              body=Raw("text/x-python", max_bytes=MAX_DAEMON_BYTES,
                       message=f"a daemon file is at most {MAX_DAEMON_BYTES} bytes"))
async def publish_release(request: web.Request) -> web.Response:
    svc = services(request)
    try:
        # Compiling up to 2 MiB takes a while: not on the event loop every node shares.
        release = await asyncio.to_thread(svc.release.publish, params(request)["body"])
    except ReleaseError as exc:
        raise ApiError(400, "bad_release", str(exc)) from None
    return json_response({"version": release.version, "sha256": release.sha256, "size": release.size},
                         status=201)


@routes.route("POST", "/api/v1/release/rotate-key", role="admin",
              summary="Rotate the release key (the new key is endorsed by the old one)")
async def rotate_release_key(request: web.Request) -> web.Response:
    endorsement = services(request).release.rotate()
    return json_response(endorsement, status=201)
