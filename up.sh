#!/usr/bin/env bash
# Quick start: the whole system on this machine (central server on SQLite, this machine's node
# daemon, the operator console). Data lives in ./.dvic; run it again to come back to the same fleet.
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
exec .venv/bin/dvic-central --data-dir "${DVIC_DATA_DIR:-.dvic}" up "$@"
