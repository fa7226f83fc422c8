#!/usr/bin/env bash
# The main job: sets up .venv/ when missing, trains the models from the shipped data when
# none exist (progress below; a few minutes the first time), serves the five services on
# this machine, and shows the hashtags for a sample photo (or for the photo given as $1),
# for a stranger and for a known user of the simulated-user benchmark. Stops the services
# when done.
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

user="${HASHREC_DEMO_USER:-u00003}"
echo; echo "hashtags for $photo:"
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 10
echo; echo "the same photo posted by $user (a known user: the user signal joins in):"
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 10 --user "$user"
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 3 --user "$user" --json
