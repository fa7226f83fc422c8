#!/usr/bin/env bash
# Regenerates the Python code of protos/hashrec/v1/*.proto beside the contracts, so that
# `import hashrec.v1.vision_pb2` works. `--check` fails when the checked-in code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
python=".venv/bin/python"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$python" -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" \
  --grpc_python_out="$out" protos/hashrec/v1/*.proto
if [ "${1:-}" = "--check" ]; then
  for generated in "$out"/hashrec/v1/*.py*; do
    name="protos/hashrec/v1/$(basename "$generated")"
    if ! cmp -s "$generated" "$name"; then
      echo "gen_protos: $name is not current; run bash scripts/gen_protos.sh" >&2
      exit 1
    fi
  done
  echo "gen_protos: generated code is current"
else
  cp "$out"/hashrec/v1/*.py* protos/hashrec/v1/
  touch protos/hashrec/__init__.py protos/hashrec/v1/__init__.py
fi
