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
.venv/bin/python -m pytest -n "${DVIC_TEST_WORKERS:-4}" --dist loadscope "$@"
