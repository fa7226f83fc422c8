#!/usr/bin/env bash
# Creates .venv/ at the repository root when missing and installs hashrec into it.
# Idempotent and quick when nothing changed: re-installs only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${HASHREC_EXTRAS:-dev}"

# WordNet 3.0 for optional synonym merging (Zhong et al. §3.3), from Debian's packages.
if [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/wordnet/index.sense ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null; } \
      || echo "setup: WordNet could not be installed; --merge-synonyms will be unavailable" >&2
  else
    echo "setup: WordNet missing (apt-get install wordnet-base wordnet-sense-index)" >&2
  fi
fi

# Chromium for the page's browser test (Playwright drives it; its own download cannot work
# offline), from Debian's packages.
case ",$extras," in *",dev,"*)
  if ! command -v chromium >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      echo "setup: installing Debian's chromium for the browser test" >&2
      apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null; } \
        || echo "setup: chromium could not be installed; the browser test will fail" >&2
    else
      echo "setup: chromium missing (apt-get install chromium) for the browser test" >&2
    fi
  fi
  # strace: the journal test watches a writer's system calls (fsync before each ack)
  if ! command -v strace >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]
  then
    apt-get install -y -q strace >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q strace >/dev/null; } \
      || echo "setup: strace could not be installed; the journal's fsync test skips" >&2
  fi ;;
esac

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Re-install only when pyproject.toml changed or an extra is asked for that is not in yet.
stamp=".venv/.hashrec-installed"
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
installed_hash="" installed_extras=""
[ -f "$stamp" ] && read -r installed_hash installed_extras < "$stamp"
missing=0
[ "$installed_hash" = "$hash" ] || missing=1
for extra in ${extras//,/ }; do
  case ",$installed_extras," in *",$extra,"*) ;; *) missing=1 ;; esac
done
if [ "$missing" = 1 ]; then
  # keep what is installed (same pyproject.toml), each extra named once
  [ "$installed_hash" = "$hash" ] && extras="$installed_extras,$extras"
  merged=""
  for extra in ${extras//,/ }; do
    case ",$merged," in *",$extra,"*) ;; *) merged="${merged:+$merged,}$extra" ;; esac
  done
  extras="$merged"
  echo "setup: installing hashrec[$extras] into .venv (first time takes a minute)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # The CPU wheel first, so that the torch range in pyproject.toml pulls no CUDA build.
  case ",$extras," in *",gpu,"*) ;; *) .venv/bin/python -m pip install -q torch==2.13.0 ;; esac
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$hash $extras" > "$stamp"
fi
