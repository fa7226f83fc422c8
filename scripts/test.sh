#!/usr/bin/env bash
# Sets up .venv/ when missing, then lints and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
HASHREC_EXTRAS=dev bash scripts/setup.sh
.venv/bin/ruff check .
bash scripts/gen_protos.sh --check  # the checked-in gRPC code matches protos/
exec .venv/bin/python -m pytest "$@"
