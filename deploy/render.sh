#!/usr/bin/env bash
# Renders the Helm chart with its default values and each example into deploy/rendered/, so a
# template change shows up as a diff in review (tests/deploy/test_helm_chart.py compares on every run).
# Also syncs the chart's copies of the Prometheus rules and the Grafana dashboard from deploy/,
# the one place where they are edited.
# Usage: deploy/render.sh              sync the copies, then render into deploy/rendered/
#        deploy/render.sh --out DIR    only render, into DIR (what the tests do)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/crowd-gateway"
RELEASE=crowd-gateway
NAMESPACE=crowd
KUBE_VERSION=1.33.0
# Render as if the cluster ran prometheus-operator, so the monitoring objects are reviewed too.
CRDS=(monitoring.coreos.com/v1/ServiceMonitor monitoring.coreos.com/v1/PodMonitor monitoring.coreos.com/v1/PrometheusRule)

out="$ROOT/deploy/rendered"
sync=1
if [ "${1:-}" = "--out" ]; then
  out="${2:?usage: $0 [--out DIR]}"; sync=0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--out DIR]" >&2; exit 2
fi

if [ "$sync" = 1 ]; then
  cp "$ROOT/deploy/prometheus/crowd-gateway-rules.yaml" "$CHART/files/crowd-gateway-rules.yaml"
  cp "$ROOT/deploy/grafana/crowd-gateway.json" "$CHART/files/crowd-gateway-dashboard.json"
fi

helm="$("$ROOT/deploy/tools.sh" helm)"
api_versions=()
for crd in "${CRDS[@]}"; do api_versions+=(--api-versions "$crd"); done
mkdir -p "$out"

render() {  # render NAME [VALUES_FILE]
  local name="$1"; shift
  local values=()
  [ $# -gt 0 ] && values=(--values "$1")
  # Relative paths keep the "# Source:" comments and the output the same on every machine.
  # The chart generates the Redis password at install: a fixed placeholder (not base64, so applying a
  # render fails instead of using a known password) keeps the renders reproducible.
  (cd "$ROOT/helm" && "$helm" template "$RELEASE" ./crowd-gateway --namespace "$NAMESPACE" \
    --kube-version "$KUBE_VERSION" "${api_versions[@]}" "${values[@]}") \
    | sed -E '\#^\# Source: crowd-gateway/templates/redis-secret.yaml$#,/^---$/ s/^(  redis-password: ).*/\1GENERATED-AT-INSTALL/' \
    > "$out/$name.yaml"
}

render default
for example in "$CHART"/examples/*.yaml; do
  render "$(basename "$example" .yaml)" "$example"
done
echo "rendered into $out" >&2
