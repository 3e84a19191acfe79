#!/usr/bin/env bash
# Runs every test (and the linters) in the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
