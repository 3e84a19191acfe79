#!/usr/bin/env bash
# Runs every test (and the linters) in the project's virtual environment.
# The tests run in parallel (pytest-xdist, $DVIC_TEST_WORKERS processes, 4 unless set: most of a test's
# time is spent waiting on the servers, daemons and shells it starts). `./test.sh -n 0 ...` runs them one
# at a time in one process, as before.
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
# Let Python keep its bytecode (some machines set PYTHONDONTWRITEBYTECODE): else every server, daemon and
# `dvic` the tests start compiles the project's modules again, and every worker rewrites every test module.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/ruff check .
.venv/bin/mypy
run_tests() { .venv/bin/python -m pytest -n "${DVIC_TEST_WORKERS:-4}" --dist loadscope "$@"; }
run_tests "$@"
# A whole run (no test paths given) ends with the PostgreSQL half: these API and end-to-end files
# once more with their servers on a throw-away PostgreSQL cluster (the store tests already ran on
# both engines above). A few files, not all of tests/central: CI's time is bounded.
if ! printf '%s\n' "$@" | grep -q '^tests'; then
    DVIC_TEST_DATABASE=postgresql run_tests "$@" \
        tests/central/test_operator_api.py tests/central/test_node_ws.py tests/central/test_alerts_api.py \
        tests/central/test_calendar.py tests/central/test_demos_deploy_api.py tests/central/test_remote.py tests/e2e
fi
