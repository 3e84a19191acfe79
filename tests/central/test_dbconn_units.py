"""The small pure parts of central/dbconn.py: placeholders, database targets, masked URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.dbconn import mask_url, numbered, target


def test_question_marks_become_numbered_outside_quotes_and_comments() -> None:
    sql = "SELECT '?', ?, \"odd?name\", 'it''s ?' -- a comment?\n FROM t WHERE a = ? AND b IN (?, ?)"
    assert numbered(sql) == ("SELECT '?', $1, \"odd?name\", 'it''s ?' -- a comment?\n FROM t WHERE a = $2"
                             " AND b IN ($3, $4)")
    assert numbered("SELECT 1 - 2, -3") == "SELECT 1 - 2, -3"
    assert numbered("UPDATE t SET x = CAST(? AS TEXT[]) WHERE y = ?") == \
        "UPDATE t SET x = CAST($1 AS TEXT[]) WHERE y = $2"


def test_a_database_is_a_path_a_sqlite_url_or_a_postgresql_url(tmp_path: Path) -> None:
    assert target(tmp_path / "x.sqlite3").path == tmp_path / "x.sqlite3"
    assert target(f"sqlite:{tmp_path}/y.sqlite3").path == tmp_path / "y.sqlite3"
    pg = target("postgresql://dvic:pw@db.lab:5433/dvic")
    assert pg.dialect == "postgresql" and pg.masked == "postgresql://dvic:***@db.lab:5433/dvic"
    assert target("postgres://dvic@h/d").dialect == "postgresql"
    with pytest.raises(ValueError, match="postgresql://USER") as refused:
        target("mysql://root:hunter2@h/d")
    assert "hunter2" not in str(refused.value)


def test_masking_keeps_everything_but_the_password() -> None:
    assert mask_url("postgresql://u:p%40ss@127.0.0.1:5432/dvic?sslmode=require") == \
        "postgresql://u:***@127.0.0.1:5432/dvic?sslmode=require"
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert mask_url("postgresql://:secret@h/d") == "postgresql://:***@h/d"
