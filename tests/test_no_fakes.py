"""No test stands in for the real server (issue 13): a test module that serves routes of the operator
API is a fake server, against which a test could pass for an API the server does not have.

What counts: a route registration (`add_get`, `add_post`, ... `add_route`) in any module under
tests/ whose path is one the real server declares for operators. Node-facing routes (the node
websocket, the keep-alive) are not counted: the daemon's tests play a hostile *server* on purpose.
Found with `ast`, so a fake is caught whatever its module or class is called.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import central.app  # noqa: F401 - importing the app declares every route on the route table
from central.auth import NODE
from central.routes import routes

TESTS = Path(__file__).resolve().parent
REGISTERS = {"add_get", "add_post", "add_put", "add_patch", "add_delete", "add_head", "add_route", "add_view"}


def _template(path: str) -> str:
    """`/api/v1/nodes/{node}` and `/api/v1/nodes/{ref}` are the same route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


@functools.cache
def operator_routes() -> frozenset[str]:
    return frozenset(_template(spec.path) for spec in routes.specs if spec.role != NODE)


def served_routes(source: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in REGISTERS:
            found |= {_template(arg.value) for arg in node.args
                      if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("/")}
    return found


@functools.cache
def fake_servers() -> dict[str, set[str]]:
    """Test modules (relative to tests/) -> the operator routes each one serves."""
    real = operator_routes()
    found = {}
    for source in sorted(TESTS.rglob("*.py")):
        if hits := served_routes(source) & real:
            found[source.relative_to(TESTS).as_posix()] = hits
    return found


def test_the_real_server_declares_operator_routes() -> None:
    # The check below is only as good as this list: the operator API is all there.
    assert {"/api/v1/nodes", "/api/v1/stream", "/api/v1/logs", "/api/v1/me"} <= operator_routes()
    assert "/api/v1/node/ws" not in operator_routes()


def test_no_test_module_serves_the_operator_api() -> None:
    fakes = fake_servers()
    assert not fakes, f"fake central servers in tests/ (use tests/support/server.py CentralServer): {fakes}"

