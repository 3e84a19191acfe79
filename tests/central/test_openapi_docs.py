"""The served OpenAPI document carries each parameter's type, bounds, enumerated values, default and
whether it is required, from the schemas that check the requests; docs/protocol.md's route table
(section 4) lists the same routes, roles and parameters."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from dvic_core.constants import LEVELS, LOG_SOURCES, NODE_KINDS, NODE_STATES, ROLES

from .inproc import in_process

in_module_loop = pytest.mark.asyncio(loop_scope="module")
PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
V1 = "/api/v1"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    async for app in in_process(tmp_path_factory.mktemp("openapi") / "central"):
        status, doc = await app.call("GET", f"{V1}/openapi.json", token="")
        assert status == 200
        yield doc


def query(doc: dict[str, Any], method: str, path: str) -> dict[str, dict[str, Any]]:
    op = doc["paths"][path][method]
    return {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}


def body(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return schema


@in_module_loop
async def test_query_parameters_have_types_bounds_enums_and_defaults(served: dict[str, Any]) -> None:
    logs = query(served, "get", f"{V1}/logs")
    assert logs["group"]["schema"] == {"type": "string", "description": logs["group"]["schema"]["description"]}
    assert logs["node"]["schema"]["type"] == "array" and logs["node"]["schema"]["items"] == {"type": "string"}
    assert logs["node"]["explode"] is False
    assert {k: logs["limit"]["schema"][k] for k in ("type", "minimum", "maximum", "default")} == {
        "type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert logs["source"]["schema"]["enum"] == list(LOG_SOURCES)
    assert logs["level"]["schema"]["enum"] == list(LEVELS)
    assert logs["from"]["schema"]["type"] == "number" and logs["from"]["schema"]["minimum"] == 0
    nodes = query(served, "get", f"{V1}/nodes")
    assert nodes["state"]["schema"]["enum"] == list(NODE_STATES) and nodes["kind"]["schema"]["enum"] == list(NODE_KINDS)
    tunnel = query(served, "get", f"{V1}/nodes/{{node}}/tunnel")
    assert tunnel["host"]["required"] is True and tunnel["port"]["schema"]["maximum"] == 65535
    assert tunnel["port"]["schema"]["default"] == 22
    assert query(served, "get", f"{V1}/commands")["limit"]["schema"]["default"] == 50


@in_module_loop
async def test_bodies_have_types_required_fields_and_bounds(served: dict[str, Any]) -> None:
    command = body(served, "post", f"{V1}/commands")["properties"]
    assert command["nodes"]["type"] == ["array", "null"] and command["nodes"]["items"] == {"type": "string"}
    assert command["argv"]["minItems"] == 1 and command["all"]["type"] == ["boolean", "null"]
    assert {k: command["timeout"][k] for k in ("type", "exclusiveMinimum", "maximum", "default")} == {
        "type": "number", "exclusiveMinimum": 0, "maximum": 3600.0, "default": 60.0}
    action = body(served, "post", f"{V1}/nodes/{{node}}/actions")
    assert action["required"] == ["action"] and "update" not in action["properties"]["action"]["enum"]
    assert action["properties"]["timeout"]["minimum"] == 1 and action["properties"]["timeout"]["maximum"] == 86400
    assert body(served, "post", f"{V1}/update")["properties"]["nodes"]["type"] == ["array", "null"]
    assert body(served, "post", f"{V1}/nodes/{{node}}/maintenance") == {
        "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}
    role = body(served, "post", f"{V1}/operators/{{name}}/role")
    assert role["required"] == ["role"] and role["properties"]["role"]["enum"] == list(ROLES)
    enroll = body(served, "post", f"{V1}/nodes")
    assert enroll["required"] == ["name"] and enroll["properties"]["kind"]["default"] == "desktop"
    assert re.fullmatch(enroll["properties"]["name"]["pattern"], "pi-42")
    assert not re.fullmatch(enroll["properties"]["name"]["pattern"], "pi 42")
    release = served["paths"][f"{V1}/release"]["post"]["requestBody"]["content"]
    assert list(release) == ["text/x-python"] and release["text/x-python"]["schema"]["maxLength"] > 0
    tokens = served["paths"][f"{V1}/operators/{{name}}/tokens"]["post"]["requestBody"]
    assert tokens["required"] is False


def _typed(schema: dict[str, Any]) -> bool:
    return "type" in schema or "const" in schema


@in_module_loop
async def test_every_parameter_and_body_field_is_typed(served: dict[str, Any]) -> None:
    untyped = []
    for path, ops in served["paths"].items():
        for method, op in ops.items():
            untyped += [(method, path, p["name"]) for p in op.get("parameters", []) if not _typed(p["schema"])]
            for content in op.get("requestBody", {}).get("content", {}).values():
                fields = content["schema"].get("properties", {})
                untyped += [(method, path, name) for name, s in fields.items() if not _typed(s)]
    assert untyped == []


# -- docs/protocol.md, section 4 -------------------------------------------------------------------
ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/api/v1/[^`]*|/metrics)` \| (\w+) \|([^|]*)\|")
ROLE_WORDS = {"none": "public"}


def documented_routes() -> dict[tuple[str, str], tuple[str, str]]:
    """(method, path) -> (role, parameters) of every row of the route table."""
    rows = {}
    for line in PROTOCOL_MD.read_text().splitlines():
        match = ROW.match(line)
        if match:
            method, path, role, parameters = match.groups()
            assert (method, path) not in rows, f"{method} {path} is in the table twice"
            rows[(method, path)] = (ROLE_WORDS.get(role, role), parameters.strip())
    return rows


def served_parameters(op: dict[str, Any]) -> str:
    """The parameters column as the docs write it: `query `a`, `b``, `body (optional) `x``, `raw body`."""
    names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
    if names:
        return "query " + ", ".join(f"`{n}`" for n in names)
    request = op.get("requestBody")
    if request is None:
        return ""
    content = request["content"]
    if "application/json" not in content:
        return "raw body"
    fields = ", ".join(f"`{n}`" for n in content["application/json"]["schema"]["properties"])
    return ("body " if request["required"] else "body (optional) ") + fields


@in_module_loop
async def test_the_protocol_route_table_is_the_served_api(served: dict[str, Any]) -> None:
    documented = documented_routes()
    served_routes = {(method.upper(), path): (op["x-dvic-role"], served_parameters(op))
                     for path, ops in served["paths"].items() for method, op in ops.items()}
    assert set(documented) == set(served_routes), {
        "not served": set(documented) - set(served_routes), "not documented": set(served_routes) - set(documented)}
    wrong = {route: {"docs": documented[route], "served": served_routes[route]}
             for route in documented if documented[route] != served_routes[route]}
    assert wrong == {}
