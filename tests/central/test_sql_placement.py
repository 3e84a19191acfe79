"""SQL lives in three modules of central/: db.py (schema, PRAGMAs), store.py (writes, as WriteFns for
the one writer) and queries.py (reads); a feature package (central/alerts/, ...) may hold its own
store.py and queries.py. central/dbconn.py (the engine-neutral connections) runs the statements
it is handed. The writer only opens, commits and rolls back: it may run
transaction verbs and nothing else. Any other module that runs a statement, or holds SQL text,
fails here (an AST scan, so comments and docstrings do not count)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

CENTRAL = Path(__file__).resolve().parents[2] / "central"
SQL_MODULES = {"db.py", "store.py", "queries.py"}
RUNNERS = {"execute", "executemany", "executescript"}
TRANSACTION_VERB = re.compile(r"(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b")
SQL_TEXT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|PRAGMA|WITH|VACUUM)\s")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (modules, classes, functions)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _is_transaction_verb(call: ast.Call) -> bool:
    first = call.args[0] if call.args else None
    return (isinstance(first, ast.Constant) and isinstance(first.value, str)
            and TRANSACTION_VERB.fullmatch(first.value.split(" ", 1)[0]) is not None)


def sql_outside_its_modules(path: Path, relative: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstrings(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RUNNERS
                and not (relative == "writer.py" and _is_transaction_verb(node))):
            found.append((node.lineno, f"runs a statement ({node.func.attr})"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and SQL_TEXT.match(node.value)):
            found.append((node.lineno, f"holds SQL text {node.value[:40]!r}"))
    return [f"central/{relative}:{line} {what}" for line, what in sorted(found)]


def test_sql_is_only_in_db_store_and_queries() -> None:
    found: list[str] = []
    for path in sorted(CENTRAL.rglob("*.py")):
        relative = path.relative_to(CENTRAL).as_posix()
        if relative == "dbconn.py":
            continue
        if path.name not in SQL_MODULES or (path.name == "db.py" and relative != "db.py"):
            found += sql_outside_its_modules(path, relative)
    assert not found, "SQL belongs in central/db.py, a store.py or a queries.py:\n" + "\n".join(found)


def test_the_scan_sees_statements_and_sql_text(tmp_path: Path) -> None:
    """The scan itself: what it must catch, and what it lets through."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""UPDATE in a docstring is prose."""\n'
        "def write(conn):\n"
        "    conn.execute('COMMIT')\n"
        "    sql = 'DELETE FROM logs WHERE id = ?'\n"
        "    return conn.executemany(sql, [])\n"
    )
    assert sql_outside_its_modules(sample, "sample.py") == [
        "central/sample.py:3 runs a statement (execute)",
        "central/sample.py:4 holds SQL text 'DELETE FROM logs WHERE id = ?'",
        "central/sample.py:5 runs a statement (executemany)",
    ]
    assert sql_outside_its_modules(sample, "writer.py") == [
        "central/writer.py:4 holds SQL text 'DELETE FROM logs WHERE id = ?'",
        "central/writer.py:5 runs a statement (executemany)",
    ]
