#!/usr/bin/env bash
# Installs what the benchmarks compare against, once: wrk (load generator) and LiteLLM's proxy in
# its own cached venv (it pins its own fastapi/uvicorn, so it stays out of the gateway's venv).
set -euo pipefail
LITELLM_VERSION=1.106.2   # never 1.82.7/1.82.8 (compromised releases)
CACHE="${CROWD_CACHE:-$HOME/.cache/crowd-gateway}"
venv="$CACHE/venvs/litellm-proxy-$LITELLM_VERSION"
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
if [ ! -f "$venv/.ready" ]; then
  echo "bench: installing litellm[proxy]==$LITELLM_VERSION into $venv (once)" >&2
  rm -rf "$venv"; "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/litellm" --help >/dev/null
  touch "$venv/.ready"
fi
echo "$venv"
