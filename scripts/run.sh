#!/usr/bin/env bash
# The main job: sets up .venv/ when missing, then runs Zhong et al.'s H2L experiment on the
# shipped MIRFlickr data (Word2vec vs DeepWalk vs label frequency) and draws the t-SNE map.
set -euo pipefail
cd "$(dirname "$0")/.."
HASHREC_EXTRAS=dev bash scripts/setup.sh
mkdir -p out
.venv/bin/hashrec evaluate h2l --train dcmr:mirflickr25k --json out/h2l.json \
  --plot out/h2l_tsne.png "$@"
