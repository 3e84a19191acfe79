"""OpenAPI 3.1 document built from the route table, so the doc cannot drift from the routes."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from . import __version__
from .auth import NODE, PUBLIC, RouteTable
from .routes import routes

_TYPES = {"string": {"type": "string"}, "boolean": {"type": "boolean"}, "integer": {"type": "integer"}}


def build(table: RouteTable) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for spec in table.specs:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", spec.path)
        ] + [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in spec.query]
        op: dict[str, Any] = {
            "summary": spec.summary,
            "x-dvic-role": spec.role,
            "responses": {"200": {"description": "OK"}, "4XX": {"$ref": "#/components/responses/Error"}},
        }
        if params:
            op["parameters"] = params
        if spec.role not in (PUBLIC, NODE):
            op["security"] = [{"bearer": []}]
        if spec.body:
            op["requestBody"] = {"content": {"application/json": {"schema": {
                "type": "object", "properties": {k: _TYPES.get(v, {}) for k, v in spec.body.items()},
            }}}}
        paths.setdefault(spec.path, {})[spec.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "DVIC Demo Monitor central API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}}}}}}},
        },
    }


@routes.route("GET", "/api/v1/openapi.json", role=PUBLIC, summary="This document")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build(routes))
