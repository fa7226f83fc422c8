#!/usr/bin/env bash
# The main job: sets up .venv/ when missing, trains the models from the shipped data when
# none exist (progress below; a few minutes the first time), serves the vision and
# recommender services on this machine, and shows the hashtags for a sample photo
# (or for the photo given as $1). Stops the services when done.
set -euo pipefail
cd "$(dirname "$0")/.."
HASHREC_EXTRAS=dev bash scripts/setup.sh
mkdir -p out
port="${HASHREC_PORT:-50050}"
data="${HASHREC_DATA_ROOT:-../shared/data}"
photo="${1:-$data/food/images/0000008.jpg}"

.venv/bin/hashrec serve --port "$port" > >(tee out/serve.log) 2>&1 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
until grep -q "^serving " out/serve.log 2>/dev/null; do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "run: hashrec serve stopped before serving; see out/serve.log" >&2
    exit 1
  fi
  sleep 2
done

echo; echo "hashtags for $photo:"
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 10
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 3 --json
