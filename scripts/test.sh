#!/usr/bin/env bash
# Sets up .venv/ when missing, then lints and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
HASHREC_EXTRAS=dev,ray,e5 bash scripts/setup.sh
# checkov lints the Kubernetes manifests (tests/test_deploy.py); its own venv, because its
# pins (networkx, packaging) conflict with hashrec's.
if [ ! -x .venv-checkov/bin/checkov ]; then
  python3 -m venv .venv-checkov
  .venv-checkov/bin/pip install -q "checkov==3.3.30"
fi
.venv/bin/ruff check .
bash scripts/gen_protos.sh --check  # the checked-in gRPC code matches protos/
# A worker a usable core (HASHREC_TEST_WORKERS=0: one process); a test module stays on
# one worker, so its module fixtures are made once.
workers="${HASHREC_TEST_WORKERS:-$(.venv/bin/python -c 'from shared.batching import usable_cores; print(min(usable_cores(), 4))')}"
if [ "$workers" -gt 1 ]; then
  exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
fi
exec .venv/bin/python -m pytest "$@"
