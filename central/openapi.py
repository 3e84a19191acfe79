"""OpenAPI 3.1 document built from the route table, so the doc cannot drift from the routes.

Parameters and bodies come from the very schema objects that check each request (types, enums,
bounds, defaults, what is required): see dvic_core/schema.py and central/routes.py.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from dvic_core.schema import Raw

from . import __version__
from .auth import NODE, PUBLIC, RouteSpec, RouteTable
from .routes import routes
from .strictjson import json_response


def build(table: RouteTable) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for spec in table.specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec)
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


def _operation(spec: RouteSpec) -> dict[str, Any]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", spec.path)
    ] + (spec.query.parameters() if spec.query is not None else [])
    op: dict[str, Any] = {
        "summary": spec.summary,
        "x-dvic-role": spec.role,
        "responses": {"200": {"description": "OK"}, "4XX": {"$ref": "#/components/responses/Error"}},
    }
    if params:
        op["parameters"] = params
    if spec.role not in (PUBLIC, NODE):
        op["security"] = [{"bearer": []}]
    if isinstance(spec.body, Raw):
        op["requestBody"] = {"required": True, "content": {spec.body.content_type: {"schema": spec.body.openapi()}}}
    elif spec.body is not None:
        op["requestBody"] = {"required": not spec.optional_body,
                             "content": {"application/json": {"schema": spec.body.openapi()}}}
    return op


@routes.route("GET", "/api/v1/openapi.json", role=PUBLIC, summary="This document")
async def openapi(request: web.Request) -> web.Response:
    return json_response(build(routes))
