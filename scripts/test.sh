#!/usr/bin/env bash
# Sets up .venv/ when missing, then lints and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
HASHREC_EXTRAS=dev,ray bash scripts/setup.sh
# checkov lints the Kubernetes manifests (tests/test_deploy.py); its own venv, because its
# pins (networkx, packaging) conflict with hashrec's.
if [ ! -x .venv-checkov/bin/checkov ]; then
  python3 -m venv .venv-checkov
  .venv-checkov/bin/pip install -q "checkov==3.3.30"
fi
.venv/bin/ruff check .
bash scripts/gen_protos.sh --check  # the checked-in gRPC code matches protos/
exec .venv/bin/python -m pytest "$@"
