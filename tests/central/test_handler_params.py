"""Handlers read their parameters as the route declared them (central/routes.py `params`), never the
raw query or body: checked on the source with `ast`, for every module that declares routes."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import central.app  # noqa: F401  (importing the app registers every route)
from central.auth import NODE, RouteSpec
from central.routes import routes
from dvic_core.schema import Object

CENTRAL = Path(central.app.__file__).resolve().parent
# What a request offers of its query and body; central/routes.py alone reads them.
RAW_INPUT = {"query", "rel_url", "query_string", "json", "post", "read", "text", "content", "can_read_body",
             "body_exists", "multipart"}


def route_modules() -> list[Path]:
    return sorted(p for p in CENTRAL.rglob("*.py") if "@routes.route(" in p.read_text() and p.name != "routes.py")


def raw_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.name}:{node.lineno} request.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in RAW_INPUT
            and isinstance(node.value, ast.Name) and node.value.id == "request"]


def test_route_modules_are_found() -> None:
    names = {p.name for p in route_modules()}
    assert {"nodes.py", "history.py", "operators.py", "commands.py", "nodehub.py", "openapi.py"} <= names


@pytest.mark.parametrize("path", route_modules(), ids=lambda p: str(p.relative_to(CENTRAL.parent)))
def test_no_handler_reads_the_raw_query_or_body(path: Path) -> None:
    assert raw_reads(path) == []


def test_the_check_sees_a_raw_read(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("async def handler(request):\n    return request.query.get('x'), await request.json()\n")
    assert [line.split()[-1] for line in raw_reads(sample)] == ["request.query", "request.json"]


def _declared(spec: RouteSpec) -> list[str]:
    names = list(spec.query.fields) if spec.query is not None else []
    return names + (list(spec.body.fields) if isinstance(spec.body, Object) else [])


PARAM_ROUTES = [s for s in routes.specs if s.declares_params and s.role != NODE and _declared(s)]


@pytest.mark.parametrize("spec", PARAM_ROUTES, ids=lambda s: f"{s.method} {s.path}")
def test_every_declared_parameter_is_read(spec: RouteSpec) -> None:
    # A declaration nobody reads is a parameter the API promises and ignores (the logs `group` once
    # was read and not declared). The handler's module, and the shared rules it hands them to.
    module = inspect.getmodule(spec.handler)
    assert module is not None and module.__file__ is not None
    source = Path(module.__file__).read_text() + (CENTRAL / "api" / "rules.py").read_text()
    unread = [name for name in _declared(spec) if f'["{name}"]' not in source]
    assert unread == [], (spec.path, unread)
