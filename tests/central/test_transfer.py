"""`dvic-central migrate --from sqlite:PATH --to postgresql://...` on real parts: an installation
served on SQLite, moved by the real command, served again on PostgreSQL from the same data dir;
bad input refused with nothing changed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from central import store
from central.db import DB_FILE
from tests.support.postgres import Cluster, query
from tests.support.server import CentralServer

ROOT = Path(__file__).resolve().parents[2]


def migrate(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "central.cli", *(["--data-dir", str(data_dir)] if data_dir else []), "migrate"]
    return subprocess.run([*base, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DVIC_TEST_DATABASE": "sqlite"})


def served_on_sqlite(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data dir whose SQLite database holds nodes, an operator, logs and metrics."""
    data = tmp_path / "central"
    with CentralServer(data, database="") as server:
        ids = {name: server.enroll(name, group="hall-a")["node_id"] for name in ("pc-1", "pc-2")}
        status, _ = server.api("POST", "/api/v1/operators", {"name": "ana", "role": "operator"})
        assert status == 201
    conn = sqlite3.connect(data / DB_FILE, isolation_level=None)
    now = time.time()
    conn.execute("BEGIN")
    lines = [{"seq": i, "ts": now - 60 + i * 0.01, "source": "demo", "demo": "arm", "level": "INFO",
              "msg": f"line {i} ünïcode" + (" with\x00nul" if i == 7 else "")} for i in range(1, 2501)]
    store.insert_logs(ids["pc-1"], lines)(conn)
    old = [{"seq": i, "ts": now - 10 * 86400 + i, "source": "daemon", "level": "WARNING", "msg": f"old {i}"}
           for i in range(1, 4)]
    store.insert_logs(ids["pc-2"], old)(conn)  # ten days ago: before the days a server start makes
    # Samples not rolled up into their minutes yet, as a server killed -9 leaves them (store.MetricRollup).
    store.insert_metrics(ids["pc-2"], now - 30, {"cpu": 12.5, "mem": 40.0})(conn)
    conn.execute("COMMIT")
    conn.close()
    return data, ids


def test_an_installation_moves_to_postgresql_and_serves_from_it(tmp_path: Path, pg_cluster: Cluster) -> None:
    data, ids = served_on_sqlite(tmp_path)
    url = pg_cluster.create_database()
    done = migrate("--from", f"sqlite:{data / DB_FILE}", "--to", url)
    assert done.returncode == 0, done.stderr
    assert "moved " in done.stdout and f"to {url}" in done.stdout
    assert any(line.split() == ["logs", "2,503"] for line in done.stdout.splitlines()), done.stdout
    old_day = time.strftime("%Y%m%d", time.gmtime(time.time() - 10 * 86400))
    assert query(url, f"SELECT count(*) FROM logs_p{old_day}") == [(3,)]  # history in its own day
    assert query(url, "SELECT count(*) FROM logs_default") == [(0,)]

    with CentralServer(data, database=url) as server:
        assert sorted(n["name"] for n in server.api("GET", "/api/v1/nodes")[1]["nodes"]) == ["pc-1", "pc-2"]
        lines = server.logs(node=ids["pc-1"])
        assert [line["seq"] for line in lines] == list(range(1, 2501))
        assert lines[6]["msg"] == "line 7 ünïcode with\ufffdnul"  # PostgreSQL text holds no NUL
        found = server.logs(q="ünïcode 2499")
        assert [line["seq"] for line in found] == [2499]
        _, operators = server.api("GET", "/api/v1/operators")
        assert "ana" in {o["name"] for o in operators["operators"]}
        # new rows take ids after the copied ones
        server.enroll("pc-3")
        _, events = server.api("GET", "/api/v1/events?limit=100")
        ids_seen = [e["id"] for e in events["events"]]
        assert len(ids_seen) == len(set(ids_seen))
    assert query(url, "SELECT count(*) FROM metrics_raw") == [(2,)]
    # Their minutes were rolled up before the copy: PostgreSQL reads minutes from metrics_1m only.
    assert sorted(query(url, "SELECT name, min, avg, max, count FROM metrics_1m WHERE node_id = ?", (ids["pc-2"],))) \
        == [("cpu", 12.5, 12.5, 12.5, 1), ("mem", 40.0, 40.0, 40.0, 1)]


def test_a_target_with_data_is_refused_and_left_as_it_was(tmp_path: Path, pg_cluster: Cluster) -> None:
    data, _ = served_on_sqlite(tmp_path)
    url = pg_cluster.create_database()
    assert migrate("--from", f"sqlite:{data / DB_FILE}", "--to", url).returncode == 0
    again = migrate("--from", f"sqlite:{data / DB_FILE}", "--to", url)
    assert again.returncode == 1
    assert "already holds data (table " in again.stderr and "nothing was copied" in again.stderr
    assert query(url, "SELECT count(*) FROM logs") == [(2503,)]


def test_a_value_the_target_cannot_hold_keeps_nothing(tmp_path: Path, pg_cluster: Cluster) -> None:
    data, ids = served_on_sqlite(tmp_path)
    conn = sqlite3.connect(data / DB_FILE, isolation_level=None)
    conn.execute("UPDATE logs SET seq = 10.5 WHERE seq = 2500")  # SQLite keeps a REAL in an INTEGER column
    conn.close()
    url = pg_cluster.create_database()
    failed = migrate("--from", f"sqlite:{data / DB_FILE}", "--to", url)
    assert failed.returncode == 1
    assert "table logs: a value the target cannot hold (10.5 in an integer column): nothing was kept" in failed.stderr
    assert query(url, "SELECT count(*) FROM nodes") == [(0,)]  # copied before logs, rolled back with them


@pytest.mark.parametrize(("args", "message"), [
    (["--to", "sqlite:/tmp/x.sqlite3"], "give the target as postgresql://"),
    (["--from", "postgresql://u@127.0.0.1/db", "--to", "postgresql://u@127.0.0.1/db"],
     "give the SQLite database as sqlite:PATH"),
    (["--from", "mysql://x", "--to", "postgresql://u@127.0.0.1/db"], "database: expected postgresql://"),
])
def test_bad_arguments_say_what_to_give(args: list[str], message: str) -> None:
    done = migrate(*args)
    assert done.returncode == 2 and message in done.stderr


def test_a_missing_source_and_an_unreachable_target_are_named(tmp_path: Path, pg_cluster: Cluster) -> None:
    missing = migrate("--to", pg_cluster.create_database(), data_dir=tmp_path / "nowhere")
    assert missing.returncode == 1
    assert f"{tmp_path / 'nowhere' / DB_FILE}: no such SQLite database" in missing.stderr
    data, _ = served_on_sqlite(tmp_path)
    away = migrate("--from", f"sqlite:{data / DB_FILE}", "--to", "postgresql://dvic:hunter2@127.0.0.1:1/dvic")
    assert away.returncode == 1
    assert "postgresql://dvic:***@127.0.0.1:1/dvic" in away.stderr and "hunter2" not in away.stderr
