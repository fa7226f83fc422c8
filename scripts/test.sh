#!/usr/bin/env bash
# Sets up .venv/ when missing, then lints and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
HASHREC_EXTRAS=dev bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
