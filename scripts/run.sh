#!/usr/bin/env bash
# The main job: sets up .venv/ when missing, trains the default models from the shipped
# data when none exist (progress below; a while the first time), serves the services and
# the web page on this machine, shows the hashtags for a sample photo (or for the photo
# given as an argument) for a stranger and for a known user of the simulated-user
# benchmark, prints the page's URL, and keeps serving until Ctrl-C.
#   bash scripts/run.sh [--once] [PHOTO]     --once: answer, then stop the services
set -euo pipefail
cd "$(dirname "$0")/.."
once=0
if [ "${1:-}" = "--once" ]; then once=1; shift; fi
HASHREC_EXTRAS=dev bash scripts/setup.sh
mkdir -p out
port="${HASHREC_PORT:-50050}"
http_port="${HASHREC_HTTP_PORT:-8080}"
data="${HASHREC_DATA_ROOT:-../shared/data}"
photo="${1:-$data/food/images/0000008.jpg}"

: > out/serve.log  # emptied first: tee empties it only once it starts, and the wait below
# found the last run's "serving" line and asked a server not up yet (an outside try)
.venv/bin/hashrec serve --port "$port" --http-port "$http_port" > >(tee out/serve.log) 2>&1 &
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
community="${HASHREC_DEMO_COMMUNITY:-food}"
echo; echo "the same photo posted to $community (the community named, not read from the photo):"
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 10 --community "$community" \
  || echo "(the served model has no community $community: HASHREC_DEMO_COMMUNITY names another)"
echo; echo "the same photo posted by $user (a known user: the user signal joins in):"
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 10 --user "$user"
.venv/bin/hashrec recommend "$photo" --target "127.0.0.1:$port" -k 3 --user "$user" --json
echo
echo "the page: http://127.0.0.1:$http_port/  (upload a photo, see why each hashtag was chosen)"
if [ "$once" = 1 ]; then exit 0; fi
echo "serving until Ctrl-C"
wait "$server"
